/*
 * TLS on a channel (godwit/tls.h) over a socket pair, with certificates
 * this test makes itself (GnuTLS's X.509 API, in a temporary directory
 * laid out as QEMU's tls-creds-x509 reads it): data crosses both ways
 * intact and the end of a stream is seen; a CA the other side does not
 * trust, a name the certificate does not carry and a client without a
 * certificate are refused on both sides with the reason; a peer that
 * never answers is left on a cancel and on the timeout; credentials that
 * are missing are named.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <godwit/tls.h>

#include "check.h"

#define DATA_SIZE (4u << 20)

static char tmpdir[64];

struct pki_item {
	gnutls_x509_privkey_t key;
	gnutls_x509_crt_t crt;
};

static void free_item(struct pki_item *it)
{
	gnutls_x509_crt_deinit(it->crt);
	gnutls_x509_privkey_deinit(it->key);
}

static void write_datum(const char *dir, const char *name, const gnutls_datum_t *d)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	CHECK(f && fwrite(d->data, 1, d->size, f) == d->size);
	fclose(f);
}

/* A certificate for cn, signed by ca (NULL: self-signed, a CA). */
static void make_cert(struct pki_item *it, const char *cn, const struct pki_item *ca, bool server)
{
	time_t now = time(NULL);
	unsigned char serial[8];
	static uint8_t next_serial;
	memset(serial, 0, sizeof(serial));
	serial[7] = ++next_serial;
	CHECK(gnutls_x509_privkey_init(&it->key) == 0);
	CHECK(gnutls_x509_privkey_generate(it->key, GNUTLS_PK_ECDSA,
					   GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
					   0) == 0);
	CHECK(gnutls_x509_crt_init(&it->crt) == 0);
	CHECK(gnutls_x509_crt_set_version(it->crt, 3) == 0);
	CHECK(gnutls_x509_crt_set_serial(it->crt, serial, sizeof(serial)) == 0);
	CHECK(gnutls_x509_crt_set_activation_time(it->crt, now - 3600) == 0);
	CHECK(gnutls_x509_crt_set_expiration_time(it->crt, now + 86400) == 0);
	CHECK(gnutls_x509_crt_set_dn_by_oid(it->crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
					    (unsigned)strlen(cn)) == 0);
	CHECK(gnutls_x509_crt_set_key(it->crt, it->key) == 0);
	CHECK(gnutls_x509_crt_set_basic_constraints(it->crt, ca == NULL, -1) == 0);
	if (!ca) {
		CHECK(gnutls_x509_crt_set_key_usage(it->crt, GNUTLS_KEY_KEY_CERT_SIGN) == 0);
	} else {
		CHECK(gnutls_x509_crt_set_key_usage(it->crt, GNUTLS_KEY_DIGITAL_SIGNATURE) == 0);
		CHECK(gnutls_x509_crt_set_key_purpose_oid(it->crt,
							  server ? GNUTLS_KP_TLS_WWW_SERVER :
								   GNUTLS_KP_TLS_WWW_CLIENT,
							  0) == 0);
		CHECK(gnutls_x509_crt_set_subject_alt_name(it->crt, GNUTLS_SAN_DNSNAME, cn,
							   (unsigned)strlen(cn),
							   GNUTLS_FSAN_SET) == 0);
	}
	CHECK(gnutls_x509_crt_sign2(it->crt, ca ? ca->crt : it->crt, ca ? ca->key : it->key,
				    GNUTLS_DIG_SHA256, 0) == 0);
}

/* dir/ with ca-cert.pem from ca, and the endpoint's pair from leaf (or none). */
static const char *endpoint_dir(const char *name, const struct pki_item *ca,
				const struct pki_item *leaf, bool server)
{
	static char dirs[8][128];
	static int n;
	char *dir = dirs[n++ % 8];
	gnutls_datum_t d;
	snprintf(dir, sizeof(dirs[0]), "%s/%s", tmpdir, name);
	CHECK(mkdir(dir, 0700) == 0);
	CHECK(gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM, &d) == 0);
	write_datum(dir, "ca-cert.pem", &d);
	gnutls_free(d.data);
	if (!leaf)
		return dir;
	CHECK(gnutls_x509_crt_export2(leaf->crt, GNUTLS_X509_FMT_PEM, &d) == 0);
	write_datum(dir, server ? "server-cert.pem" : "client-cert.pem", &d);
	gnutls_free(d.data);
	CHECK(gnutls_x509_privkey_export2(leaf->key, GNUTLS_X509_FMT_PEM, &d) == 0);
	write_datum(dir, server ? "server-key.pem" : "client-key.pem", &d);
	gnutls_free(d.data);
	return dir;
}

