/*
 * TLS on a channel (godwit/tls.h): the handshake, then a record layer
 * behind a socket pair.
 *
 * Why a socket pair and not TLS calls in the stream code: every reader
 * and writer of the library (the stream, the return path, the multifd
 * channels, the page server) works on a plain fd with poll(), writev()
 * and shutdown(); behind the pair they stay as they are. Kernel TLS
 * (TCP_ULP "tls") would give the same plain fd without the extra copy,
 * but the kernels of these machines are built without it (no "tls" in
 * /proc/sys/net/ipv4/tcp_available_ulp), so the record layer is GnuTLS's.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <godwit/tls.h>

#include "lib/clock.h"
#include "lib/internal.h"

/* A TLS record carries at most 16 KiB; 16 of them per read of the pair
 * keep the system calls few without holding much. */
#define PUMP_BUF (256 << 10)

/*
 * The pair's buffer: a queue the source cannot see, since its writes
 * count as sent once they are in it. In trial runs (bench/tls.py) the
 * default (about 200 KiB) made the writer wait for the tx thread every
 * few records, and a dirtying guest's migration took three times as
 * long; 4 MiB hid enough from the switchover's estimate that draining it
 * doubled the downtime. 1 MiB had neither.
 */
#define PAIR_SNDBUF (1 << 20)

struct gw_tls_creds {
	atomic_uint refs;
	enum gw_tls_endpoint endpoint;
	bool verify_peer;
	gnutls_certificate_credentials_t x509;
};

struct gw_tls_creds *gw_tls_creds_ref(struct gw_tls_creds *c)
{
	atomic_fetch_add(&c->refs, 1);
	return c;
}

void gw_tls_creds_free(struct gw_tls_creds *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	gnutls_certificate_free_credentials(c->x509);
	free(c);
}

enum gw_tls_endpoint gw_tls_creds_endpoint(const struct gw_tls_creds *c)
{
	return c->endpoint;
}

