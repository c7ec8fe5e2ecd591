/*
 * Declarative device state: the VMDESC a stream carries describes each
 * section's data exactly, so an analyzer decodes device state from the
 * stream alone; loading refuses values a field cannot hold.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "testvm.h"

/* The VMDESC and the data of section (name, instance) of a stream, walked like an analyzer. */
static void find_in_stream(const struct test_buf *s, const char *name, uint32_t instance,
			   char **vmdesc, size_t *vmdesc_len, unsigned char **data, size_t *len)
{
	struct gw_error err = { 0 };
	struct gw_record_info info;
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd(s->p, s->len);

	*vmdesc = NULL;
	*data = NULL;
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_OK(gw_walker_new(r, &wk, &err), &err);
	while (gw_walker_next(wk, &info, &err) == 1) {
		size_t n;
		const void *p = gw_walker_data(wk, &n);

		if (info.type == GW_REC_VMDESC) {
			*vmdesc = malloc(n);
			memcpy(*vmdesc, p, n);
			*vmdesc_len = n;
		}
		if (info.type == GW_REC_SECTION_FULL && strcmp(info.name, name) == 0 &&
		    info.instance == instance) {
			*data = malloc(n + 1);
			memcpy(*data, p, n);
			*len = n;
		}
	}
	CHECK(err.code == 0);
	CHECK(*vmdesc && *data);
	gw_walker_free(wk);
	gw_reader_free(r);
	close(fd);
}

static void test_vmdesc_document(const char *vmdesc, size_t len)
{
	json_t *root = json_loadb(vmdesc, len, 0, NULL);
	json_t *sections, *uart, *fields, *f;

	CHECK(root);
	CHECK(json_integer_value(json_object_get(root, "vmdesc")) == 1);
	CHECK(json_integer_value(json_object_get(root, "page_size")) == GW_PAGE_SIZE);
	sections = json_object_get(root, "sections");
	CHECK(json_array_size(sections) == 4);
	uart = json_array_get(sections, 1);
	CHECK(strcmp(json_string_value(json_object_get(uart, "name")), "uart") == 0);
	CHECK(json_integer_value(json_object_get(uart, "instance")) == 1);
	CHECK(json_integer_value(json_object_get(uart, "version")) == 2);
	CHECK(json_integer_value(json_object_get(uart, "id")) == 1);
	fields = json_object_get(uart, "fields");
	CHECK(json_array_size(fields) == 9);
	f = json_array_get(fields, 3);
	CHECK(strcmp(json_string_value(json_object_get(f, "name")), "regs") == 0);
	CHECK(strcmp(json_string_value(json_object_get(f, "type")), "u32") == 0);
	CHECK(json_integer_value(json_object_get(f, "size")) == 4);
	CHECK(json_integer_value(json_object_get(f, "count")) == 4);
	f = json_array_get(fields, 4);
	CHECK(strcmp(json_string_value(json_object_get(f, "type")), "bytes") == 0);
	CHECK(json_integer_value(json_object_get(f, "count")) == 16);
	/* Hand-written and progressive sections are opaque. */
	CHECK(json_is_null(json_object_get(json_array_get(sections, 2), "fields")));
	CHECK(json_is_true(json_object_get(json_array_get(sections, 3), "progressive")));
	json_decref(root);
}

static void test_decode(void)
{
	struct test_vm src;
	struct gw_error err = { 0 };
	struct test_buf s;
	char *vmdesc, *out, expect[1024];
	unsigned char *data;
	size_t vlen = 0, len = 0;
	const struct uart_state *u;

	test_vm_init(&src, NULL);
	test_vm_fill(&src, 5);
	src.uart[1].big = 0x8000000000000001ull; /* above INT64_MAX */
	src.uart[1].delta = -5;
	test_save(&src, 0, &s);
	find_in_stream(&s, "uart", 1, &vmdesc, &vlen, &data, &len);
	test_vmdesc_document(vmdesc, vlen);

	CHECK_OK(gw_vmdesc_decode(vmdesc, vlen, "uart", 1, data, len, &out, &err), &err);
	u = &src.uart[1];
	int n = snprintf(expect, sizeof(expect),
			 "{\"ier\":%u,\"lcr\":%u,\"divisor\":%u,\"regs\":[%u,%u,%u,%u],\"fifo\":\"",
			 u->ier, u->lcr, u->divisor, u->regs[0], u->regs[1], u->regs[2], u->regs[3]);
	for (int i = 0; i < 16; i++)
		n += snprintf(expect + n, sizeof(expect) - n, "%02x", u->fifo[i]);
	snprintf(expect + n, sizeof(expect) - n,
		 "\",\"irq\":%s,\"delta\":-5,\"big\":\"0x8000000000000001\",\"scratch\":%u}",
		 u->irq ? "true" : "false", u->scratch);
	if (strcmp(out, expect) != 0)
		FAIL("decoded\n  %s\nexpected\n  %s", out, expect);
	free(out);

	CHECK_ERR(gw_vmdesc_decode(vmdesc, vlen, "uart", 7, data, len, &out, &err), -ENOENT, &err,
		  "VMDESC does not describe section 'uart' instance 7");
	CHECK_ERR(gw_vmdesc_decode(vmdesc, vlen, "blob", 0, data, len, &out, &err), -ENOTSUP, &err,
		  "section 'blob' instance 0 has opaque data");
	CHECK_ERR(gw_vmdesc_decode(vmdesc, vlen, "uart", 1, data, len - 1, &out, &err), -EBADMSG,
		  &err, "section 'uart' instance 1: field 'scratch' needs 1 x 4 bytes but only 3");
	CHECK_ERR(gw_vmdesc_decode(vmdesc, vlen, "uart", 1, data, len + 1, &out, &err), -EBADMSG,
		  &err, "1 of 58 bytes of data are not described");
	CHECK_ERR(gw_vmdesc_decode(vmdesc, vlen - 1, "uart", 1, data, len, &out, &err), -EBADMSG,
		  &err, "VMDESC is not valid JSON");
	free(vmdesc);
	free(data);
	free(s.p);
	test_vm_free(&src);
}