struct side {
	struct gw_channel ch;
	struct gw_tls_creds *creds;
	struct gw_tls_params p;
	int ret;
	struct gw_error err;
};

static void *wrap_thread(void *opaque)
{
	struct side *s = opaque;
	s->ret = gw_tls_wrap(&s->ch, s->creds, &s->p, &s->err);
	return NULL;
}

/* Both handshakes at once over a fresh socket pair. */
static void handshake_pair(struct side *srv, struct side *cli)
{
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	srv->ch = (struct gw_channel){.fd = sv[0], .bidirectional = true, .is_socket = true};
	cli->ch = (struct gw_channel){.fd = sv[1], .bidirectional = true, .is_socket = true};
	snprintf(srv->ch.desc, sizeof(srv->ch.desc), "test server");
	snprintf(cli->ch.desc, sizeof(cli->ch.desc), "test client");
	pthread_t t;
	CHECK(pthread_create(&t, NULL, wrap_thread, srv) == 0);
	wrap_thread(cli);
	pthread_join(t, NULL);
}

static struct gw_tls_creds *load(const char *dir, enum gw_tls_endpoint ep)
{
	struct gw_error err = {0};
	struct gw_tls_creds *c;
	CHECK_OK(gw_tls_creds_load(dir, ep, true, &c, &err), &err);
	return c;
}

static void sides(struct side *srv, struct side *cli, const char *srv_dir, const char *cli_dir,
		  const char *hostname)
{
	*srv = (struct side){.creds = load(srv_dir, GW_TLS_SERVER),
			     .p = {.timeout_ms = 30000, .cancel_fd = -1}};
	*cli = (struct side){.creds = load(cli_dir, GW_TLS_CLIENT),
			     .p = {.hostname = hostname, .timeout_ms = 30000, .cancel_fd = -1}};
}

static void release(struct side *s)
{
	if (s->ch.fd >= 0)
		close(s->ch.fd);
	gw_tls_creds_free(s->creds);
}

static void *send_data(void *opaque)
{
	struct side *s = opaque;
	unsigned char *buf = malloc(DATA_SIZE);
	CHECK(buf);
	for (size_t i = 0; i < DATA_SIZE; i++)
		buf[i] = (unsigned char)(i * 7 + i / 4096);
	for (size_t off = 0; off < DATA_SIZE;) {
		ssize_t n = write(s->ch.fd, buf + off, DATA_SIZE - off);
		CHECK(n > 0);
		off += (size_t)n;
	}
	free(buf);
	CHECK(shutdown(s->ch.fd, SHUT_WR) == 0);
	return NULL;
}

/* What from sent arrives at to, whole, then the end of the stream. */
static void check_carries(struct side *from, struct side *to)
{
	pthread_t t;
	unsigned char *got = malloc(DATA_SIZE + 1);
	size_t have = 0;
	ssize_t n;
	CHECK(got && pthread_create(&t, NULL, send_data, from) == 0);
	while ((n = read(to->ch.fd, got + have, DATA_SIZE + 1 - have)) > 0)
		have += (size_t)n;
	pthread_join(t, NULL);
	CHECK(n == 0 && have == DATA_SIZE);
	for (size_t i = 0; i < DATA_SIZE; i++)
		if (got[i] != (unsigned char)(i * 7 + i / 4096))
			FAIL("byte %zu differs", i);
	free(got);
}

static void test_carries_both_ways(const char *srv_dir, const char *cli_dir)
{
	struct side srv, cli;
	sides(&srv, &cli, srv_dir, cli_dir, "localhost");
	handshake_pair(&srv, &cli);
	CHECK_OK(cli.ret, &cli.err);
	CHECK_OK(srv.ret, &srv.err);
	CHECK(strstr(cli.ch.desc, "(TLS)"));
	check_carries(&cli, &srv);
	check_carries(&srv, &cli);
	release(&srv);
	release(&cli);
}

