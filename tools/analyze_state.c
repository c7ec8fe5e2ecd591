/*
 * The device state in a stream, shown field by field. The stream
 * describes its own sections (VMDESC, docs/format.md) and the library
 * decodes one-shot section data with that description alone
 * (gw_vmdesc_decode), so this works for devices godwit has never heard of.
 * Progressive and hand-saved sections are opaque: only their size is told.
 */
#include "analyze.h"

#include <godwit/vmstate.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Long values are cut for people; --json has them whole. */
#define MAX_HEX_SHOWN 64
#define MAX_ELEMENTS_SHOWN 16

/* The VMDESC entry of a section, or NULL. */
static json_t *find_description(json_t *vmdesc, const char *name, uint32_t instance)
{
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(vmdesc, "sections"), i, s) {
		const char *n = json_string_value(json_object_get(s, "name"));
		json_t *inst = json_object_get(s, "instance");
		if (n && !strcmp(n, name) && json_is_integer(inst) &&
		    json_integer_value(inst) == (json_int_t)instance)
			return s;
	}
	return NULL;
}

/*
 * Decode one section's state. Returns the field -> value object, or NULL
 * with why it cannot be had in why.
 */
static json_t *decode(const struct gw_config_section *cs, const struct section_stats *st,
		      json_t *desc, const char *vmdesc, size_t vmdesc_len, char *why, size_t len)
{
	if (!desc) {
		snprintf(why, len, "not described in VMDESC");
		return NULL;
	}
	if (!json_is_array(json_object_get(desc, "fields"))) {
		snprintf(why, len, "opaque data (%" PRIu64 " bytes), not described field by field",
			 st->bytes);
		return NULL;
	}
	if (st->state_bad) {
		snprintf(why, len, "its SECTION_FULL record fails its CRC");
		return NULL;
	}
	if (st->state_dropped) {
		snprintf(why, len, "not kept: over the analyzer's bound on device state");
		return NULL;
	}
	if (!st->records[3]) {
		snprintf(why, len, "no SECTION_FULL record in the stream");
		return NULL;
	}
	struct gw_error err = {0};
	char *text;
	if (gw_vmdesc_decode(vmdesc, vmdesc_len, cs->name, cs->instance, st->state, st->state_len,
			     &text, &err) < 0) {
		snprintf(why, len, "%s", err.msg);
		return NULL;
	}
	json_t *values = json_loads(text, 0, NULL);
	free(text);
	if (!values)
		snprintf(why, len, "out of memory");
	return values;
}

static void print_scalar(json_t *v)
{
	if (json_is_integer(v)) {
		json_int_t n = json_integer_value(v);
		if (n >= 0 && n < 10)
			printf("%" JSON_INTEGER_FORMAT, n);
		else if (n >= 0)
			printf("%" JSON_INTEGER_FORMAT " (0x%llx)", n, (unsigned long long)n);
		else
			printf("%" JSON_INTEGER_FORMAT, n);
	} else if (json_is_string(v)) {
		const char *s = json_string_value(v);
		size_t n = strlen(s);
		if (!strncmp(s, "0x", 2)) { /* a u64 beyond JSON's integers */
			printf("%s", s);
		} else if (strspn(s, "0") == n) {
			printf("all zero (%zu bytes)", n / 2);
		} else if (n > MAX_HEX_SHOWN) {
			printf("%.*s... (%zu bytes)", MAX_HEX_SHOWN, s, n / 2);
		} else {
			printf("%s", s);
		}
	} else {
		json_dumpf(v, stdout, JSON_ENCODE_ANY | JSON_COMPACT);
	}
}

static void print_value(json_t *v)
{
	if (!json_is_array(v)) {
		print_scalar(v);
		return;
	}
	size_t i, n = json_array_size(v);
	json_t *e;
	putchar('[');
	json_array_foreach(v, i, e) {
		if (i == MAX_ELEMENTS_SHOWN) {
			printf(", ... (%zu elements)", n);
			break;
		}
		if (i)
			printf(", ");
		json_dumpf(e, stdout, JSON_ENCODE_ANY | JSON_COMPACT);
	}
	putchar(']');
}

