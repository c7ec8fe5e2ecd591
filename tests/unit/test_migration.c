/*
 * Registration on the migration object: everything that cannot be saved
 * or loaded correctly is refused at registration with -EINVAL and a
 * message naming it, and a refused registration changes nothing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lib/internal.h"

static unsigned char ram[4 * GW_PAGE_SIZE] __attribute__((aligned(4096)));

struct st {
	uint32_t a;
	uint8_t b[6];
	uint16_t c;
};

static int save_cb(void *o, struct gw_wbuf *out, struct gw_error *err)
{
	(void)o, (void)out, (void)err;
	return 0;
}

static int load_cb(void *o, struct gw_rbuf *in, uint32_t v, struct gw_error *err)
{
	(void)o, (void)in, (void)v, (void)err;
	return 0;
}

static int save_live_cb(void *o, enum gw_phase p, struct gw_wbuf *out, struct gw_error *err)
{
	(void)o, (void)p, (void)out, (void)err;
	return 0;
}

static int load_live_cb(void *o, enum gw_phase p, struct gw_rbuf *in, uint32_t v,
			struct gw_error *err)
{
	(void)o, (void)p, (void)in, (void)v, (void)err;
	return 0;
}

static int vm_cb(void *o, struct gw_error *err)
{
	(void)o, (void)err;
	return 0;
}

static void test_machine(void)
{
	struct gw_error err = { 0 };
	struct gw_migration *m = NULL;
	char long_text[300];

	memset(long_text, 'x', sizeof(long_text) - 1);
	long_text[sizeof(long_text) - 1] = '\0';
	CHECK_ERR(gw_migration_new(NULL, &m, &err), -EINVAL, &err, "no machine description");
	CHECK_ERR(gw_migration_new(&((struct gw_machine){ "v", "1", "m", 0 }), &m, &err),
		  -EINVAL, &err, "at least one vCPU");
	CHECK_ERR(gw_migration_new(&((struct gw_machine){ NULL, "1", "m", 1 }), &m, &err),
		  -EINVAL, &err, "VMM name is missing");
	CHECK_ERR(gw_migration_new(&((struct gw_machine){ "v", "1\n", "m", 1 }), &m, &err),
		  -EINVAL, &err, "VMM version '1", "printable ASCII");
	CHECK_ERR(gw_migration_new(&((struct gw_machine){ "v", "1", long_text, 1 }), &m, &err),
		  -EINVAL, &err, "machine 'xxxx", "at most 255");
	CHECK(m == NULL);
	/* Spaces are fine in these strings, and empty ones too. */
	CHECK_OK(gw_migration_new(&((struct gw_machine){ "godwit vmm", "", "pc", 1 }), &m, &err),
		 &err);
	gw_migration_free(m);
	gw_migration_free(NULL);
}

static void test_ram(struct gw_migration *m)
{
	struct gw_error err = { 0 };
	struct gw_ram ok = { "pc.ram", ram, 2 * GW_PAGE_SIZE, -1, 0, 0 };
	struct gw_ram r;
	char long_name[300];

	CHECK_ERR(gw_migration_add_ram(m, NULL, &err), -EINVAL, &err, "no description");
	r = ok, r.name = NULL;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "RAM block has no name");
	r = ok, r.name = "";
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "RAM block name '' is invalid");
	r = ok, r.name = "pc ram";
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "name 'pc ram' is invalid",
		  "without spaces");
	memset(long_name, 'n', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	r = ok, r.name = long_name;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "1 to 255");
	long_name[255] = '\0';
	r = ok, r.name = long_name, r.gpa = GW_GPA_NONE;
	CHECK_OK(gw_migration_add_ram(m, &r, &err), &err); /* 255 is the limit, inclusive */
	r = ok, r.host = NULL;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err,
		  "RAM block 'pc.ram': host address", "not page-aligned");
	r = ok, r.host = ram + 8;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "not page-aligned");
	r = ok, r.size = 0;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err,
		  "RAM block 'pc.ram': size 0 is not a non-zero multiple of 4096");
	r = ok, r.size = GW_PAGE_SIZE + 1;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "size 4097 is not");
	r = ok, r.fd = -7;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "invalid fd -7");
	r = ok, r.fd_offset = 512;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "fd offset 0x200 is not page-aligned");
	r = ok, r.gpa = 0x1234;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "guest address 0x1234");
	r = ok, r.gpa = 0xfffffffffffff000ull;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "wraps");
	CHECK_OK(gw_migration_add_ram(m, &ok, &err), &err);
	CHECK_ERR(gw_migration_add_ram(m, &ok, &err), -EINVAL, &err,
		  "RAM block 'pc.ram' is already registered");
	r = ok, r.name = "rom", r.gpa = GW_PAGE_SIZE;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err,
		  "RAM block 'rom' at 0x1000-0x2fff overlaps RAM block 'pc.ram' at 0x0-0x1fff");
	r.gpa = 2 * GW_PAGE_SIZE; /* adjacent is fine */
	CHECK_OK(gw_migration_add_ram(m, &r, &err), &err);
	CHECK(m->nr_ram == 3);

	/* The limit on the number of blocks. */
	for (unsigned i = m->nr_ram; i < GW_MAX_RAM_BLOCKS; i++) {
		char name[16];

		snprintf(name, sizeof(name), "b%u", i);
		r = ok, r.name = name, r.gpa = GW_GPA_NONE;
		CHECK_OK(gw_migration_add_ram(m, &r, &err), &err);
	}
	r = ok, r.name = "one.too.many", r.gpa = GW_GPA_NONE;
	CHECK_ERR(gw_migration_add_ram(m, &r, &err), -EINVAL, &err, "more than 256 blocks");
	CHECK(m->nr_ram == GW_MAX_RAM_BLOCKS);
}

