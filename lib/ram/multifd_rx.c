/*
 * The destination of multifd (multifd_rx.h).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <godwit/io.h>
#include <godwit/stream.h>

#include "lib/cancel.h"
#include "lib/crc32c.h"
#include "lib/ram/multifd_rx.h"
#include "lib/format/multifd.h"
#include "lib/format/torn.h"
#include "lib/internal.h"

/* How often a wait for the channels looks at the cancel and the main
 * stream (a channel that never connects wakes nobody). */
#define WAIT_SLICE_MS 100

struct rx_chan {
	struct gw_multifd_rx *rx;
	struct gw_channel ch;
	struct gw_reader *r;
	pthread_t thread;
	struct gw_pages *pages;
	struct gw_torn torn;
	bool torn_ready;
	uint32_t index; /* from its MULTIFD record; GW_MULTIFD_MAIN until then */
	/* Under rx->lock: */
	uint64_t round;        /* the last MULTIFD_SYNC it passed */
	bool pages_since_sync; /* RAM_PAGES after that */
	bool eof;
	uint64_t eof_offset;
};

struct gw_multifd_rx {
	struct gw_migration *m;
	struct gw_cancel *cancel;
	int main_fd;
	uint64_t *received;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* From the main stream's MULTIFD record: */
	bool ready;
	struct gw_multifd_hello hello;
	uint32_t ram_map[GW_MAX_RAM_BLOCKS]; /* a copy: the loader's goes with it */
	uint32_t nr_ram;
	/* Every connection handed over, in order; by index once it said. */
	struct rx_chan *conns[GW_MULTIFD_MAX_CHANNELS];
	uint32_t nr_conns;
	struct rx_chan *by_index[GW_MULTIFD_MAX_CHANNELS];
	int error; /* the first failure */
	struct gw_error err;
	bool stopping;
};

/* The first failure is the one reported; lock held. The main stream's
 * loader may be waiting for its next record, which the source may not
 * send for a long time: its read ends now (the socket still carries our
 * report back), and it finds this reason (gw_multifd_rx_failure()). */
static int fail_locked(struct gw_multifd_rx *rx, int ret, const struct gw_error *err)
{
	if (!rx->error) {
		rx->error = ret;
		rx->err = *err;
		shutdown(rx->main_fd, SHUT_RD);
	}
	pthread_cond_broadcast(&rx->cond);
	return ret;
}

static int read_record(struct rx_chan *c, struct gw_rec_hdr *h, unsigned char *p, size_t cap,
		       struct gw_error *err)
{
	int ret = gw_record_read_header(c->r, h, err);

	if (ret < 0)
		return ret;
	if (h->length > cap)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: %llu bytes, at most %zu",
				    gw_record_type_name(h->type), (unsigned long long)h->offset,
				    (unsigned long long)h->length, cap);
	ret = gw_reader_read(c->r, p, h->length, err);
	if (ret < 0)
		return ret;
	return gw_record_check_crc(h, gw_crc32c(0, p, h->length), err);
}

/* One slice of a wait on rx->cond (lock held): a cancel or a hang-up
 * wakes nobody, so every wait looks again this often. */
static void wait_slice(struct gw_multifd_rx *rx)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_nsec += WAIT_SLICE_MS * 1000000l;
	if (t.tv_nsec >= 1000000000l) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000l;
	}
	pthread_cond_timedwait(&rx->cond, &rx->lock, &t);
}

/* The wait for the main stream's MULTIFD record, cancellable. */
static int wait_ready(struct gw_multifd_rx *rx, struct gw_error *err)
{
	while (!rx->ready && !rx->error && !rx->stopping) {
		if (gw_cancel_requested(rx->cancel))
			return gw_error_set(err, -ECANCELED, "cancelled");
		wait_slice(rx);
	}
	if (rx->stopping || rx->error)
		return gw_error_set(err, -ECANCELED, "the migration ended");
	return 0;
}

