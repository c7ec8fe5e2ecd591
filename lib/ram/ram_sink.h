/*
 * Where RAM pages go: the interface between an engine that decides which
 * pages to send and the encoding that carries them. The engine walks the
 * dirty pages in batches (ram_batch.h) and hands each batch to a sink;
 * the sink writes it: as RAM_PAGES records into one ordered stream
 * (sink_stream.c), at fixed offsets of a file (sink_file.c), or spread
 * over several channels (sink_multifd.c). Accounting, rate limiting and
 * cancel checks stay with the engine: a sink only moves pages and says
 * how many bytes left.
 */
#ifndef GW_LIB_RAM_SINK_H
#define GW_LIB_RAM_SINK_H

#include <stdint.h>

#include <godwit/error.h>

struct gw_ram_sink;

struct gw_ram_sink_ops {
	/* Optional. After the stream's CONFIG: what must come before any page. */
	int (*begin)(struct gw_ram_sink *s, struct gw_error *err);
	/*
	 * n (1..GW_PAGES_MAX) pages of RAM block `block`, in increasing
	 * offset order: entries are byte offsets ORed with GW_PAGE_ZERO for
	 * zero pages; flags GW_SAVE_DATA_CRC when the pages cannot change
	 * during the call. The page data may be read until the call returns.
	 */
	int (*pages)(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
		     unsigned flags, struct gw_error *err);
	/* Push out whatever the sink holds back. */
	int (*flush)(struct gw_ram_sink *s, struct gw_error *err);
	/* Bytes that have left so far (not those still held back). */
	uint64_t (*sent)(const struct gw_ram_sink *s);
	/* Bytes taken so far, those still held back included: what the
	 * engine's rate limit and throughput figures count. */
	uint64_t (*taken)(const struct gw_ram_sink *s);
	/* Optional. After the stream's EOF is written: what the sink's
	 * layout needs to be complete (a file's metadata and header). */
	int (*finish)(struct gw_ram_sink *s, struct gw_error *err);
	/* Optional: bytes taken that have not left yet (queued for a
	 * thread of its own): still to send, as a dirty page is. */
	uint64_t (*backlog)(const struct gw_ram_sink *s);
	/* Optional: writes of its own past this time (CLOCK_MONOTONIC ns)
	 * fail, as the stream's do after gw_writer_set_deadline(). */
	void (*set_deadline)(struct gw_ram_sink *s, uint64_t deadline_ns);
	/* Optional: free a sink that was allocated for the engine. */
	void (*release)(struct gw_ram_sink *s);
	/*
	 * Optional, for an engine that writes from threads of its own (a
	 * background snapshot, whose pages must stay protected until they
	 * are written): the pages as for pages(), but written when the call
	 * returns, from data (the pages that are not GW_PAGE_ZERO, packed in
	 * entry order) or, with data NULL, from guest memory. put_threads()
	 * calls may run at once, from different threads, for different pages.
	 */
	int (*put)(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
		   const void *data, unsigned flags, struct gw_error *err);
	uint32_t (*put_threads)(const struct gw_ram_sink *s);
};

struct gw_ram_sink {
	const struct gw_ram_sink_ops *ops;
};

static inline int gw_sink_pages(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries,
				uint32_t n, unsigned flags, struct gw_error *err)
{
	return s->ops->pages(s, block, entries, n, flags, err);
}

static inline int gw_sink_begin(struct gw_ram_sink *s, struct gw_error *err)
{
	return s->ops->begin ? s->ops->begin(s, err) : 0;
}

static inline uint64_t gw_sink_backlog(const struct gw_ram_sink *s)
{
	return s->ops->backlog ? s->ops->backlog(s) : 0;
}

static inline void gw_sink_set_deadline(struct gw_ram_sink *s, uint64_t deadline_ns)
{
	if (s->ops->set_deadline)
		s->ops->set_deadline(s, deadline_ns);
}

static inline int gw_sink_flush(struct gw_ram_sink *s, struct gw_error *err)
{
	return s->ops->flush(s, err);
}

static inline uint64_t gw_sink_sent(const struct gw_ram_sink *s)
{
	return s->ops->sent(s);
}

static inline uint64_t gw_sink_taken(const struct gw_ram_sink *s)
{
	return s->ops->taken(s);
}

static inline int gw_sink_finish(struct gw_ram_sink *s, struct gw_error *err)
{
	return s->ops->finish ? s->ops->finish(s, err) : 0;
}

static inline int gw_sink_put(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries,
			      uint32_t n, const void *data, unsigned flags, struct gw_error *err)
{
	return s->ops->put(s, block, entries, n, data, flags, err);
}

static inline void gw_sink_release(struct gw_ram_sink *s)
{
	if (s && s->ops->release)
		s->ops->release(s);
}

/* The stream sink: RAM_PAGES records of m into w (borrowed). */
struct gw_migration;
struct gw_writer;

struct gw_stream_sink {
	struct gw_ram_sink sink;
	struct gw_migration *m;
	struct gw_writer *w;
};

void gw_stream_sink_init(struct gw_stream_sink *s, struct gw_migration *m, struct gw_writer *w);

#endif
