/*
 * The device-facing buffers: little-endian round trips, sticky errors,
 * and the record limit.
 */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "lib/internal.h"

int main(void)
{
	struct gw_wbuf w;
	struct gw_rbuf r;
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	char bytes[5];
	static const char filler[64];

	gw_wbuf_init(&w, 64);
	CHECK(gw_put_u8(&w, 0x12) == 0);
	CHECK(gw_put_u16(&w, 0x3456) == 0);
	CHECK(gw_put_u32(&w, 0x789abcde) == 0);
	CHECK(gw_put_u64(&w, 0x0102030405060708ull) == 0);
	CHECK(gw_put_bytes(&w, "hello", 5) == 0);
	CHECK(gw_put_bytes(&w, NULL, 0) == 0);
	CHECK(w.len == 1 + 2 + 4 + 8 + 5);
	/* Little-endian on the wire whatever the host. */
	CHECK(memcmp(w.data, "\x12\x56\x34\xde\xbc\x9a\x78\x08\x07\x06\x05\x04\x03\x02\x01hello",
		     w.len) == 0);

	gw_rbuf_init(&r, w.data, w.len);
	CHECK(gw_rbuf_remaining(&r) == 20);
	CHECK(gw_get_u8(&r, &u8) == 0 && u8 == 0x12);
	CHECK(gw_get_u16(&r, &u16) == 0 && u16 == 0x3456);
	CHECK(gw_get_u32(&r, &u32) == 0 && u32 == 0x789abcde);
	CHECK(gw_get_u64(&r, &u64) == 0 && u64 == 0x0102030405060708ull);
	CHECK(gw_get_bytes(&r, bytes, 5) == 0 && memcmp(bytes, "hello", 5) == 0);
	CHECK(gw_rbuf_remaining(&r) == 0);
	/* Reading past the end fails, zero-fills, and keeps failing. */
	u32 = 7;
	CHECK(gw_get_u32(&r, &u32) == -EBADMSG && u32 == 0);
	gw_rbuf_init(&r, w.data, w.len);
	CHECK(gw_get_bytes(&r, bytes, 5) == 0);
	CHECK(gw_get_u64(&r, &u64) == 0);
	CHECK(gw_get_u64(&r, &u64) == -EBADMSG && u64 == 0);
	CHECK(gw_get_u8(&r, &u8) == -EBADMSG && u8 == 0);
	CHECK(gw_rbuf_remaining(&r) == 0);

	/* The limit of a record: the write that crosses it fails, and later ones. */
	CHECK(gw_put_bytes(&w, filler, 64 - w.len) == 0);
	CHECK(w.len == 64);
	CHECK(gw_put_u8(&w, 1) == -EMSGSIZE);
	CHECK(gw_put_bytes(&w, NULL, 0) == -EMSGSIZE);
	CHECK(w.len == 64);
	gw_wbuf_reset(&w);
	CHECK(w.len == 0 && w.error == 0 && gw_put_u8(&w, 1) == 0);
	gw_wbuf_release(&w);
	CHECK(w.data == NULL && w.limit == 64);
	printf("payload: all tests passed\n");
	return 0;
}