/* "u8", "u32[8]", "bytes[312]" */
static void field_type(json_t *f, char *buf, size_t len)
{
	const char *type = json_string_value(json_object_get(f, "type"));
	json_int_t size = json_integer_value(json_object_get(f, "size"));
	json_int_t count = json_integer_value(json_object_get(f, "count"));
	if (!type)
		type = "?";
	if (!strcmp(type, "bytes"))
		snprintf(buf, len, "bytes[%" JSON_INTEGER_FORMAT "]", size * count);
	else if (count != 1)
		snprintf(buf, len, "%s[%" JSON_INTEGER_FORMAT "]", type, count);
	else
		snprintf(buf, len, "%s", type);
}

static void print_section(const struct gw_config_section *cs, const struct section_stats *st,
			  json_t *desc, const char *vmdesc, size_t vmdesc_len, bool want_values)
{
	char why[GW_ERROR_MSG_MAX];
	json_t *values = NULL;
	printf("  %s %u (version %u, %" PRIu64 " bytes)", cs->name, cs->instance, cs->version,
	       st->bytes);
	if (want_values) {
		values = decode(cs, st, desc, vmdesc, vmdesc_len, why, sizeof(why));
		if (!values) {
			printf(": %s\n", why);
			return;
		}
	} else if (!json_is_array(json_object_get(desc, "fields"))) {
		printf(": %s\n", desc ? "opaque data" : "not described in VMDESC");
		return;
	}
	printf(":\n");
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(desc, "fields"), i, f) {
		const char *name = json_string_value(json_object_get(f, "name"));
		char type[48];
		field_type(f, type, sizeof(type));
		json_t *v = json_object_get(values, name ? name : "");
		printf("    %-20s ", name ? name : "?");
		if (v) {
			printf("%-11s ", type);
			print_value(v);
		} else {
			printf("%s", type);
		}
		putchar('\n');
	}
	json_decref(values);
}

void state_print(const struct gw_config *cfg, const struct section_stats *sections,
		 const char *vmdesc, size_t vmdesc_len, bool decode_values)
{
	if (!vmdesc) {
		printf("\ndevice state: no VMDESC record in the stream, so the state of its "
		       "sections cannot be shown\n");
		return;
	}
	json_error_t jerr;
	json_t *doc = json_loadb(vmdesc, vmdesc_len, 0, &jerr);
	if (!doc) {
		printf("\ndevice state: the VMDESC record is not valid JSON: %s (at byte %d)\n",
		       jerr.text, jerr.position);
		return;
	}
	printf(decode_values ? "\ndevice state, decoded with the stream's VMDESC:\n" :
			       "\ndevice state layout, from the stream's VMDESC:\n");
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct gw_config_section *cs = &cfg->sections[i];
		print_section(cs, &sections[i], find_description(doc, cs->name, cs->instance),
			      vmdesc, vmdesc_len, decode_values);
	}
	json_decref(doc);
}

json_t *state_json(const struct gw_config *cfg, const struct section_stats *sections,
		   const char *vmdesc, size_t vmdesc_len, bool decode_values)
{
	json_t *out = json_array();
	json_t *doc = vmdesc ? json_loadb(vmdesc, vmdesc_len, 0, NULL) : NULL;
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct gw_config_section *cs = &cfg->sections[i];
		json_t *o = json_object();
		if (decode_values) {
			char why[GW_ERROR_MSG_MAX];
			json_t *values = NULL;
			if (doc)
				values = decode(cs, &sections[i],
						find_description(doc, cs->name, cs->instance),
						vmdesc, vmdesc_len, why, sizeof(why));
			else
				snprintf(why, sizeof(why),
					 vmdesc ? "the VMDESC record is not valid JSON" :
						  "no VMDESC record in the stream");
			json_object_set_new(o, "fields", values ? values : json_null());
			if (!values)
				json_object_set_new(o, "not_decoded", json_string(why));
		}
		json_array_append_new(out, o);
	}
	json_decref(doc);
	return out;
}
