/*
 * TLS for the VMM's migrations: migrate-set-parameters' tls-creds,
 * tls-hostname and tls-authz, resolved into what gw_tls_wrap() needs when
 * a migration starts; the source's handshakes (on its connect thread);
 * and the destination's, which run off the main loop and hand their
 * channels back to it in the order the connections came, so the main
 * stream is still the first and the multifd channels follow.
 */
#ifndef GW_VMM_MIG_TLS_H
#define GW_VMM_MIG_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <godwit/channel.h>
#include <godwit/tls.h>

struct vmm;
struct loop;

/* The parameters, as set ("" = unset; tls-creds "" = no TLS). */
struct mig_tls_settings {
	char creds[128];
	char hostname[256];
	char authz[128];
};

/* What one migration uses, resolved at its start. */
struct mig_tls {
	struct gw_tls_creds *creds; /* own reference; NULL: no TLS */
	char hostname[256];         /* source: the name the server must have */
	char authz_dn[1024];        /* destination: the client's DN, "" = any */
};

/*
 * Resolve s for a migration to (source) or from (destination) uri: the
 * objects must exist and fit the direction, the URI must be a socket.
 * 0 (out->creds NULL when tls-creds is unset), or -errno with errmsg.
 * Main loop.
 */
int mig_tls_resolve(struct vmm *vm, const struct mig_tls_settings *s, const char *uri,
		    bool incoming, struct mig_tls *out, char *errmsg, size_t errlen);
void mig_tls_release(struct mig_tls *t);

/* Source: TLS on a connected channel, when t has credentials. Any thread. */
int mig_tls_client(const struct mig_tls *t, struct gw_channel *ch, int cancel_fd,
		   struct gw_error *err);

/* Destination. fn runs on the loop for each accepted channel, in accept
 * order, once its handshake is over: ret 0 and ch to take, or ret < 0,
 * msg saying why, and ch already closed. */
typedef void (*mig_tls_accepted_fn)(void *opaque, struct gw_channel *ch, int ret, const char *msg);
struct mig_tls_acceptor;
/* t must outlive the acceptor. */
int mig_tls_acceptor_new(struct loop *loop, const struct mig_tls *t, mig_tls_accepted_fn fn,
			 void *opaque, struct mig_tls_acceptor **out);
/* Take ch and run its handshake on a thread. */
void mig_tls_accept(struct mig_tls_acceptor *a, struct gw_channel *ch);
/* End the handshakes still running, close what they yielded. Safe from
 * inside fn. */
void mig_tls_acceptor_free(struct mig_tls_acceptor *a);

#endif