static void test_sections(struct gw_migration *m)
{
	static const struct gw_field fields[] = {
		GW_FIELD(U32, struct st, a),
		GW_FIELD(BYTES, struct st, b),
		GW_FIELD_V(U16, struct st, c, 2),
	};
	static const struct gw_vmstate vs = GW_VMSTATE(struct st, fields);
	static const struct {
		struct gw_field f;
		const char *msg;
	} bad_fields[] = {
		{ { "x", GW_FIELD_U32, 0, 6, 0 }, "field 'x': size 6 is not a non-zero multiple of the 4-byte u32" },
		{ { "x", GW_FIELD_U16, 0, 0, 0 }, "field 'x': size 0" },
		{ { "x", GW_FIELD_U64, 8, 8, 0 }, "field 'x': bytes 8..15 lie outside the 12-byte state" },
		{ { "x", GW_FIELD_U8, 12, 1, 0 }, "outside the 12-byte state" },
		{ { "x", GW_FIELD_U8, 0, 1, 3 }, "field 'x' appears in version 3, after the section's version 2" },
		{ { "x", 99, 0, 1, 0 }, "field 'x': unknown type 99" },
		{ { "x y", GW_FIELD_U8, 0, 1, 0 }, "field name 'x y' is invalid" },
		{ { "c", GW_FIELD_U8, 0, 1, 0 }, "field 'c' is listed twice" },
	};
	struct st state;
	struct gw_error err = { 0 };
	struct gw_section ok = { .name = "dev", .version = 2, .min_version = 1,
				 .vmstate = &vs, .opaque = &state };
	struct gw_section s;

	CHECK_ERR(gw_migration_add_section(m, NULL, &err), -EINVAL, &err, "no description");
	s = ok, s.name = "dev\t";
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "section name 'dev");
	s = ok, s.version = 0;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err,
		  "section 'dev' instance 0: version 0 and min_version 1");
	s = ok, s.min_version = 0;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "min_version 0");
	s = ok, s.min_version = 3;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err,
		  "version 2 and min_version 3", "must not exceed version");
	s = ok, s.flags = 0x10;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "unknown flags 0x10");
	s = ok, s.vmstate = NULL;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err,
		  "set exactly one of vmstate, save/load or save_live/load_live (0 set)");
	s = ok, s.save = save_cb, s.load = load_cb;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "(2 set)");
	s = ok, s.vmstate = NULL, s.save = save_cb;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "save and load must be set together");
	s = ok, s.vmstate = NULL, s.load_live = load_live_cb;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err,
		  "save_live and load_live must be set together");
	for (size_t i = 0; i < sizeof(bad_fields) / sizeof(bad_fields[0]); i++) {
		struct gw_field f[3] = { fields[0], fields[2], bad_fields[i].f };
		struct gw_vmstate bad = { f, 3, sizeof(struct st) };

		s = ok, s.vmstate = &bad;
		CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err,
			  "section 'dev' instance 0: ", bad_fields[i].msg);
	}
	s = ok, s.vmstate = &(struct gw_vmstate){ NULL, 2, 4 };
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "2 fields but no table");
	CHECK(m->nr_sections == 0);

	CHECK_OK(gw_migration_add_section(m, &ok, &err), &err);
	CHECK_ERR(gw_migration_add_section(m, &ok, &err), -EINVAL, &err,
		  "section 'dev' instance 0 is already registered");
	s = ok, s.instance = 1;
	CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	s = ok, s.name = "hand", s.vmstate = NULL, s.save = save_cb, s.load = load_cb;
	CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	s = ok, s.name = "live", s.vmstate = NULL, s.save_live = save_live_cb,
	s.load_live = load_live_cb, s.flags = GW_SECTION_OPTIONAL;
	CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	/* The copy is the library's: the caller's name may go away. */
	char name[] = "temp";
	s = ok, s.name = name;
	CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	strcpy(name, "XXXX");
	CHECK(strcmp(m->sections[4].name, "temp") == 0);
	CHECK(m->nr_sections == 5);

	for (unsigned i = m->nr_sections; i < GW_MAX_SECTIONS; i++) {
		s = ok, s.instance = 100 + i;
		CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	}
	s = ok, s.instance = 99;
	CHECK_ERR(gw_migration_add_section(m, &s, &err), -EINVAL, &err, "more than 4096 sections");
}

static void test_vm_ops(struct gw_migration *m)
{
	struct gw_error err = { 0 };
	int opaque;

	CHECK_ERR(gw_migration_set_vm_ops(m, NULL, NULL, &err), -EINVAL, &err, "both callbacks");
	CHECK_ERR(gw_migration_set_vm_ops(m, &(struct gw_vm_ops){ vm_cb, NULL }, NULL, &err),
		  -EINVAL, &err, "both callbacks are required");
	CHECK_OK(gw_migration_set_vm_ops(m, &(struct gw_vm_ops){ vm_cb, vm_cb }, &opaque, &err),
		 &err);
	CHECK(m->vm_ops.pause == vm_cb && m->vm_opaque == &opaque);
}

int main(void)
{
	static const struct gw_machine mc = { "godwit-test", "0.1", "test", 1 };
	struct gw_error err = { 0 };
	struct gw_migration *m;

	test_machine();
	CHECK_OK(gw_migration_new(&mc, &m, &err), &err);
	test_ram(m);
	test_sections(m);
	test_vm_ops(m);
	gw_migration_free(m);
	printf("migration: all tests passed\n");
	return 0;
}
