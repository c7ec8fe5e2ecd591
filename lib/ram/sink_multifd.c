/*
 * The multifd sink (sink_multifd.h).
 *
 * pages() cuts a batch where the channel changes and queues each piece
 * (its entries, not its data) for that channel's thread, which writes it
 * as one RAM_PAGES record straight from guest memory with its own
 * writer. The data is read when the thread gets to it, later than the
 * call: a page the guest writes meanwhile is dirty again and goes in a
 * later round, as with one stream; and in the final round the guest is
 * paused until the flush has waited for every channel.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <godwit/io.h>
#include <godwit/stream.h>

#include "lib/cancel.h"
#include "lib/format/multifd.h"
#include "lib/internal.h"
#include "lib/ram/ram_sink.h"
#include "lib/ram/sink_multifd.h"

/* Pieces waiting per channel: enough to keep a thread busy while pages()
 * cuts the next batch, few enough that a round's tail is short (what
 * waits counts as still to send: backlog()). */
#define QUEUE 4

enum item_kind { ITEM_PAGES, ITEM_SYNC, ITEM_END };

struct item {
	enum item_kind kind;
	uint32_t block, n;
	unsigned flags;
	uint64_t round;
	uint64_t bytes; /* of its record, counted in taken and backlog */
	uint64_t entries[GW_PAGES_MAX];
};

struct chan {
	struct multifd *s;
	uint32_t index;
	struct gw_channel ch;
	struct gw_writer *w;
	pthread_t thread;
	bool started;
	/* Under s->lock: */
	struct item items[QUEUE];
	unsigned head, count;
	uint64_t synced; /* the last round written whole */
	bool ended;
	int error;
	struct gw_error err;
	_Atomic uint64_t sent;
};

struct multifd {
	struct gw_ram_sink sink;
	struct gw_migration *m;
	struct gw_writer *main;
	struct gw_cancel *cancel;
	struct gw_multifd_hello hello;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t round; /* of the last flush */
	uint64_t taken;
	uint64_t backlog; /* of taken, still queued or being written */
	uint32_t nr;
	struct chan chans[GW_MULTIFD_MAX_CHANNELS];
};

static struct multifd *of(const struct gw_ram_sink *s)
{
	return (struct multifd *)((char *)s - offsetof(struct multifd, sink));
}

/* The first channel that failed, as the sink's error; lock held. */
static int failed(struct multifd *s, struct gw_error *err)
{
	for (uint32_t i = 0; i < s->nr; i++)
		if (s->chans[i].error)
			return gw_error_set(err, s->chans[i].error, "multifd channel %u: %s", i,
					    s->chans[i].err.msg);
	return 0;
}

/* A free slot of c's queue, waiting while it is full; lock held. */
static struct item *slot(struct multifd *s, struct chan *c, struct gw_error *err, int *ret)
{
	while (c->count == QUEUE && !(*ret = failed(s, err)))
		pthread_cond_wait(&s->cond, &s->lock);
	if (c->count == QUEUE || (*ret = failed(s, err)))
		return NULL;
	return &c->items[(c->head + c->count) % QUEUE];
}

static void queued(struct multifd *s, struct chan *c)
{
	c->count++;
	pthread_cond_broadcast(&s->cond);
}

static int work(struct chan *c, const struct item *it, struct gw_error *err)
{
	struct multifd *s = c->s;
	int ret;

	switch (it->kind) {
	case ITEM_PAGES:
		return gw_save_pages(s->m, c->w, it->block, it->entries, it->n, it->flags, err);
	case ITEM_SYNC:
		ret = gw_multifd_put_sync(c->w, it->round, err);
		return ret < 0 ? ret : gw_writer_flush(c->w, err);
	case ITEM_END:
		ret = gw_record_write(c->w, GW_REC_EOF, 0, NULL, 0, err);
		return ret < 0 ? ret : gw_writer_flush(c->w, err);
	}
	return -EINVAL;
}