/* Both sides fail, each message naming what was refused. */
static void test_refused(const char *what, const char *srv_dir, const char *cli_dir,
			 const char *hostname, const char *cli_says, const char *srv_says)
{
	struct side srv, cli;
	sides(&srv, &cli, srv_dir, cli_dir, hostname);
	handshake_pair(&srv, &cli);
	if (cli.ret != -EACCES || !strstr(cli.err.msg, cli_says))
		FAIL("%s: client %d: %s", what, cli.ret, cli.err.msg);
	if (srv.ret != -EACCES || !strstr(srv.err.msg, srv_says))
		FAIL("%s: server %d: %s", what, srv.ret, srv.err.msg);
	release(&srv);
	release(&cli);
}

/* A server that never speaks: the client waits until cancelled, or
 * until its timeout. */
static void test_silent_server(const char *cli_dir)
{
	struct gw_error err = {0};
	int sv[2], efd = eventfd(1, EFD_CLOEXEC);
	CHECK(efd >= 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct gw_channel ch = {.fd = sv[1], .bidirectional = true, .is_socket = true};
	snprintf(ch.desc, sizeof(ch.desc), "silent");
	struct gw_tls_creds *c = load(cli_dir, GW_TLS_CLIENT);
	struct gw_tls_params p = {.hostname = "localhost", .timeout_ms = 30000, .cancel_fd = efd};
	CHECK_ERR(gw_tls_wrap(&ch, c, &p, &err), -ECANCELED, &err, "silent", "cancelled");
	CHECK(ch.fd == sv[1]);
	p = (struct gw_tls_params){.hostname = "localhost", .timeout_ms = 100, .cancel_fd = -1};
	CHECK_ERR(gw_tls_wrap(&ch, c, &p, &err), -ETIMEDOUT, &err, "did not answer within 100 ms");
	gw_tls_creds_free(c);
	close(sv[0]);
	close(sv[1]);
	close(efd);
}

static void test_missing_creds(const char *cli_dir)
{
	struct gw_error err = {0};
	struct gw_tls_creds *c;
	char nowhere[160];
	snprintf(nowhere, sizeof(nowhere), "%s/nowhere", tmpdir);
	CHECK_ERR(gw_tls_creds_load(nowhere, GW_TLS_CLIENT, true, &c, &err), -ENOENT, &err,
		  "ca-cert.pem");
	/* A client dir holds no server pair. */
	CHECK_ERR(gw_tls_creds_load(cli_dir, GW_TLS_SERVER, true, &c, &err), -ENOENT, &err,
		  "server-cert.pem");
}

int main(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/gw-test-tls-XXXXXX");
	CHECK(mkdtemp(tmpdir));
	struct pki_item ca, rogue, server, client, other;
	make_cert(&ca, "godwit test CA", NULL, false);
	make_cert(&rogue, "rogue CA", NULL, false);
	make_cert(&server, "localhost", &ca, true);
	make_cert(&client, "godwit-source", &ca, false);
	make_cert(&other, "elsewhere.example", &ca, true);
	const char *srv = endpoint_dir("srv", &ca, &server, true);
	const char *cli = endpoint_dir("cli", &ca, &client, false);

	test_carries_both_ways(srv, cli);
	test_refused("rogue CA at the client", srv,
		     endpoint_dir("cli-rogue", &rogue, &client, false), "localhost",
		     "issuer is unknown", "the client refused the handshake");
	test_refused("rogue CA at the server", endpoint_dir("srv-rogue", &rogue, &server, true),
		     cli, "localhost", "the server refused the handshake",
		     "the client's certificate was refused");
	test_refused("another name", endpoint_dir("srv-other", &ca, &other, true), cli, "localhost",
		     "does not match", "the client refused the handshake");
	test_refused("no client certificate", srv, endpoint_dir("cli-none", &ca, NULL, false),
		     "localhost", "the server refused the handshake", "sent no certificate");
	test_silent_server(cli);
	test_missing_creds(cli);

	struct pki_item *items[] = {&ca, &rogue, &server, &client, &other};
	for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++)
		free_item(items[i]);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	CHECK(system(cmd) == 0);
	puts("tls: ok");
	return 0;
}
