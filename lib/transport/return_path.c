/*
 * The return-path report (return_path.h, docs/format.md "Return path").
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/crc32c.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

const char *gw_report_name(enum gw_report_status s)
{
	switch (s) {
	case GW_REPORT_RUNNING:
		return "RUNNING";
	case GW_REPORT_FAILED:
		return "FAILED";
	case GW_REPORT_READY:
		return "READY";
	case GW_REPORT_GO:
		return "GO";
	case GW_REPORT_ADOPTED:
		return "ADOPTED";
	case GW_REPORT_REQUEST:
		return "REQUEST";
	case GW_REPORT_RESUME:
		return "RESUME";
	case GW_REPORT_DISCARDED:
		return "DISCARDED";
	}
	return "unknown";
}

size_t gw_report_encode(const struct gw_report *r, unsigned char *buf)
{
	bool failed = r->status == GW_REPORT_FAILED;
	/* A RUNNING may say when the guest resumed (gw_report_time_ns):
	 * digits only, anything else is not sent. */
	size_t n = failed ? strnlen(r->msg, GW_REPORT_MSG_MAX) : 0;

	if (r->status == GW_REPORT_RUNNING) {
		n = strnlen(r->msg, GW_REPORT_TIME_MAX);
		for (size_t i = 0; i < n; i++)
			if (r->msg[i] < '0' || r->msg[i] > '9')
				n = 0;
	}

	memcpy(buf, GW_REPORT_MAGIC, GW_REPORT_MAGIC_LEN);
	gw_le32(buf + 8, GW_REPORT_VERSION);
	gw_le32(buf + 12, r->status);
	/* A failure always has a code, so "failed" cannot read as anything else. */
	gw_le32(buf + 16, !failed ? 0 : r->code < 0 && r->code > -4096 ? (uint32_t)-r->code : EIO);
	if (r->status == GW_REPORT_REQUEST) {
		/* Binary, fixed size: the one body that is not text. */
		n = GW_PAGE_REQUEST_SIZE;
		gw_le32(buf + GW_REPORT_HEAD_SIZE, r->req.block);
		gw_le32(buf + GW_REPORT_HEAD_SIZE + 4, r->req.count);
		gw_le64(buf + GW_REPORT_HEAD_SIZE + 8, r->req.first);
	} else if (r->status == GW_REPORT_RESUME) {
		n = GW_RESUME_SIZE;
		gw_le64(buf + GW_REPORT_HEAD_SIZE, r->fingerprint);
	}
	gw_le32(buf + 20, (uint32_t)n);
	/* The text goes out printable whatever a callback put in it. */
	for (size_t i = 0; i < n && r->status != GW_REPORT_REQUEST && r->status != GW_REPORT_RESUME;
	     i++) {
		unsigned char ch = (unsigned char)r->msg[i];

		buf[GW_REPORT_HEAD_SIZE + i] = ch >= 0x20 && ch <= 0x7e ? ch : '?';
	}
	gw_le32(buf + GW_REPORT_HEAD_SIZE + n, gw_crc32c(0, buf, GW_REPORT_HEAD_SIZE + n));
	return GW_REPORT_HEAD_SIZE + n + 4;
}

/* Check the fixed head; on success *msg_len is the text length. */
static int check_head(const unsigned char *h, uint32_t *msg_len, struct gw_error *err)
{
	uint32_t version = gw_get_le32(h + 8);
	uint32_t status = gw_get_le32(h + 12);
	uint32_t code = gw_get_le32(h + 16);

	*msg_len = gw_get_le32(h + 20);
	if (memcmp(h, GW_REPORT_MAGIC, GW_REPORT_MAGIC_LEN) != 0)
		return gw_error_set(err, -EBADMSG,
				    "return path: garbage instead of a handshake message (magic %02x %02x %02x %02x %02x %02x %02x %02x)",
				    h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
	if (version != GW_REPORT_VERSION)
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "return path: handshake version %u is not supported (this side speaks version %u)",
				    version, GW_REPORT_VERSION);
	if (status > GW_REPORT_DISCARDED ||
	    (status == GW_REPORT_FAILED ? code == 0 || code > 4095 || *msg_len > GW_REPORT_MSG_MAX :
	     status == GW_REPORT_RUNNING ? code != 0 || *msg_len > GW_REPORT_TIME_MAX :
	     status == GW_REPORT_REQUEST ? code != 0 || *msg_len != GW_PAGE_REQUEST_SIZE :
	     status == GW_REPORT_RESUME  ? code != 0 || *msg_len != GW_RESUME_SIZE :
					   code != 0 || *msg_len != 0))
		return gw_error_set(err, -EBADMSG,
				    "return path: malformed message (status %u, code %u, %u bytes of text)",
				    status, code, *msg_len);
	return 0;
}

int gw_report_decode(const unsigned char *buf, size_t len, struct gw_report *r,
		     struct gw_error *err)
{
	uint32_t n, crc;
	int ret;

