/*
 * The stream sink (ram_sink.h): today's encoding, RAM_PAGES records in
 * the one ordered stream, written by gw_save_pages() (ram.c).
 */
#include <godwit/io.h>
#include <godwit/stream.h>

#include "lib/internal.h"
#include "lib/ram/ram_sink.h"

static struct gw_stream_sink *of(const struct gw_ram_sink *s)
{
	return (struct gw_stream_sink *)((char *)s - offsetof(struct gw_stream_sink, sink));
}

static int stream_pages(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
			unsigned flags, struct gw_error *err)
{
	struct gw_stream_sink *ss = of(s);

	return gw_save_pages(ss->m, ss->w, block, entries, n, flags, err);
}

/* Written into the stream's buffer or out before it returns: one at a
 * time, since the stream is one ordered sequence of records. */
static int stream_put(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
		      const void *data, unsigned flags, struct gw_error *err)
{
	struct gw_stream_sink *ss = of(s);

	return gw_save_pages_from(ss->m, ss->w, block, entries, n, data, flags, err);
}

static uint32_t stream_put_threads(const struct gw_ram_sink *s)
{
	(void)s;
	return 1;
}

static int stream_flush(struct gw_ram_sink *s, struct gw_error *err)
{
	return gw_writer_flush(of(s)->w, err);
}

static uint64_t stream_sent(const struct gw_ram_sink *s)
{
	return gw_writer_sent(of(s)->w);
}

static uint64_t stream_taken(const struct gw_ram_sink *s)
{
	return gw_writer_offset(of(s)->w);
}

static const struct gw_ram_sink_ops stream_ops = {
	.pages = stream_pages,
	.flush = stream_flush,
	.sent = stream_sent,
	.taken = stream_taken,
	.put = stream_put,
	.put_threads = stream_put_threads,
};

void gw_stream_sink_init(struct gw_stream_sink *s, struct gw_migration *m, struct gw_writer *w)
{
	*s = (struct gw_stream_sink){.sink = {&stream_ops}, .m = m, .w = w};
}
