/*
 * Framing of a godwit stream: the stream header and the record header
 * (docs/format.md). Everything that reads a stream — the loader, the
 * walker — goes through gw_record_read_header(), so the rules that keep a
 * corrupted length from being trusted live in one place.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/format.h>

#include "lib/crc32c.h"
#include "lib/internal.h"

const char *gw_record_type_name(uint16_t type)
{
	switch (type) {
	case GW_REC_CONFIG:
		return "CONFIG";
	case GW_REC_SECTION_START:
		return "SECTION_START";
	case GW_REC_SECTION_PART:
		return "SECTION_PART";
	case GW_REC_SECTION_END:
		return "SECTION_END";
	case GW_REC_SECTION_FULL:
		return "SECTION_FULL";
	case GW_REC_RAM_PAGES:
		return "RAM_PAGES";
	case GW_REC_VMDESC:
		return "VMDESC";
	case GW_REC_EOF:
		return "EOF";
	case GW_REC_CPR:
		return "CPR";
	case GW_REC_PAUSE:
		return "PAUSE";
	case GW_REC_MULTIFD:
		return "MULTIFD";
	case GW_REC_MULTIFD_SYNC:
		return "MULTIFD_SYNC";
	case GW_REC_POSTCOPY:
		return "POSTCOPY";
	}
	return "unknown";
}

uint64_t gw_record_max(uint16_t type)
{
	switch (type) {
	case GW_REC_CONFIG:
		return GW_CONFIG_MAX;
	case GW_REC_SECTION_START:
	case GW_REC_SECTION_PART:
	case GW_REC_SECTION_END:
	case GW_REC_SECTION_FULL:
		return GW_SECTION_RECORD_MAX;
	case GW_REC_RAM_PAGES:
		return GW_PAGES_RECORD_MAX;
	case GW_REC_VMDESC:
		return GW_VMDESC_MAX;
	case GW_REC_EOF:
		return 0;
	case GW_REC_CPR:
		return GW_CPR_MAX;
	case GW_REC_PAUSE:
		return 8;
	case GW_REC_MULTIFD:
		return GW_MULTIFD_SIZE;
	case GW_REC_MULTIFD_SYNC:
		return 8;
	case GW_REC_POSTCOPY:
		return GW_POSTCOPY_MAX;
	}
	return GW_RECORD_MAX_UNKNOWN;
}

int gw_stream_put_header(struct gw_writer *w, uint32_t flags, struct gw_error *err)
{
	unsigned char h[GW_STREAM_HEADER_SIZE];

	memcpy(h, GW_STREAM_MAGIC, GW_STREAM_MAGIC_LEN);
	gw_le32(h + 8, GW_FORMAT_VERSION);
	gw_le32(h + 12, flags);
	return gw_writer_write(w, h, sizeof(h), err);
}

int gw_stream_get_header(struct gw_reader *r, uint32_t *flags_out, struct gw_error *err)
{
	unsigned char h[GW_STREAM_HEADER_SIZE];
	uint32_t version, flags;
	int ret;

	ret = gw_reader_read(r, h, sizeof(h), err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "stream header: ");
	if (memcmp(h, GW_STREAM_MAGIC, GW_STREAM_MAGIC_LEN) != 0)
		return gw_error_set(err, -EPROTO,
				    "not a godwit stream: magic %02x %02x %02x %02x %02x %02x %02x %02x, expected 89 47 4f 44 57 49 54 0a",
				    h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
	version = gw_get_le32(h + 8);
	if (version != GW_FORMAT_VERSION)
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "stream format version %u is not supported: this reader supports version %u",
				    version, GW_FORMAT_VERSION);
	flags = gw_get_le32(h + 12);
	if (flags & ~GW_HDRF_KNOWN)
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "stream header flags 0x%x are not supported by this reader",
				    flags);
	*flags_out = flags;
	return 0;
}

static void encode_header(unsigned char h[GW_RECORD_HEADER_SIZE], uint16_t type, uint16_t flags,
			  uint64_t length, uint32_t payload_crc)
{
	gw_le16(h, type);
	gw_le16(h + 2, flags);
	gw_le32(h + 4, 0);
	gw_le64(h + 8, length);
	gw_le32(h + 16, payload_crc);
	gw_le32(h + 20, gw_crc32c(0, h, 20));
}

int gw_record_writev(struct gw_writer *w, uint16_t type, uint16_t flags, uint32_t payload_crc,
		     const struct iovec *iov, int iovcnt, struct gw_error *err)
{
	unsigned char h[GW_RECORD_HEADER_SIZE];
	uint64_t length = 0;
	int ret;

	for (int i = 0; i < iovcnt; i++)
		length += iov[i].iov_len;
	/* A writer over the bound is a library bug; readers would reject the stream. */
	if (length > gw_record_max(type))
		return gw_error_set(err, -EMSGSIZE,
				    "%s record of %llu bytes exceeds the %llu-byte limit of its type",
				    gw_record_type_name(type), (unsigned long long)length,
				    (unsigned long long)gw_record_max(type));
	encode_header(h, type, flags, length, payload_crc);
	ret = gw_writer_write(w, h, sizeof(h), err);
	if (ret < 0)
		return ret;
	return gw_writer_writev(w, iov, iovcnt, err);
}