/* A description from a newer writer: unknown types are shown as raw bytes. */
static void test_decode_unknown_type(void)
{
	static const char desc[] =
		"{\"sections\":[{\"name\":\"d\",\"instance\":0,\"fields\":["
		"{\"name\":\"f\",\"type\":\"f128\",\"size\":16,\"count\":1},"
		"{\"name\":\"b\",\"type\":\"bool\",\"size\":1,\"count\":2},"
		"{\"name\":\"s\",\"type\":\"i16\",\"size\":2,\"count\":1}]}]}";
	static const char bad_size[] =
		"{\"sections\":[{\"name\":\"d\",\"instance\":0,\"fields\":["
		"{\"name\":\"s\",\"type\":\"i16\",\"size\":4,\"count\":1}]}]}";
	unsigned char data[20] = { 0xde, 0xad, [15] = 0xef, 1, 0, 0xfe, 0xff };
	struct gw_error err = { 0 };
	char *out;

	CHECK_OK(gw_vmdesc_decode(desc, sizeof(desc) - 1, "d", 0, data, 20, &out, &err), &err);
	if (strcmp(out, "{\"f\":\"dead00000000000000000000000000ef\",\"b\":[true,false],\"s\":-2}"))
		FAIL("decoded %s", out);
	free(out);
	data[16] = 2;
	CHECK_ERR(gw_vmdesc_decode(desc, sizeof(desc) - 1, "d", 0, data, 20, &out, &err), -EBADMSG,
		  &err, "field 'b': value does not decode as bool");
	CHECK_ERR(gw_vmdesc_decode(bad_size, sizeof(bad_size) - 1, "d", 0, data, 4, &out, &err),
		  -EBADMSG, &err, "VMDESC: field 0 is malformed");
}

/* Loading refuses a bool that is neither 0 nor 1 (the stream is CRC-correct: a writer bug). */
static int bool_save(void *opaque, struct gw_wbuf *out, struct gw_error *err)
{
	(void)opaque, (void)err;
	gw_put_u32(out, 1);
	return gw_put_u8(out, 2);
}

static int unused_load(void *opaque, struct gw_rbuf *in, uint32_t version, struct gw_error *err)
{
	(void)opaque, (void)in, (void)version, (void)err;
	return -ENOTSUP;
}

struct flag_state {
	uint32_t n;
	bool on;
};

static void test_bad_bool(void)
{
	static const struct gw_field fields[] = {
		GW_FIELD(U32, struct flag_state, n),
		GW_FIELD(BOOL, struct flag_state, on),
	};
	static const struct gw_vmstate vs = GW_VMSTATE(struct flag_state, fields);
	static const struct gw_machine mc = { "t", "1", "m", 1 };
	struct flag_state st = { 0 };
	struct gw_section writer = { .name = "flag", .version = 1, .min_version = 1,
				     .save = bool_save, .load = unused_load };
	struct gw_section reader = { .name = "flag", .version = 1, .min_version = 1,
				     .vmstate = &vs, .opaque = &st };
	struct gw_migration *src, *dst;
	struct gw_error err = { 0 };
	struct gw_writer *w;
	struct test_buf s;
	int fd = test_memfd(NULL, 0);

	CHECK_OK(gw_migration_new(&mc, &src, &err), &err);
	CHECK_OK(gw_migration_new(&mc, &dst, &err), &err);
	CHECK_OK(gw_migration_add_section(src, &writer, &err), &err);
	CHECK_OK(gw_migration_add_section(dst, &reader, &err), &err);
	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(src, w, &err), &err);
	CHECK_OK(gw_save_devices(src, w, &err), &err);
	CHECK_OK(gw_save_finish(src, w, &err), &err);
	gw_writer_free(w);
	test_slurp(fd, &s);
	CHECK_ERR(test_load(dst, s.p, s.len, &err), -EBADMSG, &err,
		  "section 'flag' instance 0", "field 'on'[0]: bool value 2 is neither 0 nor 1");
	free(s.p);
	close(fd);
	gw_migration_free(src);
	gw_migration_free(dst);
}

int main(void)
{
	CHECK(strcmp(gw_field_type_name(GW_FIELD_I64), "i64") == 0);
	CHECK(gw_field_type_name(0) == NULL && gw_field_type_name(1000) == NULL);
	test_decode();
	test_decode_unknown_type();
	test_bad_bool();
	printf("vmstate: all tests passed\n");
	return 0;
}