/* The channel's stream header and MULTIFD record: which channel it is. */
static int hello(struct rx_chan *c, struct gw_error *err)
{
	struct gw_multifd_rx *rx = c->rx;
	unsigned char p[GW_MULTIFD_SIZE];
	struct gw_multifd_hello h;
	struct gw_rec_hdr rh;
	uint32_t flags;
	int ret = gw_stream_get_header(c->r, &flags, err);

	if (ret == 0 && flags != GW_HDRF_CHANNEL)
		ret = gw_error_set(err, -EPROTO,
				   "a connection after the main stream that is not a multifd channel (stream header flags 0x%x)",
				   flags);
	if (ret == 0)
		ret = read_record(c, &rh, p, sizeof(p), err);
	if (ret == 0 && rh.type != GW_REC_MULTIFD)
		ret = gw_error_set(err, -EPROTO,
				   "a multifd channel must open with a MULTIFD record, not %s",
				   gw_record_type_name(rh.type));
	if (ret == 0)
		ret = gw_multifd_parse_hello(p, rh.length, &h, "multifd channel", rh.offset, err);
	if (ret == 0 && h.index == GW_MULTIFD_MAIN)
		ret = gw_error_set(err, -EPROTO,
				   "a multifd channel that says it is the main stream");
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&rx->lock);
	ret = wait_ready(rx, err);
	if (ret == 0 && memcmp(h.id, rx->hello.id, sizeof(h.id)))
		ret = gw_error_set(err, -EPROTO,
				   "channel %u belongs to another migration (its id differs from the main stream's)",
				   h.index);
	else if (ret == 0 && h.channels != rx->hello.channels)
		ret = gw_error_set(err, -EPROTO, "channel %u says %u channels, the main stream %u",
				   h.index, h.channels, rx->hello.channels);
	else if (ret == 0 && rx->by_index[h.index])
		ret = gw_error_set(err, -EPROTO, "a second channel %u", h.index);
	if (ret == 0) {
		c->index = h.index;
		rx->by_index[h.index] = c;
		pthread_cond_broadcast(&rx->cond);
	}
	pthread_mutex_unlock(&rx->lock);
	return ret;
}

static int load_pages(struct rx_chan *c, const struct gw_rec_hdr *h, struct gw_error *err)
{
	struct gw_multifd_rx *rx = c->rx;
	struct gw_pages *p = c->pages;
	uint32_t crc;
	int ret = gw_pages_read_desc(c->r, h, p, &crc, err);

	if (ret == 0)
		ret = gw_record_check_crc(h, crc, err);
	if (ret == 0)
		ret = gw_pages_check_desc(h, p, err);
	if (ret < 0)
		return ret;
	if (p->block_id >= rx->nr_ram)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu: block id %u is not in the CONFIG table (%u blocks)",
				    (unsigned long long)h->offset, p->block_id, rx->nr_ram);
	/* Its copies must all come this way, or a later copy could land
	 * before an earlier one. */
	for (uint32_t i = 0; i < p->nr_pages; i++) {
		uint64_t off = p->entries[i] & ~(uint64_t)GW_PAGE_FLAGS_MASK;

		if (gw_multifd_channel_of(p->block_id, off, rx->hello.channels) != c->index)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu: the page at 0x%llx of block %u belongs on channel %u",
					    (unsigned long long)h->offset, (unsigned long long)off,
					    p->block_id,
					    gw_multifd_channel_of(p->block_id, off,
								  rx->hello.channels));
	}
	ret = gw_pages_load(rx->m, rx->ram_map[p->block_id], &c->torn, c->r, h, p, err);
	if (ret == 0) {
		pthread_mutex_lock(&rx->lock);
		c->pages_since_sync = true;
		pthread_mutex_unlock(&rx->lock);
	}
	return ret;
}

static int sync_record(struct rx_chan *c, const struct gw_rec_hdr *h, struct gw_error *err)
{
	struct gw_multifd_rx *rx = c->rx;
	unsigned char p[8];
	int ret = h->length == 8 ?
			  gw_reader_read(c->r, p, 8, err) :
			  gw_error_set(err, -EBADMSG,
				       "MULTIFD_SYNC record at offset %llu: %llu bytes, not 8",
				       (unsigned long long)h->offset,
				       (unsigned long long)h->length);

	if (ret == 0)
		ret = gw_record_check_crc(h, gw_crc32c(0, p, 8), err);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&rx->lock);
	if (gw_get_le64(p) != c->round + 1) {
		ret = gw_error_set(err, -EBADMSG,
				   "MULTIFD_SYNC record at offset %llu: round %llu after round %llu",
				   (unsigned long long)h->offset,
				   (unsigned long long)gw_get_le64(p),
				   (unsigned long long)c->round);
	} else {
		c->round++;
		c->pages_since_sync = false;
		pthread_cond_broadcast(&rx->cond);
	}
	pthread_mutex_unlock(&rx->lock);
	return ret;
}