static void *channel_thread(void *opaque)
{
	struct chan *c = opaque;
	struct multifd *s = c->s;
	struct gw_error err = {0};

	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!c->count)
			pthread_cond_wait(&s->cond, &s->lock);
		const struct item *it = &c->items[c->head];
		pthread_mutex_unlock(&s->lock);
		int ret = work(c, it, &err);
		atomic_store(&c->sent, gw_writer_sent(c->w));
		pthread_mutex_lock(&s->lock);
		if (ret < 0) {
			c->error = ret;
			c->err = err;
		} else if (it->kind == ITEM_SYNC) {
			c->synced = it->round;
		} else if (it->kind == ITEM_PAGES) {
			s->backlog -= it->bytes;
		} else if (it->kind == ITEM_END) {
			c->ended = true;
		}
		bool last = ret < 0 || it->kind == ITEM_END;
		c->head = (c->head + 1) % QUEUE;
		c->count--;
		pthread_cond_broadcast(&s->cond);
		if (last)
			break;
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static int multifd_pages(struct gw_ram_sink *sk, uint32_t block, const uint64_t *entries,
			 uint32_t n, unsigned flags, struct gw_error *err)
{
	struct multifd *s = of(sk);
	const uint64_t size = s->m->ram[block].size;
	int ret = 0;

	if (n == 0 || n > GW_PAGES_MAX || (entries[n - 1] & ~(uint64_t)(GW_PAGE_SIZE - 1)) >= size)
		return gw_error_set(err, -EINVAL, "multifd: a batch of %u pages outside block %u",
				    n, block);
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < n && !ret;) {
		uint32_t ch = gw_multifd_channel_of(block, entries[i], s->nr), j = i + 1;

		while (j < n && gw_multifd_channel_of(block, entries[j], s->nr) == ch)
			j++;
		struct item *it = slot(s, &s->chans[ch], err, &ret);
		if (!it)
			break;
		*it = (struct item){.kind = ITEM_PAGES, .block = block, .n = j - i, .flags = flags};
		memcpy(it->entries, entries + i, sizeof(*entries) * (j - i));
		it->bytes = GW_RECORD_HEADER_SIZE + GW_PAGES_DESC_SIZE(j - i);
		for (uint32_t k = i; k < j; k++)
			it->bytes += entries[k] & GW_PAGE_ZERO ? 0 : GW_PAGE_SIZE;
		s->taken += it->bytes;
		s->backlog += it->bytes;
		queued(s, &s->chans[ch]);
		i = j;
	}
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* A marker item on every channel, then wait until each wrote it. */
static int mark_all(struct multifd *s, enum item_kind kind, uint64_t round, struct gw_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->nr && !ret; i++) {
		struct item *it = slot(s, &s->chans[i], err, &ret);
		if (!it)
			break;
		*it = (struct item){.kind = kind, .round = round};
		queued(s, &s->chans[i]);
	}
	for (uint32_t i = 0; i < s->nr && !ret; i++) {
		struct chan *c = &s->chans[i];

		while (!(kind == ITEM_SYNC ? c->synced == round : c->ended) &&
		       !(ret = failed(s, err)))
			pthread_cond_wait(&s->cond, &s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* Every page taken so far is written on its channel, then the main
 * stream says so: the destination reads past it only with them all. */
static int multifd_flush(struct gw_ram_sink *sk, struct gw_error *err)
{
	struct multifd *s = of(sk);
	int ret = mark_all(s, ITEM_SYNC, s->round + 1, err);

	if (ret < 0)
		return ret;
	s->round++;
	ret = gw_multifd_put_sync(s->main, s->round, err);
	return ret < 0 ? ret : gw_writer_flush(s->main, err);
}

/* The main stream's EOF is out: each channel ends too. */
static int multifd_finish(struct gw_ram_sink *sk, struct gw_error *err)
{
	return mark_all(of(sk), ITEM_END, 0, err);
}

/* Out at once: the destination's channels wait for it before they read
 * pages, and the main stream may carry nothing else for a long time. */
static int multifd_begin(struct gw_ram_sink *sk, struct gw_error *err)
{
	int ret = gw_multifd_put_hello(of(sk)->main, &of(sk)->hello, err);

	return ret < 0 ? ret : gw_writer_flush(of(sk)->main, err);
}

/* The main stream's bytes too: what left for the destination in all. */
static uint64_t multifd_sent(const struct gw_ram_sink *sk)
{
	const struct multifd *s = of(sk);
	uint64_t sum = gw_writer_sent(s->main);

	for (uint32_t i = 0; i < s->nr; i++)
		sum += atomic_load(&s->chans[i].sent);
	return sum;
}

static uint64_t multifd_taken(const struct gw_ram_sink *sk)
{
	struct multifd *s = of(sk);

	pthread_mutex_lock(&s->lock);
	uint64_t t = s->taken;
	pthread_mutex_unlock(&s->lock);
	return t;
}

static uint64_t multifd_backlog(const struct gw_ram_sink *sk)
{
	struct multifd *s = of(sk);

	pthread_mutex_lock(&s->lock);
	uint64_t b = s->backlog;
	pthread_mutex_unlock(&s->lock);
	return b;
}

static void multifd_set_deadline(struct gw_ram_sink *sk, uint64_t deadline_ns)
{
	struct multifd *s = of(sk);

	/* Read by each writer as it waits: a word, set once at the pause. */
	for (uint32_t i = 0; i < s->nr; i++)
		gw_writer_set_deadline(s->chans[i].w, deadline_ns);
}

static void multifd_release(struct gw_ram_sink *sk)
{
	struct multifd *s = of(sk);

	/* A thread still busy fails at its next write once the sockets are
	 * shut; one waiting for work is given an END. */
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->nr; i++) {
		struct chan *c = &s->chans[i];

		if (!c->started || c->ended || c->error)
			continue;
		shutdown(c->ch.fd, SHUT_RDWR);
		if (c->count < QUEUE) {
			c->items[(c->head + c->count) % QUEUE] = (struct item){.kind = ITEM_END};
			c->count++;
		}
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	for (uint32_t i = 0; i < s->nr; i++) {
		struct chan *c = &s->chans[i];

		if (c->started)
			pthread_join(c->thread, NULL);
		gw_writer_free(c->w);
		gw_channel_abort(&c->ch);
		gw_channel_close(&c->ch, NULL);
	}
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static const struct gw_ram_sink_ops multifd_ops = {
	.begin = multifd_begin,
	.pages = multifd_pages,
	.flush = multifd_flush,
	.sent = multifd_sent,
	.taken = multifd_taken,
	.backlog = multifd_backlog,
	.finish = multifd_finish,
	.set_deadline = multifd_set_deadline,
	.release = multifd_release,
};

/* Its stream header and MULTIFD record: the first bytes of a channel. */
static int open_channel(struct multifd *s, struct chan *c, struct gw_error *err)
{
	struct gw_multifd_hello h = s->hello;
	int ret = gw_writer_new(c->ch.fd, &c->w, err);

	if (ret < 0)
		return ret;
	gw_writer_bind(c->w, s->cancel->efd);
	h.index = c->index;
	ret = gw_stream_put_header(c->w, GW_HDRF_CHANNEL, err);
	if (ret == 0)
		ret = gw_multifd_put_hello(c->w, &h, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "multifd channel %u (%s): ", c->index, c->ch.desc);
	ret = pthread_create(&c->thread, NULL, channel_thread, c);
	if (ret)
		return gw_error_set(err, -ret, "multifd channel %u: cannot start its thread",
				    c->index);
	c->started = true;
	return 0;
}

int gw_multifd_sink_open(struct gw_migration *m, struct gw_writer *main, struct gw_channel *chans,
			 unsigned nr, struct gw_cancel *cancel, struct gw_ram_sink **out,
			 struct gw_error *err)
{
	struct multifd *s = calloc(1, sizeof(*s));
	int ret = 0;

	if (!s || nr == 0 || nr > GW_MULTIFD_MAX_CHANNELS) {
		ret = s ? gw_error_set(err, -EINVAL, "multifd: %u channels, not 1 to %u", nr,
				       GW_MULTIFD_MAX_CHANNELS) :
			  gw_error_set(err, -ENOMEM, "multifd: out of memory");
		free(s);
		for (unsigned i = 0; i < nr; i++) {
			gw_channel_abort(&chans[i]);
			gw_channel_close(&chans[i], NULL);
		}
		return ret;
	}
	*s = (struct multifd){.sink = {&multifd_ops},
			      .m = m,
			      .main = main,
			      .cancel = cancel,
			      .nr = nr};
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->hello = (struct gw_multifd_hello){.channels = nr, .index = GW_MULTIFD_MAIN};
	if (getrandom(s->hello.id, sizeof(s->hello.id), 0) != (ssize_t)sizeof(s->hello.id))
		ret = gw_error_set(err, -errno, "multifd: getrandom: %s", strerror(errno));
	for (unsigned i = 0; i < nr; i++) {
		s->chans[i].s = s;
		s->chans[i].index = i;
		s->chans[i].ch = chans[i];
		chans[i] = (struct gw_channel){.fd = -1};
	}
	for (unsigned i = 0; i < nr && !ret; i++)
		ret = open_channel(s, &s->chans[i], err);
	if (ret < 0) {
		multifd_release(&s->sink);
		return ret;
	}
	*out = &s->sink;
	return 0;
}