int gw_record_write(struct gw_writer *w, uint16_t type, uint16_t flags, const void *p, size_t len,
		    struct gw_error *err)
{
	struct iovec v = {(void *)p, len};

	return gw_record_writev(w, type, flags, gw_crc32c(0, p, len), &v, 1, err);
}

int gw_record_read_header(struct gw_reader *r, struct gw_rec_hdr *h, struct gw_error *err)
{
	unsigned char b[GW_RECORD_HEADER_SIZE];
	uint32_t want, got;
	uint64_t max;
	int ret;

	h->offset = gw_reader_offset(r);
	ret = gw_reader_read(r, b, sizeof(b), err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "record header at offset %llu: ",
				       (unsigned long long)h->offset);
	want = gw_get_le32(b + 20);
	got = gw_crc32c(0, b, 20);
	if (want != got)
		return gw_error_set(err, -EBADMSG,
				    "corrupted record header at offset %llu (header CRC 0x%08x, computed 0x%08x)",
				    (unsigned long long)h->offset, want, got);
	h->type = gw_get_le16(b);
	h->flags = gw_get_le16(b + 2);
	h->length = gw_get_le64(b + 8);
	h->payload_crc = gw_get_le32(b + 16);
	if ((h->flags & ~GW_RECF_KNOWN) || gw_get_le32(b + 4) != 0)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: reserved bits set (flags 0x%04x, reserved 0x%08x)",
				    gw_record_type_name(h->type), (unsigned long long)h->offset,
				    h->flags, gw_get_le32(b + 4));
	if ((h->flags & GW_RECF_DATA_CRC) && h->type != GW_REC_RAM_PAGES)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: DATA_CRC flag on a record without page data",
				    gw_record_type_name(h->type), (unsigned long long)h->offset);
	max = gw_record_max(h->type);
	if (h->length > max)
		return gw_error_set(err, -EBADMSG,
				    "%s record (type 0x%04x) at offset %llu: length %llu exceeds the limit of %llu bytes",
				    gw_record_type_name(h->type), h->type,
				    (unsigned long long)h->offset, (unsigned long long)h->length,
				    (unsigned long long)max);
	return 0;
}

int gw_record_read_payload(struct gw_reader *r, const struct gw_rec_hdr *h, unsigned char **buf,
			   size_t *cap, struct gw_error *err)
{
	int ret;

	/* h->length is bounded by gw_record_read_header(), so this is bounded too. */
	if (h->length > *cap) {
		unsigned char *p = realloc(*buf, h->length);

		if (!p)
			return gw_error_set(err, -ENOMEM,
					    "%s record at offset %llu: out of memory for %llu bytes",
					    gw_record_type_name(h->type),
					    (unsigned long long)h->offset,
					    (unsigned long long)h->length);
		*buf = p;
		*cap = h->length;
	}
	ret = gw_reader_read(r, *buf, h->length, err);
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "%s record at offset %llu: ", gw_record_type_name(h->type),
				       (unsigned long long)h->offset);
	return 0;
}

int gw_record_drain(struct gw_reader *r, const struct gw_rec_hdr *h, uint64_t len, uint32_t *crc,
		    struct gw_error *err)
{
	unsigned char chunk[16384];
	uint64_t left = len;

	*crc = 0;
	while (left) {
		size_t n = left < sizeof(chunk) ? left : sizeof(chunk);
		int ret = gw_reader_read(r, chunk, n, err);

		if (ret < 0)
			return gw_error_prefix(err, ret, "%s record at offset %llu: ",
					       gw_record_type_name(h->type),
					       (unsigned long long)h->offset);
		*crc = gw_crc32c(*crc, chunk, n);
		left -= n;
	}
	return 0;
}

int gw_record_check_crc(const struct gw_rec_hdr *h, uint32_t computed, struct gw_error *err)
{
	if (computed == h->payload_crc)
		return 0;
	return gw_error_set(err, -EBADMSG,
			    "corrupted %s record at offset %llu (payload CRC 0x%08x, computed 0x%08x)",
			    gw_record_type_name(h->type), (unsigned long long)h->offset,
			    h->payload_crc, computed);
}