static int receive(struct rx_chan *c, struct gw_error *err)
{
	int ret = hello(c, err);

	if (ret == 0)
		ret = gw_torn_init(&c->torn, c->rx->m, err);
	c->torn_ready = ret == 0;
	while (ret == 0) {
		struct gw_rec_hdr h;

		ret = gw_record_read_header(c->r, &h, err);
		if (ret < 0)
			break;
		if (h.type == GW_REC_RAM_PAGES) {
			ret = load_pages(c, &h, err);
		} else if (h.type == GW_REC_MULTIFD_SYNC) {
			ret = sync_record(c, &h, err);
		} else if (h.type == GW_REC_EOF && h.length == 0) {
			pthread_mutex_lock(&c->rx->lock);
			c->eof = true;
			c->eof_offset = h.offset;
			pthread_cond_broadcast(&c->rx->cond);
			pthread_mutex_unlock(&c->rx->lock);
			return 0;
		} else {
			ret = gw_error_set(err, -EPROTO,
					   "%s record (type 0x%04x) at offset %llu: a multifd channel carries only RAM_PAGES, MULTIFD_SYNC and EOF",
					   gw_record_type_name(h.type), h.type,
					   (unsigned long long)h.offset);
		}
	}
	return ret;
}

static void *channel_thread(void *opaque)
{
	struct rx_chan *c = opaque;
	struct gw_error err = {0};
	int ret = receive(c, &err);

	if (ret < 0) {
		struct gw_multifd_rx *rx = c->rx;

		if (c->index == GW_MULTIFD_MAIN)
			gw_error_prefix(&err, ret, "a multifd channel (%s): ", c->ch.desc);
		else
			gw_error_prefix(&err, ret, "multifd channel %u (%s): ", c->index,
					c->ch.desc);
		/* The source's writes on it fail too, rather than wait. */
		shutdown(c->ch.fd, SHUT_RDWR);
		pthread_mutex_lock(&rx->lock);
		if (!rx->stopping)
			fail_locked(rx, ret, &err);
		pthread_mutex_unlock(&rx->lock);
	}
	return NULL;
}

int gw_multifd_rx_new(struct gw_migration *m, struct gw_cancel *cancel, int main_fd,
		      uint64_t *received, struct gw_multifd_rx **out, struct gw_error *err)
{
	struct gw_multifd_rx *rx = calloc(1, sizeof(*rx));

	if (!rx)
		return gw_error_set(err, -ENOMEM, "multifd: out of memory");
	rx->m = m;
	rx->cancel = cancel;
	rx->main_fd = main_fd;
	rx->received = received;
	pthread_mutex_init(&rx->lock, NULL);
	pthread_cond_init(&rx->cond, NULL);
	*out = rx;
	return 0;
}

int gw_multifd_rx_add(struct gw_multifd_rx *rx, struct gw_channel *ch, struct gw_error *err)
{
	struct rx_chan *c = calloc(1, sizeof(*c));
	int ret = 0;

	if (!c || !(c->pages = malloc(sizeof(*c->pages))))
		ret = gw_error_set(err, -ENOMEM, "multifd: out of memory");
	pthread_mutex_lock(&rx->lock);
	if (ret == 0 && (rx->stopping || rx->nr_conns == GW_MULTIFD_MAX_CHANNELS))
		ret = gw_error_set(err, -EPROTO,
				   rx->stopping ? "multifd: the migration has ended" :
						  "multifd: more than %u channels",
				   GW_MULTIFD_MAX_CHANNELS);
	if (ret == 0)
		ret = gw_reader_new(ch->fd, &c->r, err);
	if (ret == 0) {
		gw_reader_bind(c->r, rx->cancel->efd);
		gw_reader_count_into(c->r, rx->received);
		c->rx = rx;
		c->ch = *ch;
		c->index = GW_MULTIFD_MAIN;
		ret = -pthread_create(&c->thread, NULL, channel_thread, c);
		if (ret)
			gw_error_set(err, ret, "multifd: cannot start a channel's thread");
	}
	if (ret == 0) {
		*ch = (struct gw_channel){.fd = -1};
		rx->conns[rx->nr_conns++] = c;
	}
	pthread_mutex_unlock(&rx->lock);
	if (ret < 0 && c) {
		gw_reader_free(c->r);
		free(c->pages);
		free(c);
	}
	return ret;
}

int gw_multifd_rx_setup(struct gw_multifd_rx *rx, const struct gw_multifd_hello *h,
			const uint32_t *ram_map, uint32_t nr_ram, struct gw_error *err)
{
	if (nr_ram > GW_MAX_RAM_BLOCKS)
		return gw_error_set(err, -EINVAL, "multifd: %u RAM blocks", nr_ram);
	pthread_mutex_lock(&rx->lock);
	rx->hello = *h;
	memcpy(rx->ram_map, ram_map, sizeof(*ram_map) * nr_ram);
	rx->nr_ram = nr_ram;
	rx->ready = true;
	pthread_cond_broadcast(&rx->cond);
	pthread_mutex_unlock(&rx->lock);
	return 0;
}

