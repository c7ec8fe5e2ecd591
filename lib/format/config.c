/*
 * The CONFIG record: everything a destination checks before it changes
 * anything (docs/format.md, "CONFIG"). Parsing is strict and bounded by
 * the payload: counts are checked against GW_MAX_* and against the bytes
 * left before anything is allocated.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/internal.h"

/* The smallest encodings of a RAM table entry and a section table entry. */
#define RAM_ENTRY_MIN (1 + 1 + 8 + 8)
#define SECTION_ENTRY_MIN (1 + 1 + 4 + 4 + 4)

int gw_config_put(const struct gw_migration *m, struct gw_wbuf *out)
{
	gw_put_u32(out, GW_PAGE_SIZE);
	gw_put_u32(out, m->nr_vcpus);
	gw_put_str(out, m->vmm_name);
	gw_put_str(out, m->vmm_version);
	gw_put_str(out, m->machine);
	gw_put_u32(out, m->nr_ram);
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		gw_put_str(out, m->ram[i].name);
		gw_put_u64(out, m->ram[i].size);
		gw_put_u64(out, m->ram[i].gpa);
	}
	gw_put_u32(out, m->nr_sections);
	for (uint32_t i = 0; i < m->nr_sections; i++) {
		const struct gw_section_reg *sec = &m->sections[i];

		gw_put_str(out, sec->name);
		gw_put_u32(out, sec->s.instance);
		gw_put_u32(out, sec->s.version);
		gw_put_u32(out, gw_section_progressive(&sec->s) ? GW_SECF_PROGRESSIVE : 0);
	}
	return out->error;
}

void gw_config_release(struct gw_config *cfg)
{
	free(cfg->ram);
	free(cfg->sections);
	memset(cfg, 0, sizeof(*cfg));
}

static int bad(struct gw_error *err, const char *what)
{
	return gw_error_set(err, -EBADMSG, "malformed CONFIG record: %s", what);
}

static int parse_ram(struct gw_rbuf *b, struct gw_config *cfg, struct gw_error *err)
{
	gw_get_u32(b, &cfg->nr_ram);
	if (b->error)
		return bad(err, "truncated");
	if (cfg->nr_ram > GW_MAX_RAM_BLOCKS || cfg->nr_ram > gw_rbuf_remaining(b) / RAM_ENTRY_MIN)
		return bad(err, "RAM block count out of bounds");
	cfg->ram = calloc(cfg->nr_ram ? cfg->nr_ram : 1, sizeof(*cfg->ram));
	if (!cfg->ram)
		return gw_error_set(err, -ENOMEM, "CONFIG record: out of memory");
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		struct gw_config_ram *r = &cfg->ram[i];

		gw_get_str(b, r->name, true);
		gw_get_u64(b, &r->size);
		gw_get_u64(b, &r->gpa);
		if (b->error)
			return bad(err, "bad RAM block entry");
		if (r->size == 0 || r->size % GW_PAGE_SIZE)
			return bad(err, "RAM block size is not a multiple of the page size");
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(cfg->ram[j].name, r->name) == 0)
				return bad(err, "duplicate RAM block name");
	}
	return 0;
}

static int parse_sections(struct gw_rbuf *b, struct gw_config *cfg, struct gw_error *err)
{
	gw_get_u32(b, &cfg->nr_sections);
	if (b->error)
		return bad(err, "truncated");
	if (cfg->nr_sections > GW_MAX_SECTIONS ||
	    cfg->nr_sections > gw_rbuf_remaining(b) / SECTION_ENTRY_MIN)
		return bad(err, "section count out of bounds");
	cfg->sections = calloc(cfg->nr_sections ? cfg->nr_sections : 1, sizeof(*cfg->sections));
	if (!cfg->sections)
		return gw_error_set(err, -ENOMEM, "CONFIG record: out of memory");
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		struct gw_config_section *s = &cfg->sections[i];

		gw_get_str(b, s->name, true);
		gw_get_u32(b, &s->instance);
		gw_get_u32(b, &s->version);
		gw_get_u32(b, &s->flags);
		if (b->error)
			return bad(err, "bad section entry");
		if (s->version == 0 || (s->flags & ~GW_SECF_PROGRESSIVE))
			return bad(err, "bad section version or flags");
		for (uint32_t j = 0; j < i; j++)
			if (cfg->sections[j].instance == s->instance &&
			    strcmp(cfg->sections[j].name, s->name) == 0)
				return bad(err, "duplicate section");
	}
	return 0;
}

int gw_config_parse(const void *p, size_t len, struct gw_config *cfg, struct gw_error *err)
{
	struct gw_rbuf b;
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	gw_rbuf_init(&b, p, len);
	gw_get_u32(&b, &cfg->page_size);
	gw_get_u32(&b, &cfg->nr_vcpus);
	gw_get_str(&b, cfg->vmm_name, false);
	gw_get_str(&b, cfg->vmm_version, false);
	gw_get_str(&b, cfg->machine, false);
	if (b.error)
		ret = bad(err, "bad header fields");
	else
		ret = parse_ram(&b, cfg, err);
	if (ret == 0)
		ret = parse_sections(&b, cfg, err);
	if (ret == 0 && gw_rbuf_remaining(&b))
		ret = bad(err, "trailing bytes");
	if (ret < 0)
		gw_config_release(cfg);
	return ret;
}

