/*
 * TLS for the VMM's migrations (mig_tls.h).
 */
#include "vmm/migration/mig_tls.h"
#include "vmm/loop.h"
#include "vmm/machine.h"
#include "vmm/objects.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* A handshake is two round trips and a few signatures: milliseconds on
 * any link. A peer that has not finished it in this long will not: a
 * port that is no godwit, a stopped process. */
#define HANDSHAKE_TIMEOUT_MS 30000

/* tcp:HOST:PORT's host, without an IPv6 address's brackets. */
static void tcp_host(const char *uri, char *out, size_t len)
{
	const char *h = uri + strlen("tcp:"), *end;
	if (*h == '[' && (end = strchr(h, ']')) != NULL)
		h++;
	else
		end = strrchr(h, ':');
	size_t n = end && end >= h ? (size_t)(end - h) : strlen(h);
	snprintf(out, len, "%.*s", (int)n, h);
}

int mig_tls_resolve(struct vmm *vm, const struct mig_tls_settings *s, const char *uri,
		    bool incoming, struct mig_tls *out, char *errmsg, size_t errlen)
{
	*out = (struct mig_tls){0};
	if (!s->creds[0])
		return 0;
	if (strncmp(uri, "tcp:", 4) && strncmp(uri, "unix:", 5) && strncmp(uri, "fd:", 3)) {
		snprintf(errmsg, errlen,
			 "TLS (tls-creds '%s') needs a connection: use tcp:, unix: or fd:, not '%.200s'",
			 s->creds, uri);
		return -EINVAL;
	}
	struct gw_tls_creds *c = objects_tls_creds(vm->objects, s->creds);
	if (!c) {
		snprintf(errmsg, errlen, "No TLS credentials with id '%s'", s->creds);
		return -ENOENT;
	}
	enum gw_tls_endpoint want = incoming ? GW_TLS_SERVER : GW_TLS_CLIENT;
	if (gw_tls_creds_endpoint(c) != want) {
		snprintf(errmsg, errlen,
			 "Expecting TLS credentials with a %s endpoint: '%s' has endpoint %s",
			 incoming ? "server" : "client", s->creds, incoming ? "client" : "server");
		return -EINVAL;
	}
	if (incoming && s->authz[0]) {
		const char *dn = objects_authz_identity(vm->objects, s->authz);
		if (!dn) {
			snprintf(errmsg, errlen,
				 "No authorization object with id '%s' (tls-authz names an authz-simple object)",
				 s->authz);
			return -ENOENT;
		}
		snprintf(out->authz_dn, sizeof(out->authz_dn), "%s", dn);
	}
	if (!incoming && s->hostname[0])
		snprintf(out->hostname, sizeof(out->hostname), "%s", s->hostname);
	else if (!incoming && !strncmp(uri, "tcp:", 4))
		tcp_host(uri, out->hostname, sizeof(out->hostname));
	out->creds = gw_tls_creds_ref(c);
	return 0;
}

void mig_tls_release(struct mig_tls *t)
{
	gw_tls_creds_free(t->creds);
	t->creds = NULL;
}

static int wrap(const struct mig_tls *t, struct gw_channel *ch, int cancel_fd, struct gw_error *err)
{
	const struct gw_tls_params p = {
		.hostname = t->hostname[0] ? t->hostname : NULL,
		.authz_dn = t->authz_dn[0] ? t->authz_dn : NULL,
		.timeout_ms = HANDSHAKE_TIMEOUT_MS,
		.cancel_fd = cancel_fd,
	};
	return gw_tls_wrap(ch, t->creds, &p, err);
}

int mig_tls_client(const struct mig_tls *t, struct gw_channel *ch, int cancel_fd,
		   struct gw_error *err)
{
	return t->creds ? wrap(t, ch, cancel_fd, err) : 0;
}

/* ---- the destination's handshakes ------------------------------------- */

struct pending {
	struct pending *next;
	struct mig_tls_acceptor *a;
	struct gw_channel ch;
	pthread_t thread;
	bool started;
	bool finished; /* under a->lock */
	int ret;
	struct gw_error err;
};

struct mig_tls_acceptor {
	struct loop *loop;
	const struct mig_tls *t;
	mig_tls_accepted_fn fn;
	void *opaque;
	int cancel_efd; /* readable: the handshakes give up */
	int done_efd;   /* a handshake finished: the loop hands it on */
	pthread_mutex_t lock;
	struct pending *head, **tail; /* in accept order */
	bool delivering;              /* inside fn... */
	bool freed;                   /* ...which freed the acceptor */
};

