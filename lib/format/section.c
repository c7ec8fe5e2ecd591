/*
 * Device sections: what makes a registration valid, the sub-header of
 * section records, and calling a section's callbacks with the checks that
 * keep a device from writing too much or reading what is not there. A
 * vmstate section's loaded state reaches the device only whole and
 * checked: its ranges and its validate hook run on a scratch copy first,
 * and its post_load hook, which hands the State to the device, runs last.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/internal.h"

bool gw_section_progressive(const struct gw_section *s)
{
	return s->save_live != NULL;
}

static int check_ways(const struct gw_section *s, struct gw_error *err)
{
	int ways = (s->vmstate != NULL) + (s->save || s->load) + (s->save_live || s->load_live);

	if (ways != 1)
		return gw_error_set(err, -EINVAL,
				    "set exactly one of vmstate, save/load or save_live/load_live (%d set)",
				    ways);
	if ((s->save || s->load) && !(s->save && s->load))
		return gw_error_set(err, -EINVAL, "save and load must be set together");
	if ((s->save_live || s->load_live) && !(s->save_live && s->load_live))
		return gw_error_set(err, -EINVAL, "save_live and load_live must be set together");
	if (s->live_pending && !s->save_live)
		return gw_error_set(err, -EINVAL, "live_pending needs save_live");
	if (s->validate && !s->vmstate)
		return gw_error_set(err, -EINVAL,
				    "validate needs a vmstate: a hand-written loader checks its own data");
	if ((s->pre_save || s->post_load) && !s->vmstate)
		return gw_error_set(err, -EINVAL,
				    "pre_save and post_load need a vmstate: a hand-written save or load reaches the device itself");
	return 0;
}

int gw_section_check(const struct gw_section *s, struct gw_error *err)
{
	int ret;

	if (!s)
		return gw_error_set(err, -EINVAL, "section: no description");
	ret = gw_check_name("section", s->name, err);
	if (ret < 0)
		return ret;
	if (s->version == 0 || s->min_version == 0 || s->min_version > s->version)
		ret = gw_error_set(err, -EINVAL,
				   "version %u and min_version %u: versions start at 1 and min_version must not exceed version",
				   s->version, s->min_version);
	else if (s->flags & ~GW_SECTION_OPTIONAL)
		ret = gw_error_set(err, -EINVAL, "unknown flags 0x%x", s->flags);
	else
		ret = check_ways(s, err);
	if (ret == 0 && s->vmstate)
		ret = gw_vmstate_check(s->vmstate, s->version, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "section '%s' instance %u: ", s->name,
				       s->instance);
	return 0;
}

int gw_section_put_hdr(struct gw_wbuf *b, uint16_t type, uint32_t id,
		       const struct gw_section_reg *sec)
{
	gw_put_u32(b, id);
	if (type == GW_REC_SECTION_START || type == GW_REC_SECTION_FULL) {
		gw_put_u32(b, sec->s.instance);
		gw_put_u32(b, sec->s.version);
		gw_put_str(b, sec->name);
	}
	return b->error;
}

int gw_section_get_hdr(struct gw_rbuf *b, uint16_t type, struct gw_section_hdr *h)
{
	memset(h, 0, sizeof(*h));
	gw_get_u32(b, &h->id);
	if (type == GW_REC_SECTION_START || type == GW_REC_SECTION_FULL) {
		gw_get_u32(b, &h->instance);
		gw_get_u32(b, &h->version);
		gw_get_str(b, h->name, true);
	}
	return b->error;
}

static enum gw_phase phase_of(uint16_t type)
{
	return type == GW_REC_SECTION_START ? GW_PHASE_START :
	       type == GW_REC_SECTION_PART  ? GW_PHASE_PART :
					      GW_PHASE_END;
}

static int check_saved(const struct gw_wbuf *out, struct gw_error *err)
{
	if (out->error == -EMSGSIZE)
		return gw_error_set(err, -EMSGSIZE,
				    "state does not fit one record (%llu bytes at most)",
				    (unsigned long long)GW_SECTION_RECORD_MAX);
	if (out->error < 0)
		return gw_error_set(err, out->error, "out of memory for the section's state");
	return 0;
}

/* The State is the device's copy, filled by pre_save just before it is
 * encoded: what the record holds is one instant of the device. */