/* dir/name, or an error naming it when it is not a readable file. */
static int creds_path(const char *dir, const char *name, char *out, size_t len,
		      struct gw_error *err)
{
	int n = snprintf(out, len, "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= len)
		return gw_error_set(err, -ENAMETOOLONG, "tls-creds dir '%s': path too long", dir);
	if (access(out, R_OK) < 0)
		return gw_error_set(err, -errno, "tls-creds: cannot read %s: %s", out,
				    gw_strerror(errno));
	return 0;
}

static int load_key_pair(struct gw_tls_creds *c, const char *dir, const char *cert, const char *key,
			 struct gw_error *err)
{
	char cpath[4096], kpath[4096];
	int ret = creds_path(dir, cert, cpath, sizeof(cpath), err);
	if (!ret)
		ret = creds_path(dir, key, kpath, sizeof(kpath), err);
	if (ret)
		return ret;
	ret = gnutls_certificate_set_x509_key_file(c->x509, cpath, kpath, GNUTLS_X509_FMT_PEM);
	if (ret < 0)
		return gw_error_set(err, -EINVAL, "tls-creds: loading %s with %s: %s", cpath, kpath,
				    gnutls_strerror(ret));
	return 0;
}

int gw_tls_creds_load(const char *dir, enum gw_tls_endpoint endpoint, bool verify_peer,
		      struct gw_tls_creds **out, struct gw_error *err)
{
	char ca[4096], probe[4096];
	int ret = creds_path(dir, "ca-cert.pem", ca, sizeof(ca), err);
	if (ret)
		return ret;
	struct gw_tls_creds *c = calloc(1, sizeof(*c));
	if (!c)
		return gw_error_set(err, -ENOMEM, "tls-creds: out of memory");
	atomic_init(&c->refs, 1);
	c->endpoint = endpoint;
	c->verify_peer = verify_peer;
	if (gnutls_certificate_allocate_credentials(&c->x509) < 0) {
		free(c);
		return gw_error_set(err, -ENOMEM, "tls-creds: out of memory");
	}
	ret = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
	if (ret <= 0)
		ret = gw_error_set(err, -EINVAL, "tls-creds: %s holds no CA certificate%s%s", ca,
				   ret < 0 ? ": " : "", ret < 0 ? gnutls_strerror(ret) : "");
	else if (endpoint == GW_TLS_SERVER)
		ret = load_key_pair(c, dir, "server-cert.pem", "server-key.pem", err);
	/* A client certificate is optional, as in QEMU: without one, only a
	 * server that does not verify its peers accepts the client. */
	else if (creds_path(dir, "client-cert.pem", probe, sizeof(probe), NULL) == 0)
		ret = load_key_pair(c, dir, "client-cert.pem", "client-key.pem", err);
	else
		ret = 0;
	if (ret) {
		gw_tls_creds_free(c);
		return ret;
	}
	*out = c;
	return 0;
}

/* --- the handshake -------------------------------------------------------- */

static bool is_ip_address(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/*
 * Tell the peer why we refuse it, so its side can say so too: the alert
 * closest to what the verification found. Best effort: the socket is
 * non-blocking, and an alert is a few bytes.
 */
static void send_refusal(gnutls_session_t s, int ret)
{
	unsigned status = gnutls_session_get_verify_cert_status(s);
	if (ret != GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR)
		gnutls_alert_send_appropriate(s, ret);
	else if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
		gnutls_alert_send(s, GNUTLS_AL_FATAL, GNUTLS_A_UNKNOWN_CA);
	else if (status & GNUTLS_CERT_EXPIRED)
		gnutls_alert_send(s, GNUTLS_AL_FATAL, GNUTLS_A_CERTIFICATE_EXPIRED);
	else
		gnutls_alert_send(s, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE);
}

/* Why the handshake failed, from the side that saw it. */
static int handshake_error(gnutls_session_t s, int ret, bool server, const char *desc,
			   struct gw_error *err)
{
	const char *peer = server ? "client" : "server";
	if (ret != GNUTLS_E_FATAL_ALERT_RECEIVED && ret != GNUTLS_E_WARNING_ALERT_RECEIVED &&
	    ret != GNUTLS_E_PREMATURE_TERMINATION && ret != GNUTLS_E_PULL_ERROR &&
	    ret != GNUTLS_E_PUSH_ERROR)
		send_refusal(s, ret);
	if (ret == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
		gnutls_datum_t why = {0};
		unsigned status = gnutls_session_get_verify_cert_status(s);
		gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
		/* GnuTLS ends each sentence with a space, the last one too. */
		for (size_t n = why.data ? strlen((char *)why.data) : 0;
		     n && why.data[n - 1] == ' ';)
			why.data[--n] = '\0';
		ret = gw_error_set(err, -EACCES,
				   "TLS handshake with %s: the %s's certificate was refused: %s",
				   desc, peer,
				   why.data ? (const char *)why.data : "unknown reason");
		gnutls_free(why.data);
		return ret;
	}
	if (ret == GNUTLS_E_NO_CERTIFICATE_FOUND || ret == GNUTLS_E_CERTIFICATE_REQUIRED)
		return gw_error_set(err, -EACCES,
				    "TLS handshake with %s: the %s sent no certificate, and verify-peer requires one",
				    desc, peer);
	if (ret == GNUTLS_E_FATAL_ALERT_RECEIVED || ret == GNUTLS_E_WARNING_ALERT_RECEIVED)
		return gw_error_set(err, -EACCES,
				    "TLS handshake with %s: the %s refused the handshake: %s", desc,
				    peer, gnutls_alert_get_name(gnutls_alert_get(s)));
	if (ret == GNUTLS_E_PREMATURE_TERMINATION || ret == GNUTLS_E_PULL_ERROR ||
	    ret == GNUTLS_E_PUSH_ERROR)
		return gw_error_set(err, -ECONNRESET,
				    "TLS handshake with %s: the %s closed the connection (does it have tls-creds set?)",
				    desc, peer);
	if (ret == GNUTLS_E_UNEXPECTED_PACKET_LENGTH ||
	    ret == GNUTLS_E_UNSUPPORTED_VERSION_PACKET || ret == GNUTLS_E_UNEXPECTED_PACKET)
		return gw_error_set(err, -EPROTO,
				    "TLS handshake with %s: the %s does not speak TLS (does it have tls-creds set?): %s",
				    desc, peer, gnutls_strerror(ret));
	return gw_error_set(err, -EPROTO, "TLS handshake with %s: %s", desc, gnutls_strerror(ret));
}

/* QEMU's authz-simple: the client certificate's DN must be the one named. */
static int check_authz(gnutls_session_t s, const char *want, const char *desc, struct gw_error *err)
{
	unsigned n = 0;
	const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
	gnutls_x509_crt_t crt;
	char dn[1024];
	size_t len = sizeof(dn);
	int ret = -1;
	if (!certs || !n)
		return gw_error_set(err, -EACCES,
				    "TLS handshake with %s: tls-authz needs the client's certificate, and it sent none",
				    desc);
	if (gnutls_x509_crt_init(&crt) < 0)
		return gw_error_set(err, -ENOMEM, "TLS handshake with %s: out of memory", desc);
	if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) >= 0)
		ret = gnutls_x509_crt_get_dn(crt, dn, &len);
	gnutls_x509_crt_deinit(crt);
	if (ret < 0)
		return gw_error_set(err, -EACCES,
				    "TLS handshake with %s: cannot read the client certificate's name",
				    desc);
	if (strcmp(dn, want)) {
		gnutls_alert_send(s, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
		return gw_error_set(err, -EACCES,
				    "TLS handshake with %s: tls-authz refused the client '%s' (allowed: '%s')",
				    desc, dn, want);
	}
	return 0;
}

static int session_new(gnutls_session_t *out, struct gw_tls_creds *c, const struct gw_tls_params *p,
		       int fd, struct gw_error *err)
{
	bool server = c->endpoint == GW_TLS_SERVER;
	gnutls_session_t s;
	/* A client sends its certificate even when its issuer is not among
	 * those the server names: the server then says it does not trust
	 * it, rather than that none came. */
	int ret = gnutls_init(&s,
			      (server ? GNUTLS_SERVER : GNUTLS_CLIENT | GNUTLS_FORCE_CLIENT_CERT) |
				      GNUTLS_NONBLOCK);
	if (ret < 0)
		return gw_error_set(err, -ENOMEM, "TLS: %s", gnutls_strerror(ret));
	ret = gnutls_set_default_priority(s);
	if (ret >= 0)
		ret = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c->x509);
	if (ret >= 0 && server)
		gnutls_certificate_server_set_request(s, c->verify_peer ? GNUTLS_CERT_REQUIRE :
									  GNUTLS_CERT_IGNORE);
	/* SNI carries names, never addresses (RFC 6066). */
	if (ret >= 0 && !server && p->hostname && !is_ip_address(p->hostname))
		ret = gnutls_server_name_set(s, GNUTLS_NAME_DNS, p->hostname, strlen(p->hostname));
	/* Verified inside the handshake: a refusal is an alert the peer sees,
	 * so both sides can say why. */
	if (ret >= 0 && c->verify_peer)
		gnutls_session_set_verify_cert(s, server ? NULL : p->hostname, 0);
	if (ret < 0) {
		gnutls_deinit(s);
		return gw_error_set(err, -EINVAL, "TLS: %s", gnutls_strerror(ret));
	}
	gnutls_transport_set_int(s, fd);
	*out = s;
	return 0;
}

