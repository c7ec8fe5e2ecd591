/*
 * TLS on a migration channel, with mutual X.509 authentication (GnuTLS).
 *
 * TLS is one more layer of a connected channel, put on by the side that
 * made it: the source after gw_channel_connect(), the destination after
 * gw_listener_accept(). gw_tls_wrap() runs the handshake on the socket
 * and, once both sides have verified each other, swaps the channel's fd
 * for one end of a socket pair whose other end a record layer (two
 * threads: one encrypts what we write, one decrypts what the peer sends)
 * serves. The rest of the library keeps using a plain stream fd: the
 * stream, the return path and multifd channels need no TLS code, and
 * shutdown(2) on the fd still tells the peer the stream is over.
 *
 * Credentials are laid out as QEMU's tls-creds-x509 object reads them:
 * a directory with ca-cert.pem, and server-cert.pem + server-key.pem
 * (server) or client-cert.pem + client-key.pem (client, optional: a
 * server that verifies its peers refuses a client without them).
 *
 * No global state: a gw_tls_creds is shared, read-only, by the handshakes
 * and record layers that use it (reference counted), and freed by the
 * last one.
 */
#ifndef GODWIT_TLS_H
#define GODWIT_TLS_H

#include <stdbool.h>

#include <godwit/channel.h>
#include <godwit/error.h>
#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

enum gw_tls_endpoint {
	GW_TLS_SERVER, /* the destination: accepts, presents server-cert.pem */
	GW_TLS_CLIENT, /* the source: connects, presents client-cert.pem */
};

struct gw_tls_creds;

/*
 * Load dir's certificates for endpoint. verify_peer: check the peer's
 * certificate against ca-cert.pem (and, on a client, its name); a server
 * then requires one. A missing or unreadable file fails here, naming it.
 */
GW_API int gw_tls_creds_load(const char *dir, enum gw_tls_endpoint endpoint, bool verify_peer,
			     struct gw_tls_creds **out, struct gw_error *err);

/* Another reference to c, for a user that may outlive the caller's
 * (a migration that uses credentials an object-del may drop). */
GW_API struct gw_tls_creds *gw_tls_creds_ref(struct gw_tls_creds *c);

GW_API enum gw_tls_endpoint gw_tls_creds_endpoint(const struct gw_tls_creds *c);

/* Drop the caller's reference; channels wrapped with c keep theirs. */
GW_API void gw_tls_creds_free(struct gw_tls_creds *c);

struct gw_tls_params {
	/* client: the name the server's certificate must carry (a DNS name or
	 * an IP address); NULL skips the check (only with verify_peer off) */
	const char *hostname;
	/* server: the distinguished name the client's certificate must have
	 * (QEMU's authz-simple identity, as gnutls_x509_crt_get_dn prints
	 * it); NULL accepts any certificate the CA signed */
	const char *authz_dn;
	/* the handshake gives up after this long (a peer that never speaks) */
	unsigned timeout_ms;
	/* readable: give up now (-ECANCELED); -1 for none (channel.h) */
	int cancel_fd;
};

/*
 * Handshake on ch (a connected stream socket) as c's endpoint, then put
 * the record layer in front of it: on success ch->fd is the plain side,
 * and closing it (gw_channel_close) ends the TLS session and the socket.
 * On failure the caller still closes ch (its fd may already be -1);
 * err says what the peer or we refused ("the server's certificate was refused: The
 * certificate is NOT trusted. The certificate issuer is unknown.").
 */
GW_API int gw_tls_wrap(struct gw_channel *ch, struct gw_tls_creds *c, const struct gw_tls_params *p,
		       struct gw_error *err);

#ifdef __cplusplus
}
#endif

#endif