	if (len < GW_REPORT_HEAD_SIZE + 4)
		return gw_error_set(err, -EBADMSG, "return path: a %zu-byte report is too short",
				    len);
	ret = check_head(buf, &n, err);
	if (ret < 0)
		return ret;
	if (len != GW_REPORT_HEAD_SIZE + n + 4)
		return gw_error_set(err, -EBADMSG,
				    "return path: report of %zu bytes, its header says %u", len,
				    GW_REPORT_HEAD_SIZE + n + 4);
	crc = gw_crc32c(0, buf, GW_REPORT_HEAD_SIZE + n);
	if (crc != gw_get_le32(buf + GW_REPORT_HEAD_SIZE + n))
		return gw_error_set(err, -EBADMSG,
				    "return path: corrupted report (CRC 0x%08x, computed 0x%08x)",
				    gw_get_le32(buf + GW_REPORT_HEAD_SIZE + n), crc);
	r->status = (enum gw_report_status)gw_get_le32(buf + 12);
	if (r->status == GW_REPORT_REQUEST) {
		r->code = 0;
		r->msg[0] = '\0';
		r->req.block = gw_get_le32(buf + GW_REPORT_HEAD_SIZE);
		r->req.count = gw_get_le32(buf + GW_REPORT_HEAD_SIZE + 4);
		r->req.first = gw_get_le64(buf + GW_REPORT_HEAD_SIZE + 8);
		return 0;
	}
	if (r->status == GW_REPORT_RESUME) {
		r->code = 0;
		r->msg[0] = '\0';
		r->fingerprint = gw_get_le64(buf + GW_REPORT_HEAD_SIZE);
		return 0;
	}
	for (uint32_t i = 0; i < n; i++)
		if (buf[GW_REPORT_HEAD_SIZE + i] < 0x20 || buf[GW_REPORT_HEAD_SIZE + i] > 0x7e)
			return gw_error_set(err, -EBADMSG,
					    "return path: report text has an unprintable byte 0x%02x",
					    buf[GW_REPORT_HEAD_SIZE + i]);
	for (uint32_t i = 0; i < n && gw_get_le32(buf + 12) == GW_REPORT_RUNNING; i++)
		if (buf[GW_REPORT_HEAD_SIZE + i] < '0' || buf[GW_REPORT_HEAD_SIZE + i] > '9')
			return gw_error_set(err, -EBADMSG,
					    "return path: RUNNING with a time that is not decimal digits");
	r->status = (enum gw_report_status)gw_get_le32(buf + 12);
	r->code = -(int)gw_get_le32(buf + 16);
	memcpy(r->msg, buf + GW_REPORT_HEAD_SIZE, n);
	r->msg[n] = '\0';
	return 0;
}

int gw_report_send(struct gw_cancel *c, int timeout_ms, const struct gw_report *r,
		   struct gw_error *err)
{
	unsigned char buf[GW_REPORT_MAX];
	size_t len = gw_report_encode(r, buf), done = 0;
	uint64_t deadline = gw_now_ns() + (uint64_t)timeout_ms * 1000000;

	while (done < len) {
		/* Never asleep in send(): a peer that stopped reading must not
		 * hold us past a cancel or the deadline. */
		ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
		uint64_t now;
		int ready;

		/* Not a socket: a plain write (a pipe pair, in tests). */
		if (n < 0 && errno == ENOTSOCK)
			n = write(c->fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			now = gw_now_ns();
			ready = now >= deadline ?
					0 :
					gw_cancel_poll(c, POLLOUT,
						       (int)((deadline - now + 999999) / 1000000));
			if (ready > 0)
				continue;
			errno = ready == 0 ? ETIMEDOUT : -ready;
		}
		if (n <= 0)
			return gw_error_set(err, n < 0 ? -errno : -EIO,
					    "return path: cannot send %s: %s",
					    gw_report_name(r->status),
					    gw_strerror(n < 0 ? errno : EIO));
		done += (size_t)n;
	}
	return 0;
}

/* Read exactly len bytes before the deadline. */
static int read_full(struct gw_cancel *c, unsigned char *buf, size_t len, uint64_t deadline,
		     int timeout_ms, const char *what, struct gw_error *err)
{
	size_t done = 0;

	while (done < len) {
		uint64_t now = gw_now_ns();
		int ret = now >= deadline ?
				  0 :
				  gw_cancel_poll(c, POLLIN,
						 (int)((deadline - now + 999999) / 1000000));
		ssize_t n;

		if (ret == -ECANCELED)
			return gw_error_set(err, ret, "cancelled while waiting for %s", what);
		if (ret < 0)
			return gw_error_set(err, ret, "return path: poll: %s", gw_strerror(ret));
		if (ret == 0)
			return gw_error_set(err, -ETIMEDOUT,
					    "return path: %s did not arrive within %d ms", what,
					    timeout_ms);
		n = read(c->fd, buf + done, len - done);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return gw_error_set(err, -errno, "return path: read failed: %s",
					    gw_strerror(errno));
		if (n == 0)
			return gw_error_set(err, -EPIPE,
					    "the peer closed the connection instead of sending %s (%s)",
					    what,
					    done ? "in the middle of the message" :
						   "it may have crashed, been killed or given up");
		done += (size_t)n;
	}
	return 0;
}

int gw_report_recv(struct gw_cancel *c, int timeout_ms, const char *what, struct gw_report *r,
		   struct gw_error *err)
{
	unsigned char buf[GW_REPORT_MAX];
	uint64_t deadline = gw_now_ns() + (uint64_t)timeout_ms * 1000000;
	uint32_t n;
	int ret;

	ret = read_full(c, buf, GW_REPORT_HEAD_SIZE, deadline, timeout_ms, what, err);
	if (ret == 0)
		ret = check_head(buf, &n, err);
	if (ret == 0)
		ret = read_full(c, buf + GW_REPORT_HEAD_SIZE, n + 4, deadline, timeout_ms, what,
				err);
	if (ret == 0)
		ret = gw_report_decode(buf, GW_REPORT_HEAD_SIZE + n + 4, r, err);
	return ret;
}

uint64_t gw_report_time_ns(const struct gw_report *r)
{
	return r->status == GW_REPORT_RUNNING && r->msg[0] ? strtoull(r->msg, NULL, 10) : 0;
}
