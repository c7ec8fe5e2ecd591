/*
 * Declarative device state. A device keeps what must migrate in one plain
 * State struct and lists its fields once:
 *
 *     struct uart_state { uint8_t ier, lcr; uint16_t divisor; uint8_t fifo[16]; };
 *     static const struct gw_field uart_fields[] = {
 *         GW_FIELD(U8,    struct uart_state, ier),
 *         GW_FIELD(U8,    struct uart_state, lcr),
 *         GW_FIELD(U16,   struct uart_state, divisor),
 *         GW_FIELD(BYTES, struct uart_state, fifo),
 *         GW_FIELD_V(U32, struct uart_state, scratch, 2), // added in version 2
 *     };
 *     static const struct gw_vmstate uart_vmstate =
 *         GW_VMSTATE(struct uart_state, uart_fields);
 *
 * and registers a section with .vmstate = &uart_vmstate and .opaque
 * pointing at its State. The library then saves and loads it and
 * describes it in the stream (VMDESC), so `godwit analyze` can print the
 * fields of a stream without the device's code.
 *
 * Encoding: the fields in declaration order, each element little-endian,
 * no padding. A field of an integer type whose member is an array is an
 * array of that type (count = sizeof(member) / element size).
 *
 * Versions: a field with since = N exists in section versions >= N. On
 * load of an older version such fields are absent from the data and the
 * member is left as it was, so the device sets its default first.
 *
 * Bounds: loaded state is hostile until checked. A field that indexes an
 * array, counts entries or holds an enum-like value declares the values
 * it may take, inclusive, and a load refuses anything else:
 *
 *     GW_FIELD_RANGE(U8, struct uart_state, ier, 0, 0x0f),  // not GW_FIELD(U8, ...)
 *
 * min and max apply to every element of an array field; for signed types
 * they are signed. The range travels in VMDESC ("min", "max").
 * What a range cannot say (a bit that must be set, two fields that must
 * agree) goes in the section's validate hook (<godwit/migration.h>).
 * A load decodes into a scratch copy of the State (a copy of the current
 * one, so fields absent from an older version keep their values), checks
 * the range of every field the version carries, runs the hook, and only
 * then copies the candidate over the State: a refused section leaves the
 * State as it was. The message names the field, its value and the range:
 * "field 'ier' = 255 is outside 0..15", and the loader adds the section
 * and instance.
 *
 * Registration refuses a range on a bool or bytes field, min > max, a
 * bound the type cannot hold, and a ranged field that shares bytes with
 * another field (the other one's data would be loaded over the checked
 * value, or the checked value over it).
 *
 * The tables are read, never written, and must outlive the migration
 * object they are registered with (static const, normally).
 */
#ifndef GODWIT_VMSTATE_H
#define GODWIT_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

enum gw_field_type {
	GW_FIELD_U8 = 1,
	GW_FIELD_U16,
	GW_FIELD_U32,
	GW_FIELD_U64,
	GW_FIELD_I8,
	GW_FIELD_I16,
	GW_FIELD_I32,
	GW_FIELD_I64,
	GW_FIELD_BOOL,  /* a C bool; one byte 0/1 on the wire, anything else is refused */
	GW_FIELD_BYTES, /* raw bytes, copied as they are */
};

struct gw_field {
	const char *name;
	enum gw_field_type type;
	size_t offset;  /* offsetof(State, member) */
	size_t size;    /* sizeof(member): one element, an array, or the byte count */
	uint32_t since; /* first section version that has the field; 0 = all */
	bool ranged;    /* a load refuses elements outside min..max */
	uint64_t min;   /* inclusive; for signed types an int64_t stored as its bits */
	uint64_t max;
	uint64_t reserved[2]; /* zero (<godwit/export.h>): the macros below see to it */
};

struct gw_vmstate {
	const struct gw_field *fields;
	size_t nr_fields;
	size_t state_size; /* sizeof(State): every field must lie inside */
	uint64_t reserved[4]; /* zero, as GW_VMSTATE() leaves them */
};

#define GW_FIELD_V(type_, State, member, since_)                        \
	{ #member, GW_FIELD_##type_, offsetof(State, member),           \
	  sizeof(((State *)0)->member), (since_), false, 0, 0, { 0 } }
#define GW_FIELD(type_, State, member) GW_FIELD_V(type_, State, member, 0)

/* A field whose every element must lie in min..max (inclusive). */
#define GW_FIELD_RANGE_V(type_, State, member, min_, max_, since_)     \
	{ #member, GW_FIELD_##type_, offsetof(State, member),           \
	  sizeof(((State *)0)->member), (since_), true,                 \
	  (uint64_t)(min_), (uint64_t)(max_), { 0 } }
#define GW_FIELD_RANGE(type_, State, member, min_, max_)               \
	GW_FIELD_RANGE_V(type_, State, member, min_, max_, 0)

#define GW_VMSTATE(State, fields_)                                      \
	{ (fields_), sizeof(fields_) / sizeof((fields_)[0]), sizeof(State), { 0 } }

/* Name of a field type as used in VMDESC ("u32"), NULL if invalid. */
GW_API const char *gw_field_type_name(enum gw_field_type type);

/*
 * Decode the data of section (name, instance) from a stream using only the
 * stream's VMDESC document, the way an analyzer without device code does.
 * On success *json_out is a malloc'ed JSON object text, field name ->
 * value: integers as JSON numbers (u64 above 2^63-1 as a "0x..." string),
 * bool as true/false, bytes (and types this library does not know) as a
 * hex string, fields of more than one element as JSON arrays. Free the
 * text with free(). Fails with -ENOENT if the section is not
 * described, -ENOTSUP if its data is opaque, -EBADMSG if the document is
 * malformed or the data does not match it.
 */
GW_API int gw_vmdesc_decode(const char *vmdesc, size_t vmdesc_len,
			    const char *name, uint32_t instance,
			    const void *data, size_t len, char **json_out,
			    struct gw_error *err);

#ifdef __cplusplus
}
#endif

#endif