/* Wait after GNUTLS_E_AGAIN: 0, or the error with the reason in err. */
static int handshake_wait(gnutls_session_t s, const struct gw_tls_params *p, bool server,
			  uint64_t deadline, const char *desc, struct gw_error *err)
{
	int w = gw_wait_fd(gnutls_transport_get_int(s),
			   gnutls_record_get_direction(s) ? POLLOUT : POLLIN, p->cancel_fd,
			   deadline);
	if (w == -ECANCELED)
		return gw_error_set(err, w, "TLS handshake with %s: cancelled", desc);
	if (w == -ETIMEDOUT)
		return gw_error_set(err, w,
				    "TLS handshake with %s: the %s did not answer within %u ms (does it have tls-creds set?)",
				    desc, server ? "client" : "server", p->timeout_ms);
	if (w)
		return gw_error_set(err, w, "TLS handshake with %s: poll: %s", desc,
				    gw_strerror(-w));
	return 0;
}

/*
 * The handshake, then the server's word that it accepts the client: in
 * TLS 1.3 the client finishes its handshake before the server has
 * checked the client's certificate, so without it a refused source
 * would only learn of the refusal from a broken stream, after it had
 * started. The word is one byte, ACCEPTED, the first of the stream.
 */
#define ACCEPTED 0x01

