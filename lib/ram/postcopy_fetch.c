/*
 * The post-copy page source (postcopy_fetch.h).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <godwit/io.h>

#include "lib/bitmap.h"
#include "lib/internal.h"
#include "lib/ram/postcopy_fetch.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
/* The background's piece: 512 KiB, 4 ms at 1 Gbit/s. */
#define BG_PIECE 128u

struct gw_postcopy_fetch {
	struct gw_cancel *c;
	int send_timeout_ms;
	struct gw_pf_block *blocks;
	uint32_t nr;
	int break_efd;
	unsigned urgent;       /* atomic: faults waiting for an exchange */
	pthread_mutex_t lock;  /* one exchange at a time; everything below */
	pthread_cond_t mended; /* a resume or an abort */
	pthread_cond_t turn;   /* the faults that waited have had theirs */
	struct gw_reader *r;   /* NULL while broken */
	struct gw_pages pages;
	uint64_t **received; /* per block: pages received whole */
	bool broken;
	int failed; /* aborted: every exchange fails with error */
	struct gw_error error;
	uint64_t requested; /* atomic */
};

/* The record that answers a request of n pages from first: exactly those. */
static int check_answer(const struct gw_pf_block *b, const struct gw_rec_hdr *h,
			const struct gw_pages *p, uint64_t first, uint32_t n, struct gw_error *err)
{
	if (h->type != GW_REC_RAM_PAGES || !(h->flags & GW_RECF_DATA_CRC))
		return gw_error_set(err, -EBADMSG,
				    "a %s record (flags 0x%x) at offset %llu where the pages of RAM block '%s' asked for were due",
				    gw_record_type_name(h->type), h->flags,
				    (unsigned long long)h->offset, b->name);
	if (p->block_id != b->stream_id || p->nr_pages != n)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu holds %u pages of block %u, not the %u of block %u ('%s') asked for",
				    (unsigned long long)h->offset, p->nr_pages, p->block_id, n,
				    b->stream_id, b->name);
	for (uint32_t i = 0; i < n; i++)
		if ((p->entries[i] & ~GW_PAGE_FLAGS_MASK) != (first + i) * PAGE)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu: entry %u is the page at 0x%llx of '%s', the one asked for is at 0x%llx",
					    (unsigned long long)h->offset, i,
					    (unsigned long long)(p->entries[i] &
								 ~GW_PAGE_FLAGS_MASK),
					    b->name, (unsigned long long)((first + i) * PAGE));
	return 0;
}

/* The answer's pages into dst, each checked against its hash. */
static int read_answer(struct gw_postcopy_fetch *f, const struct gw_pf_block *b, uint64_t first,
		       uint32_t n, unsigned char *dst, struct gw_error *err)
{
	struct gw_pages *p = &f->pages;
	struct gw_rec_hdr h;
	uint32_t crc;
	/* A link gone silent sends no error: a source that does not start
	 * its answer in time breaks the connection (the recovery's turn). */
	int ready = gw_reader_buffered(f->r) ? 1 : gw_cancel_poll(f->c, POLLIN, f->send_timeout_ms);
	int ret = ready > 0  ? gw_record_read_header(f->r, &h, err) :
		  ready == 0 ? gw_error_set(err, -ETIMEDOUT,
					    "no answer from the source within %d ms",
					    f->send_timeout_ms) :
			       gw_error_set(err, ready, "poll: %s", gw_strerror(ready));

	if (ret == 0 && h.type == GW_REC_RAM_PAGES)
		ret = gw_pages_read_desc(f->r, &h, p, &crc, err);
	if (ret == 0 && h.type == GW_REC_RAM_PAGES)
		ret = gw_record_check_crc(&h, crc, err);
	if (ret == 0 && h.type == GW_REC_RAM_PAGES)
		ret = gw_pages_check_desc(&h, p, err);
	if (ret == 0)
		ret = check_answer(b, &h, p, first, n, err);
	for (uint32_t i = 0; ret == 0 && i < n; i++) {
		unsigned char *page = dst + i * PAGE;

		if (p->entries[i] & GW_PAGE_ZERO) {
			memset(page, 0, PAGE);
			continue;
		}
		ret = gw_reader_read(f->r, page, PAGE, err);
		/* The guest was paused at the source: a mismatch is damage. */
		if (ret == 0 && gw_page_hash(page) != p->hashes[i])
			ret = gw_error_set(err, -EBADMSG,
					   "the page at 0x%llx of RAM block '%s' does not match its hash (RAM_PAGES record at offset %llu): corrupted on the way",
					   (unsigned long long)((first + i) * PAGE), b->name,
					   (unsigned long long)h.offset);
	}
	return ret;
}

