/*
 * The source side of a stream: the records around RAM (header, CONFIG,
 * section records, VMDESC, EOF) in the order docs/format.md gives.
 * RAM_PAGES records are written by gw_save_pages() in ram.c.
 */
#include <errno.h>

#include <godwit/stream.h>

#include "lib/internal.h"

static const char *const save_step[] = {
	[GW_SAVE_IDLE] = "no stream has begun",
	[GW_SAVE_LIVE] = "the stream is in its live phase",
	[GW_SAVE_DEVICES_DONE] = "device state is already saved",
};

static int wrong_step(const struct gw_migration *m, const char *call, struct gw_error *err)
{
	return gw_error_set(err, -EINVAL, "%s called out of order: %s", call,
			    save_step[m->save_state]);
}

/* A failed write leaves a partial record behind: the stream is over. */
static int save_failed(struct gw_migration *m, int ret)
{
	if (ret < 0)
		m->save_state = GW_SAVE_IDLE;
	return ret;
}

/* One record of section id; GW_LIVE_MORE if it has more to send. */
static int write_section(const struct gw_migration *m, struct gw_writer *w, uint32_t id,
			 uint16_t type, struct gw_wbuf *b, struct gw_error *err)
{
	const struct gw_section_reg *sec = &m->sections[id];
	uint64_t offset = gw_writer_offset(w);
	int ret, more;

	gw_wbuf_reset(b);
	gw_section_put_hdr(b, type, id, sec);
	ret = more = gw_section_save(sec, type, b, err);
	/* A section ends once: what it sends at the pause before its last
	 * record goes as PART (whose sub-header is END's). */
	if (type == GW_REC_SECTION_END && more == GW_LIVE_MORE)
		type = GW_REC_SECTION_PART;
	if (ret >= 0)
		ret = gw_record_write(w, type, 0, b->data, b->len, err);
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "section '%s' instance %u (%s record at offset %llu): ",
				       sec->name, sec->s.instance, gw_record_type_name(type),
				       (unsigned long long)offset);
	return more;
}

/*
 * Records of type for every section that is progressive (or not): one
 * each, then, for progressive ones, more while a section has more and
 * the budget (bytes, 0 for none) lasts. 1 if one still had more.
 */
static int write_sections_budget(const struct gw_migration *m, struct gw_writer *w,
				 bool progressive, uint16_t type, uint64_t budget, uint64_t *sent,
				 struct gw_error *err)
{
	uint64_t start = gw_writer_offset(w);
	bool more_left = false;
	struct gw_wbuf b;
	int ret = 0;

	gw_wbuf_init(&b, GW_SECTION_RECORD_MAX);
	for (uint32_t i = 0; ret >= 0 && i < m->nr_sections; i++) {
		if (gw_section_progressive(&m->sections[i].s) != progressive)
			continue;
		/* START is one record: the rest follows as PART. */
		do
			ret = write_section(m, w, i, type, &b, err);
		while (ret == GW_LIVE_MORE && type != GW_REC_SECTION_START &&
		       (!budget || gw_writer_offset(w) - start < budget));
		more_left |= ret == GW_LIVE_MORE;
	}
	gw_wbuf_release(&b);
	if (sent)
		*sent = gw_writer_offset(w) - start;
	return ret < 0 ? ret : more_left;
}

static int write_sections(const struct gw_migration *m, struct gw_writer *w, bool progressive,
			  uint16_t type, struct gw_error *err)
{
	int ret = write_sections_budget(m, w, progressive, type, 0, NULL, err);

	return ret < 0 ? ret : 0;
}

/* The stream header and the CONFIG record: how every stream opens. */
static int write_head(struct gw_migration *m, struct gw_writer *w, uint32_t hdr_flags,
		      struct gw_error *err)
{
	struct gw_wbuf b;
	int ret = gw_stream_put_header(w, hdr_flags, err);

	if (ret < 0)
		return ret;
	gw_wbuf_init(&b, GW_CONFIG_MAX);
	ret = gw_config_put(m, &b);
	if (ret < 0)
		ret = gw_error_set(err, ret, "CONFIG record: cannot encode the configuration");
	else
		ret = gw_record_write(w, GW_REC_CONFIG, 0, b.data, b.len, err);
	gw_wbuf_release(&b);
	return ret;
}

