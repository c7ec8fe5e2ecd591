/*
 * Declarative device state: a device lists the fields of its State struct
 * once and gets save, load and a machine-readable description (VMDESC)
 * from the same table, so the three cannot disagree. gw_vmdesc_decode()
 * is the other end: it decodes section data with nothing but VMDESC.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/vmstate.h>

#include "lib/internal.h"

_Static_assert(sizeof(bool) == 1, "GW_FIELD_BOOL assumes a one-byte bool");

/* clang-format off */
static const struct {
	const char *name;
	size_t elem;
	bool is_signed;
} field_types[] = {
	[GW_FIELD_U8]    = { "u8",    1, false },
	[GW_FIELD_U16]   = { "u16",   2, false },
	[GW_FIELD_U32]   = { "u32",   4, false },
	[GW_FIELD_U64]   = { "u64",   8, false },
	[GW_FIELD_I8]    = { "i8",    1, true },
	[GW_FIELD_I16]   = { "i16",   2, true },
	[GW_FIELD_I32]   = { "i32",   4, true },
	[GW_FIELD_I64]   = { "i64",   8, true },
	[GW_FIELD_BOOL]  = { "bool",  1, false },
	[GW_FIELD_BYTES] = { "bytes", 1, false },
};
/* clang-format on */

const char *gw_field_type_name(enum gw_field_type type)
{
	if ((unsigned)type >= GW_ARRAY_SIZE(field_types))
		return NULL;
	return field_types[type].name;
}

/* The bounds of a range compare as the field's type: signed ones as int64_t. */
static bool below(enum gw_field_type type, uint64_t a, uint64_t b)
{
	return field_types[type].is_signed ? (int64_t)a < (int64_t)b : a < b;
}

/* Whether v (as loaded: zero-extended, or sign-extended for signed types)
 * is a value of the element type. */
static bool representable(enum gw_field_type type, uint64_t v)
{
	unsigned bits = 8 * field_types[type].elem;

	if (bits == 64)
		return true;
	if (field_types[type].is_signed)
		return (int64_t)v >= -((int64_t)1 << (bits - 1)) &&
		       (int64_t)v < ((int64_t)1 << (bits - 1));
	return v >> bits == 0;
}

/* A value as an error message shows it: decimal, and hex too when large. */
static const char *show(enum gw_field_type type, uint64_t v, char buf[48])
{
	if (field_types[type].is_signed)
		snprintf(buf, 48, "%" PRId64, (int64_t)v);
	else if (v > 0xffff)
		snprintf(buf, 48, "%" PRIu64 " (0x%" PRIx64 ")", v, v);
	else
		snprintf(buf, 48, "%" PRIu64, v);
	return buf;
}

static bool overlap(const struct gw_field *a, const struct gw_field *b)
{
	return a->offset < b->offset + b->size && b->offset < a->offset + a->size;
}

static int check_range(const struct gw_vmstate *vs, size_t i, struct gw_error *err)
{
	const struct gw_field *f = &vs->fields[i];
	char lo[48], hi[48];

	if (f->type == GW_FIELD_BOOL || f->type == GW_FIELD_BYTES)
		return gw_error_set(err, -EINVAL,
				    "field '%s': a range needs an integer type, not %s", f->name,
				    field_types[f->type].name);
	if (!representable(f->type, f->min) || !representable(f->type, f->max) ||
	    below(f->type, f->max, f->min))
		return gw_error_set(err, -EINVAL,
				    "field '%s': range %s..%s is not one of %s values", f->name,
				    show(f->type, f->min, lo), show(f->type, f->max, hi),
				    field_types[f->type].name);
	/* Bytes loaded twice are checked once: the range would pass a value
	 * that the other field then replaces. */
	for (size_t j = 0; j < vs->nr_fields; j++)
		if (j != i && overlap(f, &vs->fields[j]))
			return gw_error_set(err, -EINVAL,
					    "field '%s' has a range but shares bytes with field '%s'",
					    f->name, vs->fields[j].name);
	return 0;
}