static int handshake(gnutls_session_t s, struct gw_tls_creds *c, const struct gw_tls_params *p,
		     const char *desc, struct gw_error *err)
{
	bool server = c->endpoint == GW_TLS_SERVER;
	uint64_t deadline = gw_now_ns() + (uint64_t)p->timeout_ms * 1000000;
	const unsigned char accepted = ACCEPTED;
	unsigned char word = 0;
	int ret;
	while ((ret = gnutls_handshake(s)) < 0) {
		if (gnutls_error_is_fatal(ret))
			return handshake_error(s, ret, server, desc, err);
		if ((ret = handshake_wait(s, p, server, deadline, desc, err)) != 0)
			return ret;
	}
	if (server && p->authz_dn && (ret = check_authz(s, p->authz_dn, desc, err)) != 0)
		return ret;
	for (;;) {
		ssize_t n = server ? gnutls_record_send(s, &accepted, 1) :
				     gnutls_record_recv(s, &word, 1);
		if (n == 1 && (server || word == ACCEPTED))
			return 0;
		if (n >= 0)
			return gw_error_set(err, -EPROTO,
					    "TLS handshake with %s: the server %s instead of accepting",
					    desc, n ? "sent something else" : "closed the session");
		if (gnutls_error_is_fatal((int)n))
			return handshake_error(s, (int)n, server, desc, err);
		if ((ret = handshake_wait(s, p, server, deadline, desc, err)) != 0)
			return ret;
	}
}

/* --- the record layer ----------------------------------------------------- */

/*
 * Two threads per channel: tx reads what the library writes into the
 * pair and sends it as records; rx receives records and writes their
 * plaintext into the pair. The library's end of the pair closing (or a
 * shutdown(2) of it, a cancel) ends both; the last thread out frees.
 */
struct pump {
	gnutls_session_t s;
	struct gw_tls_creds *creds;
	int net;   /* the TCP socket, non-blocking */
	int local; /* our end of the pair, blocking */
	atomic_uint threads;
	uint64_t drain_deadline; /* tx: the library's end is gone; send until then */
};

/* What the library wrote before it closed its end still goes to the peer
 * (a stream's last bytes), if the peer takes it within this long; a peer
 * that reads nothing more cannot hold the thread and the socket. */
#define DRAIN_MS 30000

static void pump_put(struct pump *pm)
{
	if (atomic_fetch_sub(&pm->threads, 1) != 1)
		return;
	gnutls_deinit(pm->s);
	gw_tls_creds_free(pm->creds);
	close(pm->net);
	close(pm->local);
	free(pm);
}

/*
 * rx: wait for the peer's records. false once the library's end of the
 * pair is gone (closed, or shut down by a cancel): nobody is left to
 * read what the peer sends.
 */
static bool wait_to_receive(struct pump *pm)
{
	struct pollfd p[2] = {{.fd = pm->net, .events = POLLIN}, {.fd = pm->local}};
	while (poll(p, 2, -1) < 0)
		if (errno != EINTR)
			return false;
	return !(p[1].revents & (POLLHUP | POLLERR | POLLNVAL));
}

/* Room on the socket for what tx holds: false once the socket failed,
 * or the drain after the library's end went away timed out. */
static bool wait_to_send(struct pump *pm)
{
	struct pollfd p[2] = {{.fd = pm->net, .events = POLLOUT}, {.fd = pm->local}};
	for (;;) {
		int timeout = -1, nfds = 2;
		if (pm->drain_deadline) {
			uint64_t now = gw_now_ns();
			if (now >= pm->drain_deadline)
				return false;
			timeout = (int)((pm->drain_deadline - now + 999999) / 1000000);
			nfds = 1;
		}
		int n = poll(p, (nfds_t)nfds, timeout);
		if (n < 0 && errno != EINTR)
			return false;
		if (n > 0 && p[0].revents)
			return true;
		if (n > 0 && nfds == 2 && (p[1].revents & (POLLHUP | POLLERR | POLLNVAL)))
			pm->drain_deadline = gw_now_ns() + (uint64_t)DRAIN_MS * 1000000;
	}
}

static bool send_record_data(struct pump *pm, const char *buf, size_t n)
{
	while (n) {
		ssize_t k = gnutls_record_send(pm->s, buf, n);
		if (k > 0) {
			buf += k;
			n -= (size_t)k;
		} else if (k != GNUTLS_E_AGAIN && k != GNUTLS_E_INTERRUPTED) {
			return false;
		} else if (!wait_to_send(pm)) {
			return false;
		}
	}
	return true;
}

