#include "vmm/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct watch {
	int fd;
	loop_fd_cb cb;
	void *opaque;
	bool dead;
	struct watch *next;
};

struct call {
	loop_call_fn fn;
	void *opaque;
	struct call *next;
};

struct loop {
	int epfd;
	int wakefd;
	bool stop;
	struct watch *watches;
	pthread_mutex_t lock; /* protects calls and stop */
	struct call *calls, **calls_tail;
};

int loop_new(struct loop **out)
{
	struct loop *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->epfd < 0 || l->wakefd < 0) {
		int err = -errno;
		loop_free(l);
		return err;
	}
	pthread_mutex_init(&l->lock, NULL);
	l->calls_tail = &l->calls;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0) {
		int err = -errno;
		loop_free(l);
		return err;
	}
	*out = l;
	return 0;
}

void loop_free(struct loop *l)
{
	if (!l)
		return;
	while (l->watches) {
		struct watch *w = l->watches;
		l->watches = w->next;
		free(w);
	}
	while (l->calls) {
		struct call *c = l->calls;
		l->calls = c->next;
		free(c);
	}
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->wakefd >= 0)
		close(l->wakefd);
	free(l);
}

int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_cb cb, void *opaque)
{
	struct watch *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->cb = cb;
	w->opaque = opaque;
	struct epoll_event ev = {.events = events, .data.ptr = w};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int err = -errno;
		free(w);
		return err;
	}
	w->next = l->watches;
	l->watches = w;
	return 0;
}

static struct watch *find_watch(struct loop *l, int fd)
{
	for (struct watch *w = l->watches; w; w = w->next)
		if (w->fd == fd && !w->dead)
			return w;
	return NULL;
}

int loop_mod_fd(struct loop *l, int fd, uint32_t events)
{
	struct watch *w = find_watch(l, fd);
	if (!w)
		return -ENOENT;
	struct epoll_event ev = {.events = events, .data.ptr = w};
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void loop_del_fd(struct loop *l, int fd)
{
	struct watch *w = find_watch(l, fd);
	if (!w)
		return;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	/* Freed after the current batch of events: a later event in the same
	 * epoll_wait() batch may still point at it. */
	w->dead = true;
}

static void reap_dead(struct loop *l)
{
	struct watch **pp = &l->watches;
	while (*pp) {
		struct watch *w = *pp;
		if (w->dead) {
			*pp = w->next;
			free(w);
		} else {
			pp = &w->next;
		}
	}
}

int loop_call(struct loop *l, loop_call_fn fn, void *opaque)
{
	struct call *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fn = fn;
	c->opaque = opaque;
	c->next = NULL;
	pthread_mutex_lock(&l->lock);
	/* A stopped loop runs no more calls: refused, the caller keeps (and
	 * frees) what it passed, as a migration thread that still reports
	 * while the VMM exits does. */
	if (l->stop) {
		pthread_mutex_unlock(&l->lock);
		free(c);
		return -ESHUTDOWN;
	}
	*l->calls_tail = c;
	l->calls_tail = &c->next;
	pthread_mutex_unlock(&l->lock);
	uint64_t one = 1;
	if (write(l->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

void loop_stop(struct loop *l)
{
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_mutex_unlock(&l->lock);
	uint64_t one = 1;
	(void)!write(l->wakefd, &one, sizeof(one));
}

static void run_calls(struct loop *l)
{
	uint64_t n;
	(void)!read(l->wakefd, &n, sizeof(n));
	pthread_mutex_lock(&l->lock);
	struct call *c = l->calls;
	l->calls = NULL;
	l->calls_tail = &l->calls;
	pthread_mutex_unlock(&l->lock);
	while (c) {
		struct call *next = c->next;
		c->fn(c->opaque);
		free(c);
		c = next;
	}
}

static bool stopping(struct loop *l)
{
	pthread_mutex_lock(&l->lock);
	bool s = l->stop;
	pthread_mutex_unlock(&l->lock);
	return s;
}

int loop_run(struct loop *l)
{
	struct epoll_event evs[32];
	while (!stopping(l)) {
		int n = epoll_wait(l->epfd, evs, 32, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			if (!w)
				run_calls(l);
			else if (!w->dead)
				w->cb(w->opaque, evs[i].events);
		}
		reap_dead(l);
	}
	return 0;
}