/* Reserved words are zero so that a later version can give them a
 * meaning in which zero is today's behaviour (<godwit/export.h>). */
static bool words_zero(const uint64_t *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (w[i])
			return false;
	return true;
}

static int check_field(const struct gw_vmstate *vs, size_t i, uint32_t version,
		       struct gw_error *err)
{
	const struct gw_field *f = &vs->fields[i];
	const char *type = gw_field_type_name(f->type);
	int ret = gw_check_name("field", f->name, err);

	if (ret < 0)
		return ret;
	if (!words_zero(f->reserved, GW_ARRAY_SIZE(f->reserved)))
		return gw_error_set(err, -EINVAL,
				    "field '%s': reserved words are not zero (declare it with GW_FIELD*())",
				    f->name);
	for (size_t j = 0; j < i; j++)
		if (strcmp(vs->fields[j].name, f->name) == 0)
			return gw_error_set(err, -EINVAL, "field '%s' is listed twice", f->name);
	if (!type)
		return gw_error_set(err, -EINVAL, "field '%s': unknown type %d", f->name, f->type);
	if (f->size == 0 || f->size % field_types[f->type].elem)
		return gw_error_set(err, -EINVAL,
				    "field '%s': size %zu is not a non-zero multiple of the %zu-byte %s",
				    f->name, f->size, field_types[f->type].elem, type);
	if (f->offset > vs->state_size || f->size > vs->state_size - f->offset)
		return gw_error_set(err, -EINVAL,
				    "field '%s': bytes %zu..%zu lie outside the %zu-byte state",
				    f->name, f->offset, f->offset + f->size - 1, vs->state_size);
	if (f->since > version)
		return gw_error_set(err, -EINVAL,
				    "field '%s' appears in version %u, after the section's version %u",
				    f->name, f->since, version);
	return f->ranged ? check_range(vs, i, err) : 0;
}