/* One request and its answer over the connection. */
static int exchange(struct gw_postcopy_fetch *f, const struct gw_pf_block *b, uint64_t first,
		    uint32_t k, unsigned char *dst, struct gw_error *err)
{
	struct gw_report rq = {.status = GW_REPORT_REQUEST, .req = {b->stream_id, k, first}};
	int ret = gw_report_send(f->c, f->send_timeout_ms, &rq, err);

	if (ret < 0)
		return ret;
	__atomic_add_fetch(&f->requested, k, __ATOMIC_RELAXED);
	return read_answer(f, b, first, k, dst, err);
}

/* The connection is out of step or gone: drop it and tell the owner. */
static void break_connection(struct gw_postcopy_fetch *f, const struct gw_error *why)
{
	uint64_t one = 1;

	f->broken = true;
	f->error = *why;
	gw_reader_free(f->r);
	f->r = NULL;
	while (write(f->break_efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

/*
 * One exchange at a time, and a fault's first: the source answers in
 * order, so a fault asked for behind a background run waits for the whole
 * run to cross the link (2 MiB: 17 ms at 1 Gbit/s). The background asks
 * in pieces of BG_PIECE pages and, between two, lets every fault that
 * waits go first; a fault waits for at most the piece under way.
 */
static int fetch_read(void *opaque, uint32_t block, uint64_t first, uint64_t n, bool urgent,
		      void *dst, struct gw_error *err)
{
	struct gw_postcopy_fetch *f = opaque;
	const struct gw_pf_block *b = &f->blocks[block];
	uint64_t piece = urgent ? GW_PAGES_MAX : BG_PIECE;
	int ret = 0;

	if (urgent)
		__atomic_add_fetch(&f->urgent, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_lock(&f->lock);
	for (uint64_t done = 0; done < n;) {
		uint32_t k = (uint32_t)(n - done > piece ? piece : n - done);

		if (f->failed) {
			*err = f->error;
			ret = f->failed;
			break;
		}
		if (f->broken) {
			pthread_cond_wait(&f->mended, &f->lock);
			continue;
		}
		if (!urgent && __atomic_load_n(&f->urgent, __ATOMIC_ACQUIRE)) {
			pthread_cond_wait(&f->turn, &f->lock);
			continue;
		}
		ret = exchange(f, b, first + done, k, (unsigned char *)dst + done * PAGE, err);
		if (ret == -ECANCELED)
			break;
		if (ret < 0) {
			gw_error_prefix(err, ret,
					"post-copy: fetching %u pages from 0x%llx of RAM block '%s' from the source: ",
					k, (unsigned long long)((first + done) * PAGE), b->name);
			break_connection(f, err);
			ret = 0;
			continue;
		}
		for (uint64_t p = first + done; p < first + done + k; p++)
			f->received[block][p / 64] |= 1ull << (p % 64);
		done += k;
	}
	if (urgent && __atomic_sub_fetch(&f->urgent, 1, __ATOMIC_ACQ_REL) == 0)
		pthread_cond_broadcast(&f->turn);
	pthread_mutex_unlock(&f->lock);
	return ret;
}

int gw_postcopy_fetch_new(struct gw_cancel *c, int send_timeout_ms,
			  const struct gw_pf_block *blocks, uint32_t nr,
			  struct gw_postcopy_fetch **out, struct gw_error *err)
{
	struct gw_postcopy_fetch *f = calloc(1, sizeof(*f));
	int ret;

	if (!f || !(f->blocks = calloc(nr ? nr : 1, sizeof(*blocks)))) {
		free(f);
		return gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	}
	memcpy(f->blocks, blocks, nr * sizeof(*blocks));
	f->nr = nr;
	f->c = c;
	f->send_timeout_ms = send_timeout_ms;
	f->break_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->mended, NULL);
	pthread_cond_init(&f->turn, NULL);
	f->received = calloc(nr + 1, sizeof(*f->received));
	for (uint32_t i = 0; f->received && i < nr; i++)
		f->received[i] = calloc(gw_bitmap_words(blocks[i].size / PAGE) + 1,
					sizeof(uint64_t));
	ret = f->break_efd < 0 ?
		      gw_error_set(err, -errno, "post-copy: eventfd: %s", gw_strerror(errno)) :
		      0;
	for (uint32_t i = 0; ret == 0 && i < nr; i++)
		if (!f->received || !f->received[i])
			ret = gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	if (ret == 0)
		ret = gw_reader_new(c->fd, &f->r, err);
	if (ret < 0) {
		gw_postcopy_fetch_free(f);
		return ret;
	}
	gw_reader_bind(f->r, c->efd);
	*out = f;
	return 0;
}

struct gw_page_source gw_postcopy_fetch_source(struct gw_postcopy_fetch *f)
{
	return (struct gw_page_source){fetch_read, f};
}

uint64_t gw_postcopy_fetch_requested(struct gw_postcopy_fetch *f)
{
	return __atomic_load_n(&f->requested, __ATOMIC_RELAXED);
}

int gw_postcopy_fetch_break_fd(struct gw_postcopy_fetch *f)
{
	return f->break_efd;
}

bool gw_postcopy_fetch_broken(struct gw_postcopy_fetch *f, struct gw_error *why)
{
	bool broken;

	pthread_mutex_lock(&f->lock);
	broken = f->broken;
	if (broken)
		*why = f->error;
	pthread_mutex_unlock(&f->lock);
	return broken;
}

void gw_postcopy_fetch_needed(struct gw_postcopy_fetch *f, uint64_t *const *needed)
{
	pthread_mutex_lock(&f->lock);
	for (uint32_t i = 0; i < f->nr; i++)
		for (size_t k = 0; k < gw_bitmap_words(f->blocks[i].size / PAGE); k++)
			needed[i][k] = f->blocks[i].stale[k] & ~f->received[i][k];
	pthread_mutex_unlock(&f->lock);
}

int gw_postcopy_fetch_resume(struct gw_postcopy_fetch *f, struct gw_error *err)
{
	struct gw_reader *r;
	int ret = gw_reader_new(f->c->fd, &r, err);

	if (ret < 0)
		return ret;
	gw_reader_bind(r, f->c->efd);
	pthread_mutex_lock(&f->lock);
	gw_reader_free(f->r);
	f->r = r;
	f->broken = false;
	pthread_cond_broadcast(&f->mended);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

void gw_postcopy_fetch_abort(struct gw_postcopy_fetch *f, const struct gw_error *why)
{
	pthread_mutex_lock(&f->lock);
	if (!f->failed) {
		f->failed = why->code < 0 ? why->code : -ECANCELED;
		f->error = *why;
	}
	pthread_cond_broadcast(&f->mended);
	pthread_cond_broadcast(&f->turn);
	pthread_mutex_unlock(&f->lock);
}

void gw_postcopy_fetch_free(struct gw_postcopy_fetch *f)
{
	if (!f)
		return;
	gw_reader_free(f->r);
	pthread_cond_destroy(&f->mended);
	pthread_cond_destroy(&f->turn);
	pthread_mutex_destroy(&f->lock);
	for (uint32_t i = 0; f->received && i < f->nr; i++)
		free(f->received[i]);
	free(f->received);
	if (f->break_efd >= 0)
		close(f->break_efd);
	free(f->blocks);
	free(f);
}