static int build_vmdesc(struct gw_migration *m, struct gw_error *err)
{
	int ret;

	if (m->vmdesc_ready)
		return 0;
	gw_wbuf_release(&m->vmdesc);
	gw_wbuf_init(&m->vmdesc, GW_VMDESC_MAX);
	ret = gw_vmdesc_build(m, &m->vmdesc, err);
	m->vmdesc_ready = ret == 0;
	return ret;
}

int gw_save_begin(struct gw_migration *m, struct gw_writer *w, struct gw_error *err)
{
	return gw_save_begin_flags(m, w, 0, err);
}

int gw_save_begin_flags(struct gw_migration *m, struct gw_writer *w, uint32_t hdr_flags,
			struct gw_error *err)
{
	return gw_save_begin_cpr(m, w, hdr_flags, NULL, 0, err);
}

int gw_save_begin_cpr(struct gw_migration *m, struct gw_writer *w, uint32_t hdr_flags,
		      const void *cpr, size_t cpr_len, struct gw_error *err)
{
	int ret;

	m->save_state = GW_SAVE_IDLE;
	ret = build_vmdesc(m, err);
	if (ret == 0)
		ret = write_head(m, w, hdr_flags, err);
	if (ret == 0 && cpr)
		ret = gw_record_write(w, GW_REC_CPR, 0, cpr, cpr_len, err);
	if (ret == 0)
		ret = write_sections(m, w, true, GW_REC_SECTION_START, err);
	if (ret < 0)
		return ret;
	m->save_state = GW_SAVE_LIVE;
	return 0;
}

int gw_save_iterate(struct gw_migration *m, struct gw_writer *w, struct gw_error *err)
{
	if (m->save_state != GW_SAVE_LIVE)
		return wrong_step(m, "gw_save_iterate", err);
	return save_failed(m, write_sections(m, w, true, GW_REC_SECTION_PART, err));
}

int gw_save_iterate_budget(struct gw_migration *m, struct gw_writer *w, uint64_t budget,
			   uint64_t *sent, struct gw_error *err)
{
	if (sent)
		*sent = 0;
	if (m->save_state != GW_SAVE_LIVE)
		return wrong_step(m, "gw_save_iterate_budget", err);
	/* Budget 0: one record each and no more (0 is "no limit" inside). */
	return save_failed(m, write_sections_budget(m, w, true, GW_REC_SECTION_PART,
						    budget ? budget : 1, sent, err));
}

uint64_t gw_save_live_pending(const struct gw_migration *m)
{
	uint64_t bytes = 0;

	for (uint32_t i = 0; i < m->nr_sections; i++) {
		const struct gw_section *s = &m->sections[i].s;

		if (s->live_pending)
			bytes += s->live_pending(s->opaque);
	}
	return bytes;
}

int gw_save_devices(struct gw_migration *m, struct gw_writer *w, struct gw_error *err)
{
	int ret;

	if (m->save_state != GW_SAVE_LIVE)
		return wrong_step(m, "gw_save_devices", err);
	ret = write_sections(m, w, true, GW_REC_SECTION_END, err);
	if (ret == 0)
		ret = write_sections(m, w, false, GW_REC_SECTION_FULL, err);
	if (ret < 0)
		return save_failed(m, ret);
	m->save_state = GW_SAVE_DEVICES_DONE;
	return 0;
}

int gw_save_finish(struct gw_migration *m, struct gw_writer *w, struct gw_error *err)
{
	int ret;

	if (m->save_state != GW_SAVE_DEVICES_DONE)
		return wrong_step(m, "gw_save_finish", err);
	ret = build_vmdesc(m, err);
	if (ret == 0)
		ret = gw_record_write(w, GW_REC_VMDESC, GW_RECF_SKIPPABLE, m->vmdesc.data,
				      m->vmdesc.len, err);
	if (ret == 0)
		ret = gw_record_write(w, GW_REC_EOF, 0, NULL, 0, err);
	if (ret == 0)
		ret = gw_writer_flush(w, err);
	m->save_state = GW_SAVE_IDLE;
	return ret;
}

int gw_save_probe(struct gw_migration *m, struct gw_writer *w, struct gw_error *err)
{
	int ret = write_head(m, w, GW_HDRF_CPR, err);

	return ret == 0 ? gw_writer_flush(w, err) : ret;
}