/* The source hung up on the main stream: nothing more will come. */
static bool main_gone(int fd)
{
	struct pollfd p = {fd, POLLRDHUP, 0};

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Wait until done(rx) (lock held), a channel fails, a cancel, or the
 * source hangs up; what says what is waited for. */
static int wait_for(struct gw_multifd_rx *rx, bool (*done)(struct gw_multifd_rx *, uint64_t),
		    uint64_t round, const char *what, struct gw_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&rx->lock);
	while (!done(rx, round)) {
		if (rx->error) {
			ret = rx->error;
			*err = rx->err;
			break;
		}
		if (gw_cancel_requested(rx->cancel)) {
			ret = gw_error_set(err, -ECANCELED, "cancelled while waiting for %s", what);
			break;
		}
		if (main_gone(rx->main_fd)) {
			uint32_t have = 0;

			for (uint32_t i = 0; i < rx->hello.channels; i++)
				have += rx->by_index[i] != NULL;
			ret = gw_error_set(err, -EPIPE,
					   "the source hung up while this side waited for %s (%u of %u channels connected)",
					   what, have, rx->hello.channels);
			break;
		}
		wait_slice(rx);
	}
	pthread_mutex_unlock(&rx->lock);
	return ret;
}

static bool all_synced(struct gw_multifd_rx *rx, uint64_t round)
{
	for (uint32_t i = 0; i < rx->hello.channels; i++)
		if (!rx->by_index[i] || rx->by_index[i]->round < round)
			return false;
	return true;
}

static bool all_ended(struct gw_multifd_rx *rx, uint64_t round)
{
	(void)round;
	for (uint32_t i = 0; i < rx->hello.channels; i++)
		if (!rx->by_index[i] || !rx->by_index[i]->eof)
			return false;
	return true;
}

int gw_multifd_rx_sync(struct gw_multifd_rx *rx, uint64_t round, struct gw_error *err)
{
	char what[64];

	snprintf(what, sizeof(what), "every multifd channel to pass round %llu",
		 (unsigned long long)round);
	return wait_for(rx, all_synced, round, what, err);
}

int gw_multifd_rx_finish(struct gw_multifd_rx *rx, uint64_t round, struct gw_error *err)
{
	int ret = wait_for(rx, all_ended, round, "every multifd channel to end", err);

	for (uint32_t i = 0; i < rx->hello.channels && ret == 0; i++) {
		struct rx_chan *c = rx->by_index[i];

		if (c->round != round || c->pages_since_sync)
			ret = gw_error_set(err, -EBADMSG,
					   "multifd channel %u ended after round %llu%s, the main stream after round %llu: pages on it came after the last sync",
					   i, (unsigned long long)c->round,
					   c->pages_since_sync ? " and more pages" : "",
					   (unsigned long long)round);
		else if ((ret = gw_torn_check(&c->torn, c->eof_offset, err)) < 0)
			gw_error_prefix(err, ret, "multifd channel %u: ", i);
	}
	return ret;
}

int gw_multifd_rx_failure(struct gw_multifd_rx *rx, struct gw_error *err)
{
	pthread_mutex_lock(&rx->lock);
	int ret = rx->error;
	if (ret)
		*err = rx->err;
	pthread_mutex_unlock(&rx->lock);
	return ret;
}

void gw_multifd_rx_free(struct gw_multifd_rx *rx)
{
	if (!rx)
		return;
	pthread_mutex_lock(&rx->lock);
	rx->stopping = true;
	pthread_cond_broadcast(&rx->cond);
	for (uint32_t i = 0; i < rx->nr_conns; i++)
		shutdown(rx->conns[i]->ch.fd, SHUT_RDWR);
	pthread_mutex_unlock(&rx->lock);
	for (uint32_t i = 0; i < rx->nr_conns; i++) {
		struct rx_chan *c = rx->conns[i];

		pthread_join(c->thread, NULL);
		if (c->torn_ready)
			gw_torn_release(&c->torn);
		gw_reader_free(c->r);
		gw_channel_close(&c->ch, NULL);
		free(c->pages);
		free(c);
	}
	pthread_cond_destroy(&rx->cond);
	pthread_mutex_destroy(&rx->lock);
	free(rx);
}