static int save_vmstate(const struct gw_section *s, struct gw_wbuf *out, struct gw_error *err)
{
	if (s->pre_save) {
		int ret = s->pre_save(s->opaque, err);
		if (ret < 0)
			return gw_error_prefix(err, ret, "pre_save failed: ");
	}
	gw_vmstate_save(s->vmstate, s->opaque, out);
	return check_saved(out, err);
}

int gw_section_save(const struct gw_section_reg *sec, uint16_t type, struct gw_wbuf *out,
		    struct gw_error *err)
{
	const struct gw_section *s = &sec->s;
	int ret = 0;

	gw_error_clear(err);
	if (type != GW_REC_SECTION_FULL)
		ret = s->save_live(s->opaque, phase_of(type), out, err);
	else if (s->vmstate)
		return save_vmstate(s, out, err);
	else
		ret = s->save(s->opaque, out, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "save callback failed: ");
	if (ret > (type != GW_REC_SECTION_FULL ? GW_LIVE_MORE : 0))
		return gw_error_set(err, -EINVAL, "save callback returned %d", ret);
	int checked = check_saved(out, err);
	return checked < 0 ? checked : ret;
}

/* What a loader must have done with the data: read all of it and no more. */
static int check_consumed(const struct gw_rbuf *in, uint32_t version, struct gw_error *err)
{
	if (in->error < 0)
		return gw_error_set(err, -EBADMSG,
				    "the loader read past the end of the %zu bytes of data (version %u)",
				    in->len, version);
	if (in->pos != in->len)
		return gw_error_set(err, -EBADMSG,
				    "%zu of %zu bytes of data left unread (version %u)",
				    in->len - in->pos, in->len, version);
	return 0;
}

static int validate(const struct gw_section *s, const void *cand, uint32_t version,
		    struct gw_error *err)
{
	int ret;

	gw_error_clear(err);
	ret = s->validate(cand, version, err);
	if (ret >= 0)
		return 0;
	/* Same code in err as returned, and a message even if the hook gave none. */
	return gw_error_prefix(err, ret, "%s",
			       err && err->msg[0] ? "" : "refused by its validator: ");
}

/*
 * Decode into a candidate, check it whole, and only then replace the
 * State: a device never holds a value that was refused, not even for the
 * time between two fields.
 */
static int load_vmstate(const struct gw_section *s, uint32_t version, struct gw_rbuf *in,
			struct gw_error *err)
{
	size_t size = s->vmstate->state_size;
	void *cand = malloc(size ? size : 1);
	int ret;

	if (!cand)
		return gw_error_set(err, -ENOMEM, "out of memory for the %zu-byte candidate state",
				    size);
	memcpy(cand, s->opaque, size);
	ret = gw_vmstate_decode(s->vmstate, cand, version, in, err);
	if (in->error < 0 || ret == 0)
		ret = check_consumed(in, version, err);
	if (ret == 0 && s->validate)
		ret = validate(s, cand, version, err);
	if (ret == 0)
		memcpy(s->opaque, cand, size);
	free(cand);
	if (ret < 0 || !s->post_load)
		return ret;
	/* Only now, with all of it checked, may the device see it. */
	gw_error_clear(err);
	ret = s->post_load(s->opaque, version, err);
	return ret < 0 ? gw_error_prefix(err, ret, "post_load failed: ") : 0;
}

int gw_section_load(const struct gw_section_reg *sec, uint16_t type, uint32_t version,
		    struct gw_rbuf *in, struct gw_error *err)
{
	const struct gw_section *s = &sec->s;
	int ret;

	gw_error_clear(err);
	if (type == GW_REC_SECTION_FULL && s->vmstate)
		return load_vmstate(s, version, in, err);
	if (type != GW_REC_SECTION_FULL)
		ret = s->load_live(s->opaque, phase_of(type), in, version, err);
	else
		ret = s->load(s->opaque, in, version, err);
	if (in->error < 0)
		return check_consumed(in, version, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "load callback failed: ");
	return check_consumed(in, version, err);
}
