/*
 * What a device sees of the stream: it writes its state into a gw_wbuf in
 * its save callback and reads it back from a gw_rbuf in its load callback.
 * Framing, section headers, checksums and the transport stay in the
 * library. Integers are stored little-endian whatever the host.
 *
 * Both buffers belong to the library and are valid only during the
 * callback they are passed to.
 *
 * Errors are sticky so a callback can write or read a run of fields and
 * look at one result: after the first failure every call fails the same
 * way (gets fill their output with zeroes), and the library reports the
 * failure with the section's name when the callback returns, even if the
 * callback ignored it. Devices that prefer to stop early check each return.
 */
#ifndef GODWIT_PAYLOAD_H
#define GODWIT_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_wbuf;
struct gw_rbuf;

/* 0, or -ENOMEM, or -EMSGSIZE when the record limit would be exceeded. */
GW_API int gw_put_u8(struct gw_wbuf *b, uint8_t v);
GW_API int gw_put_u16(struct gw_wbuf *b, uint16_t v);
GW_API int gw_put_u32(struct gw_wbuf *b, uint32_t v);
GW_API int gw_put_u64(struct gw_wbuf *b, uint64_t v);
GW_API int gw_put_bytes(struct gw_wbuf *b, const void *p, size_t n);

/* 0, or -EBADMSG when the data is shorter than what is asked for. */
GW_API int gw_get_u8(struct gw_rbuf *b, uint8_t *v);
GW_API int gw_get_u16(struct gw_rbuf *b, uint16_t *v);
GW_API int gw_get_u32(struct gw_rbuf *b, uint32_t *v);
GW_API int gw_get_u64(struct gw_rbuf *b, uint64_t *v);
GW_API int gw_get_bytes(struct gw_rbuf *b, void *p, size_t n);

/* Bytes not read yet: for variable-length state ("read entries until none left"). */
GW_API size_t gw_rbuf_remaining(const struct gw_rbuf *b);

#ifdef __cplusplus
}
#endif

#endif