static int match_ram(const struct gw_migration *m, const struct gw_config *cfg, uint32_t *ram_map,
		     struct gw_error *err)
{
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct gw_config_ram *r = &cfg->ram[i];
		uint32_t j;

		for (j = 0; j < m->nr_ram; j++)
			if (strcmp(m->ram[j].name, r->name) == 0)
				break;
		if (j == m->nr_ram)
			return gw_error_set(err, -ENOENT,
					    "RAM block '%s' (%llu bytes) of the stream does not exist in this VMM",
					    r->name, (unsigned long long)r->size);
		if (m->ram[j].size != r->size)
			return gw_error_set(err, -EINVAL,
					    "RAM block '%s': stream has %llu bytes, this VMM has %llu bytes",
					    r->name, (unsigned long long)r->size,
					    (unsigned long long)m->ram[j].size);
		ram_map[i] = j;
	}
	for (uint32_t j = 0; j < m->nr_ram; j++) {
		uint32_t i;

		for (i = 0; i < cfg->nr_ram; i++)
			if (ram_map[i] == j)
				break;
		if (i == cfg->nr_ram)
			return gw_error_set(err, -EINVAL,
					    "RAM block '%s' of this VMM is not in the stream",
					    m->ram[j].name);
	}
	return 0;
}

static int match_sections(const struct gw_migration *m, const struct gw_config *cfg,
			  uint32_t *sec_map, struct gw_error *err)
{
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct gw_config_section *s = &cfg->sections[i];
		const struct gw_section_reg *sec = NULL;
		uint32_t j;

		for (j = 0; j < m->nr_sections; j++) {
			sec = &m->sections[j];
			if (sec->s.instance == s->instance && strcmp(sec->name, s->name) == 0)
				break;
		}
		if (j == m->nr_sections)
			return gw_error_set(err, -ENOENT,
					    "unknown section '%s' instance %u (version %u): this VMM has no such device",
					    s->name, s->instance, s->version);
		if (s->version < sec->s.min_version || s->version > sec->s.version)
			return gw_error_set(err, -ENOTSUP,
					    "section '%s' instance %u: stream has version %u, this VMM accepts versions %u..%u",
					    s->name, s->instance, s->version, sec->s.min_version,
					    sec->s.version);
		if (!(s->flags & GW_SECF_PROGRESSIVE) != !gw_section_progressive(&sec->s))
			return gw_error_set(err, -EPROTO,
					    "section '%s' instance %u is %s in the stream but %s in this VMM",
					    s->name, s->instance,
					    s->flags & GW_SECF_PROGRESSIVE ? "progressive" :
									     "one-shot",
					    gw_section_progressive(&sec->s) ? "progressive" :
									      "one-shot");
		sec_map[i] = j;
	}
	for (uint32_t j = 0; j < m->nr_sections; j++) {
		const struct gw_section_reg *sec = &m->sections[j];
		uint32_t i;

		if (sec->s.flags & GW_SECTION_OPTIONAL)
			continue;
		for (i = 0; i < cfg->nr_sections; i++)
			if (sec_map[i] == j)
				break;
		if (i == cfg->nr_sections)
			return gw_error_set(err, -EINVAL,
					    "section '%s' instance %u of this VMM is not in the stream (mark it GW_SECTION_OPTIONAL if it may be)",
					    sec->name, sec->s.instance);
	}
	return 0;
}

int gw_config_match(const struct gw_migration *m, const struct gw_config *cfg, uint32_t *ram_map,
		    uint32_t *sec_map, struct gw_error *err)
{
	int ret = gw_config_match_machine(m, cfg, sec_map, err);

	return ret < 0 ? ret : match_ram(m, cfg, ram_map, err);
}

int gw_config_match_machine(const struct gw_migration *m, const struct gw_config *cfg,
			    uint32_t *sec_map, struct gw_error *err)
{
	if (cfg->page_size != GW_PAGE_SIZE)
		return gw_error_set(err, -EINVAL, "stream page size is %u bytes, this VMM uses %u",
				    cfg->page_size, GW_PAGE_SIZE);
	if (cfg->nr_vcpus != m->nr_vcpus)
		return gw_error_set(err, -EINVAL, "stream has %u vCPUs, this VMM has %u",
				    cfg->nr_vcpus, m->nr_vcpus);
	if (strcmp(cfg->machine, m->machine) != 0)
		return gw_error_set(err, -EINVAL, "stream is for machine '%s', this VMM runs '%s'",
				    cfg->machine, m->machine);
	return match_sections(m, cfg, sec_map, err);
}