int gw_vmstate_check(const struct gw_vmstate *vs, uint32_t version, struct gw_error *err)
{
	if (!words_zero(vs->reserved, GW_ARRAY_SIZE(vs->reserved)))
		return gw_error_set(err, -EINVAL,
				    "vmstate: reserved words are not zero (declare it with GW_VMSTATE())");
	if (vs->nr_fields && !vs->fields)
		return gw_error_set(err, -EINVAL, "vmstate has %zu fields but no table",
				    vs->nr_fields);
	for (size_t i = 0; i < vs->nr_fields; i++) {
		int ret = check_field(vs, i, version, err);

		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Load and store one integer element of elem bytes in host order. */
static uint64_t load_elem(const unsigned char *p, size_t elem)
{
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;

	switch (elem) {
	case 1:
		memcpy(&u8, p, 1);
		return u8;
	case 2:
		memcpy(&u16, p, 2);
		return u16;
	case 4:
		memcpy(&u32, p, 4);
		return u32;
	}
	memcpy(&u64, p, 8);
	return u64;
}

static void store_elem(unsigned char *p, size_t elem, uint64_t v)
{
	uint8_t u8 = v;
	uint16_t u16 = v;
	uint32_t u32 = v;

	switch (elem) {
	case 1:
		memcpy(p, &u8, 1);
		return;
	case 2:
		memcpy(p, &u16, 2);
		return;
	case 4:
		memcpy(p, &u32, 4);
		return;
	}
	memcpy(p, &v, 8);
}

void gw_vmstate_save(const struct gw_vmstate *vs, const void *state, struct gw_wbuf *out)
{
	for (size_t i = 0; i < vs->nr_fields; i++) {
		const struct gw_field *f = &vs->fields[i];
		const unsigned char *p = (const unsigned char *)state + f->offset;
		size_t elem = field_types[f->type].elem;

		if (f->type == GW_FIELD_BYTES) {
			gw_put_bytes(out, p, f->size);
			continue;
		}
		for (size_t o = 0; o < f->size; o += elem) {
			uint64_t v = load_elem(p + o, elem);

			switch (elem) {
			case 1:
				gw_put_u8(out, f->type == GW_FIELD_BOOL ? v != 0 : v);
				break;
			case 2:
				gw_put_u16(out, v);
				break;
			case 4:
				gw_put_u32(out, v);
				break;
			default:
				gw_put_u64(out, v);
				break;
			}
		}
	}
}

/* Is element n of field f, as read, a value the field may hold? */
static int check_elem(const struct gw_field *f, size_t n, uint64_t v, struct gw_error *err)
{
	char idx[24] = "", val[48], lo[48], hi[48];

	if (f->type == GW_FIELD_BOOL && v > 1)
		return gw_error_set(err, -EBADMSG,
				    "field '%s'[%zu]: bool value %llu is neither 0 nor 1", f->name,
				    n, (unsigned long long)v);
	if (!f->ranged || (!below(f->type, v, f->min) && !below(f->type, f->max, v)))
		return 0;
	if (f->size > field_types[f->type].elem)
		snprintf(idx, sizeof(idx), "[%zu]", n);
	return gw_error_set(err, -EBADMSG, "field '%s'%s = %s is outside %s..%s", f->name, idx,
			    show(f->type, v, val), show(f->type, f->min, lo),
			    show(f->type, f->max, hi));
}

/* Sign-extend an element of elem bytes of a signed type, as ranges compare. */
static uint64_t widen(enum gw_field_type type, uint64_t v, size_t elem)
{
	unsigned shift = 64 - 8 * elem;

	if (!field_types[type].is_signed || shift == 0)
		return v;
	return (uint64_t)((int64_t)(v << shift) >> shift);
}

int gw_vmstate_decode(const struct gw_vmstate *vs, void *state, uint32_t version,
		      struct gw_rbuf *in, struct gw_error *err)
{
	for (size_t i = 0; i < vs->nr_fields; i++) {
		const struct gw_field *f = &vs->fields[i];
		unsigned char *p = (unsigned char *)state + f->offset;
		size_t elem = field_types[f->type].elem;

		if (f->since > version)
			continue; /* not in this version: keep the device's default */
		if (f->type == GW_FIELD_BYTES) {
			gw_get_bytes(in, p, f->size);
			continue;
		}
		for (size_t o = 0; o < f->size; o += elem) {
			uint8_t u8;
			uint16_t u16;
			uint32_t u32;
			uint64_t v;
			int ret;

			switch (elem) {
			case 1:
				gw_get_u8(in, &u8);
				v = u8;
				break;
			case 2:
				gw_get_u16(in, &u16);
				v = u16;
				break;
			case 4:
				gw_get_u32(in, &u32);
				v = u32;
				break;
			default:
				gw_get_u64(in, &v);
				break;
			}
			if (in->error)
				return in->error;
			ret = check_elem(f, o / elem, widen(f->type, v, elem), err);
			if (ret < 0)
				return ret;
			store_elem(p + o, elem, v);
		}
	}
	return in->error;
}

/* A bound in VMDESC: a JSON integer, or "0x..." above 2^63-1, as decoded values. */
static json_t *describe_bound(enum gw_field_type type, uint64_t v)
{
	char hex[19];

	if (field_types[type].is_signed)
		return json_integer((json_int_t)(int64_t)v);
	if (v <= INT64_MAX)
		return json_integer((json_int_t)v);
	snprintf(hex, sizeof(hex), "0x%016" PRIx64, v);
	return json_string(hex);
}

static json_t *describe_field(const struct gw_field *f)
{
	size_t elem = field_types[f->type].elem;
	json_t *o = json_pack("{s:s, s:s, s:I, s:I}", "name", f->name, "type",
			      field_types[f->type].name, "size", (json_int_t)elem, "count",
			      (json_int_t)(f->size / elem));

	if (o && f->ranged &&
	    (json_object_set_new(o, "min", describe_bound(f->type, f->min)) < 0 ||
	     json_object_set_new(o, "max", describe_bound(f->type, f->max)) < 0)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *describe_fields(const struct gw_vmstate *vs)
{
	json_t *fields = json_array();

	for (size_t i = 0; fields && i < vs->nr_fields; i++)
		if (json_array_append_new(fields, describe_field(&vs->fields[i])) < 0) {
			json_decref(fields);
			return NULL;
		}
	return fields;
}

static json_t *describe_section(const struct gw_section_reg *sec, uint32_t id)
{
	const struct gw_section *s = &sec->s;
	json_t *fields = s->vmstate ? describe_fields(s->vmstate) : json_null();
	json_t *o;

	if (!fields)
		return NULL;
	o = json_pack("{s:I, s:s, s:I, s:I, s:o}", "id", (json_int_t)id, "name", sec->name,
		      "instance", (json_int_t)s->instance, "version", (json_int_t)s->version,
		      "fields", fields);
	if (o && gw_section_progressive(s) &&
	    json_object_set_new(o, "progressive", json_true()) < 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

int gw_vmdesc_build(const struct gw_migration *m, struct gw_wbuf *out, struct gw_error *err)
{
	json_t *sections = json_array();
	json_t *root = json_pack("{s:i, s:i, s:o}", "vmdesc", 1, "page_size", (int)GW_PAGE_SIZE,
				 "sections", sections);
	char *text = NULL;

	for (uint32_t i = 0; root && i < m->nr_sections; i++)
		if (json_array_append_new(sections, describe_section(&m->sections[i], i)) < 0)
			break;
	if (root && json_array_size(sections) == m->nr_sections)
		text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!text)
		return gw_error_set(err, -ENOMEM, "VMDESC: out of memory");
	gw_put_bytes(out, text, strlen(text));
	free(text);
	if (out->error)
		return gw_error_set(err, out->error, "VMDESC: the description exceeds %llu bytes",
				    (unsigned long long)GW_VMDESC_MAX);
	return 0;
}

/* The analyzer side: decode data with nothing but the VMDESC document. */

static const json_t *find_section(const json_t *root, const char *name, uint32_t instance)
{
	const json_t *sections = json_object_get(root, "sections");
	size_t i;
	json_t *s;

	json_array_foreach(sections, i, s) {
		const char *n = json_string_value(json_object_get(s, "name"));
		json_t *inst = json_object_get(s, "instance");

		if (n && strcmp(n, name) == 0 && json_is_integer(inst) &&
		    json_integer_value(inst) == instance)
			return s;
	}
	return NULL;
}

static enum gw_field_type type_by_name(const char *name)
{
	for (size_t t = 1; name && t < GW_ARRAY_SIZE(field_types); t++)
		if (strcmp(field_types[t].name, name) == 0)
			return (enum gw_field_type)t;
	return 0;
}

static json_t *hex_string(const unsigned char *p, size_t n)
{
	char *s = malloc(2 * n + 1);
	json_t *j;

	if (!s)
		return NULL;
	for (size_t i = 0; i < n; i++)
		snprintf(s + 2 * i, 3, "%02x", p[i]);
	s[2 * n] = '\0';
	j = json_string(s);
	free(s);
	return j;
}

static json_t *decode_elem(enum gw_field_type type, const unsigned char *p, size_t elem)
{
	uint64_t v = 0;

	for (size_t i = 0; i < elem; i++)
		v |= (uint64_t)p[i] << (8 * i);
	if (type == GW_FIELD_BOOL)
		return v > 1 ? NULL : json_boolean(v);
	if (field_types[type].is_signed) {
		unsigned shift = 64 - 8 * elem;

		return json_integer((json_int_t)((int64_t)(v << shift) >> shift));
	}
	if (v > INT64_MAX) {
		char hex[19];

		snprintf(hex, sizeof(hex), "0x%016" PRIx64, v);
		return json_string(hex);
	}
	return json_integer((json_int_t)v);
}

/* Decode one described field at p (size * count bytes, already bounded). */
static json_t *decode_field(enum gw_field_type type, const unsigned char *p, size_t size,
			    size_t count)
{
	json_t *arr;

	/* Unknown types are shown raw: an older analyzer still shows the bytes. */
	if (type == 0 || type == GW_FIELD_BYTES)
		return hex_string(p, size * count);
	if (count == 1)
		return decode_elem(type, p, size);
	arr = json_array();
	for (size_t i = 0; arr && i < count; i++)
		if (json_array_append_new(arr, decode_elem(type, p + i * size, size)) < 0) {
			json_decref(arr);
			return NULL;
		}
	return arr;
}

static int decode_fields(const json_t *fields, const unsigned char *data, size_t len, json_t *out,
			 struct gw_error *err)
{
	size_t pos = 0, i;
	json_t *f;

	json_array_foreach(fields, i, f) {
		const char *name = json_string_value(json_object_get(f, "name"));
		const char *tname = json_string_value(json_object_get(f, "type"));
		json_int_t size = json_integer_value(json_object_get(f, "size"));
		json_int_t count = json_integer_value(json_object_get(f, "count"));
		enum gw_field_type type = type_by_name(tname);
		json_t *v;

		if (!name || !tname || size < 1 || count < 1 ||
		    (type && size != (json_int_t)field_types[type].elem))
			return gw_error_set(err, -EBADMSG, "VMDESC: field %zu is malformed", i);
		if ((uint64_t)count > (len - pos) / (uint64_t)size)
			return gw_error_set(err, -EBADMSG,
					    "field '%s' needs %lld x %lld bytes but only %zu of %zu are left",
					    name, (long long)count, (long long)size, len - pos,
					    len);
		v = decode_field(type, data + pos, size, count);
		if (!v)
			return gw_error_set(err, -EBADMSG,
					    "field '%s': value does not decode as %s", name, tname);
		if (json_object_set_new(out, name, v) < 0)
			return gw_error_set(err, -ENOMEM, "out of memory");
		pos += size * count;
	}
	if (pos != len)
		return gw_error_set(err, -EBADMSG, "%zu of %zu bytes of data are not described",
				    len - pos, len);
	return 0;
}

int gw_vmdesc_decode(const char *vmdesc, size_t vmdesc_len, const char *name, uint32_t instance,
		     const void *data, size_t len, char **json_out, struct gw_error *err)
{
	json_error_t jerr;
	json_t *root = json_loadb(vmdesc, vmdesc_len, 0, &jerr);
	const json_t *sec, *fields;
	json_t *out = NULL;
	int ret = 0;

	if (!root)
		return gw_error_set(err, -EBADMSG, "VMDESC is not valid JSON: %s (at byte %d)",
				    jerr.text, jerr.position);
	sec = find_section(root, name, instance);
	fields = json_object_get(sec, "fields");
	if (!sec)
		ret = gw_error_set(err, -ENOENT,
				   "VMDESC does not describe section '%s' instance %u", name,
				   instance);
	else if (json_is_null(fields))
		ret = gw_error_set(err, -ENOTSUP, "section '%s' instance %u has opaque data", name,
				   instance);
	else if (!json_is_array(fields))
		ret = gw_error_set(err, -EBADMSG, "VMDESC: section '%s' has no field list", name);
	else if (!(out = json_object()))
		ret = gw_error_set(err, -ENOMEM, "out of memory");
	else if ((ret = decode_fields(fields, data, len, out, err)) < 0)
		gw_error_prefix(err, ret, "section '%s' instance %u: ", name, instance);
	if (ret == 0) {
		*json_out = json_dumps(out, JSON_COMPACT);
		if (!*json_out)
			ret = gw_error_set(err, -ENOMEM, "out of memory");
	}
	json_decref(out);
	json_decref(root);
	return ret;
}
