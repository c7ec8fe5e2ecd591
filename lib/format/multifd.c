/*
 * multifd records (multifd.h).
 */
#include <errno.h>
#include <string.h>

#include <godwit/stream.h>

#include "lib/format/multifd.h"
#include "lib/internal.h"

int gw_multifd_put_hello(struct gw_writer *w, const struct gw_multifd_hello *h,
			 struct gw_error *err)
{
	unsigned char p[GW_MULTIFD_SIZE];

	gw_le32(p, h->channels);
	gw_le32(p + 4, h->index);
	memcpy(p + 8, h->id, GW_MULTIFD_ID_SIZE);
	return gw_record_write(w, GW_REC_MULTIFD, 0, p, sizeof(p), err);
}

int gw_multifd_put_sync(struct gw_writer *w, uint64_t round, struct gw_error *err)
{
	unsigned char p[8];

	gw_le64(p, round);
	return gw_record_write(w, GW_REC_MULTIFD_SYNC, 0, p, sizeof(p), err);
}

int gw_multifd_parse_hello(const unsigned char *p, uint64_t len, struct gw_multifd_hello *h,
			   const char *what, uint64_t offset, struct gw_error *err)
{
	if (len != GW_MULTIFD_SIZE)
		return gw_error_set(err, -EBADMSG,
				    "%s: MULTIFD record at offset %llu: %llu bytes, not %u", what,
				    (unsigned long long)offset, (unsigned long long)len,
				    GW_MULTIFD_SIZE);
	h->channels = gw_get_le32(p);
	h->index = gw_get_le32(p + 4);
	memcpy(h->id, p + 8, GW_MULTIFD_ID_SIZE);
	if (h->channels == 0 || h->channels > GW_MULTIFD_MAX_CHANNELS)
		return gw_error_set(err, -EBADMSG,
				    "%s: MULTIFD record at offset %llu: %u channels, not 1 to %u",
				    what, (unsigned long long)offset, h->channels,
				    GW_MULTIFD_MAX_CHANNELS);
	if (h->index != GW_MULTIFD_MAIN && h->index >= h->channels)
		return gw_error_set(err, -EBADMSG,
				    "%s: MULTIFD record at offset %llu: channel index %u of %u channels",
				    what, (unsigned long long)offset, h->index, h->channels);
	return 0;
}