static void *pump_tx(void *opaque)
{
	struct pump *pm = opaque;
	char *buf = malloc(PUMP_BUF);
	ssize_t n = -1;
	pthread_setname_np(pthread_self(), "gw-tls-tx");
	while (buf && (n = read(pm->local, buf, PUMP_BUF)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || !send_record_data(pm, buf, (size_t)n))
			break;
	}
	free(buf);
	/* The end of our stream: close_notify, so the peer's reader tells a
	 * finished stream from a cut connection; the rest is best effort. */
	if (n == 0 && gnutls_bye(pm->s, GNUTLS_SHUT_WR) == GNUTLS_E_AGAIN && wait_to_send(pm))
		gnutls_bye(pm->s, GNUTLS_SHUT_WR);
	shutdown(pm->net, n == 0 ? SHUT_WR : SHUT_RDWR);
	pump_put(pm);
	return NULL;
}

static bool write_local(struct pump *pm, const char *buf, size_t n)
{
	while (n) {
		ssize_t k = send(pm->local, buf, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return false;
		buf += k;
		n -= (size_t)k;
	}
	return true;
}

static void *pump_rx(void *opaque)
{
	struct pump *pm = opaque;
	char *buf = malloc(PUMP_BUF);
	pthread_setname_np(pthread_self(), "gw-tls-rx");
	while (buf) {
		ssize_t n = gnutls_record_recv(pm->s, buf, PUMP_BUF);
		if (n > 0 && write_local(pm, buf, (size_t)n))
			continue;
		if ((n == GNUTLS_E_AGAIN && wait_to_receive(pm)) || n == GNUTLS_E_INTERRUPTED)
			continue;
		break;
	}
	free(buf);
	/* The peer's stream ended (close_notify, or the connection broke):
	 * our reader sees the end; a stream cut short is the stream
	 * format's to detect. */
	shutdown(pm->local, SHUT_WR);
	pump_put(pm);
	return NULL;
}

/* On failure, s is freed; ch->fd is still the socket, or -1 when the
 * started thread took it along (it closes it as it ends). */
static int pump_start(struct gw_channel *ch, gnutls_session_t s, struct gw_tls_creds *c,
		      struct gw_error *err)
{
	int pair[2], size = PAIR_SNDBUF;
	struct pump *pm = malloc(sizeof(*pm));
	if (!pm || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
		int e = pm ? errno : ENOMEM;
		free(pm);
		gnutls_deinit(s);
		return gw_error_set(err, -e, "TLS on %s: socketpair: %s", ch->desc, gw_strerror(e));
	}
	setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	setsockopt(pair[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	gw_tls_creds_ref(c);
	*pm = (struct pump){.s = s, .creds = c, .net = ch->fd, .local = pair[1]};
	atomic_init(&pm->threads, 2);
	pthread_attr_t attr;
	pthread_t t;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int ret = pthread_create(&t, &attr, pump_tx, pm);
	if (ret) {
		atomic_init(&pm->threads, 1);
		pm->net = -1;
		pump_put(pm);
	} else if ((ret = pthread_create(&t, &attr, pump_rx, pm)) != 0) {
		/* tx ends once it reads the end of the pair, and frees alone. */
		ch->fd = -1;
		pump_put(pm);
	}
	pthread_attr_destroy(&attr);
	if (ret) {
		close(pair[0]);
		return gw_error_set(err, -ret, "TLS on %s: starting its thread: %s", ch->desc,
				    gw_strerror(ret));
	}
	ch->fd = pair[0];
	ch->nonblocking = false;
	size_t used = strnlen(ch->desc, sizeof(ch->desc) - 1);
	snprintf(ch->desc + used, sizeof(ch->desc) - used, " (TLS)");
	return 0;
}

int gw_tls_wrap(struct gw_channel *ch, struct gw_tls_creds *c, const struct gw_tls_params *p,
		struct gw_error *err)
{
	struct stat st;
	if (fstat(ch->fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		return gw_error_set(err, -EINVAL, "TLS on %s: needs a connected socket", ch->desc);
	if (c->endpoint == GW_TLS_CLIENT && c->verify_peer && (!p->hostname || !*p->hostname))
		return gw_error_set(err, -EINVAL,
				    "TLS on %s: no name to check the server's certificate against: set tls-hostname",
				    ch->desc);
	int flags = fcntl(ch->fd, F_GETFL);
	if (flags < 0 || fcntl(ch->fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return gw_error_set(err, -errno, "TLS on %s: fcntl: %s", ch->desc,
				    gw_strerror(errno));
	gnutls_session_t s = NULL;
	int ret = session_new(&s, c, p, ch->fd, err);
	if (ret)
		return ret;
	ret = handshake(s, c, p, ch->desc, err);
	if (ret)
		gnutls_deinit(s);
	else
		ret = pump_start(ch, s, c, err);
	return ret;
}
