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
};

void gw_stream_sink_init(struct gw_stream_sink *s, struct gw_migration *m, struct gw_writer *w)
{
	*s = (struct gw_stream_sink){.sink = {&stream_ops}, .m = m, .w = w};
}