static void *handshake_thread(void *opaque)
{
	struct pending *p = opaque;
	struct mig_tls_acceptor *a = p->a;
	int ret = wrap(a->t, &p->ch, a->cancel_efd, &p->err);
	uint64_t one = 1;
	pthread_mutex_lock(&a->lock);
	p->ret = ret;
	p->finished = true;
	pthread_mutex_unlock(&a->lock);
	ssize_t n = write(a->done_efd, &one, sizeof(one));
	(void)n;
	return NULL;
}

static void pending_free(struct pending *p)
{
	if (p->started)
		pthread_join(p->thread, NULL);
	if (p->ret == 0)
		gw_channel_abort(&p->ch);
	gw_channel_close(&p->ch, NULL);
	free(p);
}

static void acceptor_release(struct mig_tls_acceptor *a)
{
	uint64_t one = 1;
	ssize_t n = write(a->cancel_efd, &one, sizeof(one));
	(void)n;
	while (a->head) {
		struct pending *p = a->head;
		a->head = p->next;
		pending_free(p);
	}
	close(a->cancel_efd);
	close(a->done_efd);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

/* Hand on the finished handshakes at the head of the line: one still
 * running holds back those behind it. */
static void on_done(void *opaque, uint32_t events)
{
	struct mig_tls_acceptor *a = opaque;
	uint64_t count;
	(void)events;
	ssize_t n = read(a->done_efd, &count, sizeof(count));
	(void)n;
	a->delivering = true;
	while (!a->freed) {
		pthread_mutex_lock(&a->lock);
		struct pending *p = a->head && a->head->finished ? a->head : NULL;
		if (p && !(a->head = p->next))
			a->tail = &a->head;
		pthread_mutex_unlock(&a->lock);
		if (!p)
			break;
		if (p->started)
			pthread_join(p->thread, NULL);
		if (p->ret)
			gw_channel_close(&p->ch, NULL);
		a->fn(a->opaque, &p->ch, p->ret, p->err.msg);
		free(p);
	}
	a->delivering = false;
	if (a->freed)
		acceptor_release(a);
}

int mig_tls_acceptor_new(struct loop *loop, const struct mig_tls *t, mig_tls_accepted_fn fn,
			 void *opaque, struct mig_tls_acceptor **out)
{
	struct mig_tls_acceptor *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	*a = (struct mig_tls_acceptor){.loop = loop, .t = t, .fn = fn, .opaque = opaque};
	a->tail = &a->head;
	a->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	a->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&a->lock, NULL);
	int ret = a->cancel_efd < 0 || a->done_efd < 0 ? -errno : 0;
	if (!ret)
		ret = loop_add_fd(loop, a->done_efd, EPOLLIN, on_done, a);
	if (ret) {
		if (a->cancel_efd >= 0)
			close(a->cancel_efd);
		if (a->done_efd >= 0)
			close(a->done_efd);
		pthread_mutex_destroy(&a->lock);
		free(a);
		return ret;
	}
	*out = a;
	return 0;
}

void mig_tls_accept(struct mig_tls_acceptor *a, struct gw_channel *ch)
{
	struct pending *p = calloc(1, sizeof(*p));
	if (!p) {
		gw_channel_close(ch, NULL);
		return;
	}
	p->a = a;
	p->ch = *ch;
	pthread_mutex_lock(&a->lock);
	*a->tail = p;
	a->tail = &p->next;
	pthread_mutex_unlock(&a->lock);
	int ret = pthread_create(&p->thread, NULL, handshake_thread, p);
	if (ret) {
		uint64_t one = 1;
		pthread_mutex_lock(&a->lock);
		p->ret = gw_error_set(&p->err, -ret, "TLS handshake with %s: no thread: %s",
				      p->ch.desc, strerror(ret));
		p->finished = true;
		pthread_mutex_unlock(&a->lock);
		ssize_t n = write(a->done_efd, &one, sizeof(one));
		(void)n;
		return;
	}
	p->started = true;
}

void mig_tls_acceptor_free(struct mig_tls_acceptor *a)
{
	if (!a)
		return;
	loop_del_fd(a->loop, a->done_efd);
	if (a->delivering)
		a->freed = true;
	else
		acceptor_release(a);
}
