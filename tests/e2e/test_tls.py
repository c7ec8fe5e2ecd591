#!/usr/bin/env python3
"""TLS: a migration over tcp: with mutual X.509 authentication, driven
with QEMU's interface (object-add tls-creds-x509, migrate-set-parameters
tls-creds / tls-hostname / tls-authz), as libvirt drives it.

The test makes its own certificates with certtool (gnutls-bin): a CA, a
second CA nobody trusts, a server certificate for localhost and
127.0.0.1, one for another name, an expired one, a client certificate.
Cases: the dirtier guest migrates with both sides verifying each other
(the destination's RAM equals the source's at the switchover, the guest
checks itself there), over 2 multifd channels too, and with an
authz-simple naming the client; each refusal (a CA the other side does
not trust, on either side; an expired server certificate; a wrong
tls-hostname; a client without a certificate; a client the authz does
not name) fails both sides with the reason, the source guest running
and checking itself, the destination never running what it has; a
migrate-cancel while the handshake waits for a server that never
speaks ends it; TLS on a URI without a connection is refused; a
post-copy whose connection is cut resumes over a new TLS connection (the
recovery's handshake inside it), and ends with the source's RAM.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

import gwtest
from gwtest import Vmm, assert_destination_refused, dirtier, free_port, migrate_and_check, \
    wait_migration

CLIENT_DN = "CN=godwit-source"
# The record layer is a copy and two threads more on a 2-core machine
# that others use too: a generous downtime limit lets the dirtier
# converge however busy the machine is (what is tested is what arrives).
CONVERGE = {"max-bandwidth": 10 << 30, "downtime-limit": 2000}


class Pki:
    """Certificates in QEMU's layout: one directory per endpoint."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gw-tls-")
        self.ca("ca")
        self.ca("rogue-ca")
        self.cert("server", "ca", ['cn = "localhost"', 'dns_name = "localhost"',
                                   'ip_address = "127.0.0.1"', "tls_www_server"])
        self.cert("wrong-name", "ca", ['cn = "elsewhere.example"',
                                       'dns_name = "elsewhere.example"', "tls_www_server"])
        self.cert("expired", "ca", ['cn = "localhost"', 'dns_name = "localhost"',
                                    'ip_address = "127.0.0.1"', "tls_www_server",
                                    'activation_date = "2020-01-01 00:00:00"',
                                    'expiration_date = "2020-01-02 00:00:00"'], days=False)
        self.cert("client", "ca", ['cn = "godwit-source"', "tls_www_client"])

    def path(self, name):
        return os.path.join(self.dir, name)

    def certtool(self, *args):
        subprocess.run(["certtool", *args], check=True, capture_output=True)

    def template(self, name, lines):
        with open(self.path(name + ".info"), "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.path(name + ".info")

    def ca(self, name):
        self.certtool("--generate-privkey", "--key-type=ecdsa", "--outfile",
                      self.path(name + "-key.pem"))
        info = self.template(name, [f'cn = "godwit test {name}"', "ca", "cert_signing_key",
                                    "expiration_days = 2"])
        self.certtool("--generate-self-signed", "--load-privkey", self.path(name + "-key.pem"),
                      "--template", info, "--outfile", self.path(name + "-cert.pem"))

    def cert(self, name, ca, lines, days=True):
        self.certtool("--generate-privkey", "--key-type=ecdsa", "--outfile",
                      self.path(name + "-key.pem"))
        info = self.template(name, lines + ["signing_key", "encryption_key"] +
                             (["expiration_days = 2"] if days else []))
        self.certtool("--generate-certificate", "--load-privkey", self.path(name + "-key.pem"),
                      "--load-ca-certificate", self.path(ca + "-cert.pem"),
                      "--load-ca-privkey", self.path(ca + "-key.pem"), "--template", info,
                      "--outfile", self.path(name + "-cert.pem"))

    def endpoint_dir(self, label, ca="ca", server=None, client="client"):
        """A directory as tls-creds-x509 reads it: ca-cert.pem and the
        endpoint's pair (server-* or client-*; client None: no pair)."""
        d = os.path.join(self.dir, label)
        os.makedirs(d)
        shutil.copy(self.path(ca + "-cert.pem"), os.path.join(d, "ca-cert.pem"))
        for role, name in (("server", server), ("client", client if not server else None)):
            if name:
                shutil.copy(self.path(name + "-cert.pem"), os.path.join(d, role + "-cert.pem"))
                shutil.copy(self.path(name + "-key.pem"), os.path.join(d, role + "-key.pem"))
        return d

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def add_creds(vm, endpoint, d, **extra):
    vm.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0", "dir": d,
                                "endpoint": endpoint, **extra})
    vm.qmp.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})


def tls_destination(src, uri, d, authz=None):
    """A destination as libvirt starts one for TLS: deferred, the
    credentials created, then migrate-incoming."""
    dst = Vmm(kernel=gwtest.DIRTIER, memory=src.memory, vcpus=src.vcpus,
              extra=["--incoming", "defer"])
    try:
        dst.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": True},
            {"capability": "events", "state": True}])
        add_creds(dst, "server", d)
        if authz:
            dst.qmp.cmd("object-add", **{"qom-type": "authz-simple", "id": "authz0",
                                         "identity": authz})
            dst.qmp.cmd("migrate-set-parameters", **{"tls-authz": "authz0"})
        dst.qmp.cmd("migrate-incoming", uri=uri)
    except BaseException:
        dst.kill()
        raise
    return dst


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()

    @classmethod
    def tearDownClass(cls):
        cls.pki.close()

    def dir(self, **kw):
        Tls.count = getattr(Tls, "count", 0) + 1
        return self.pki.endpoint_dir(f"d{Tls.count}", **kw)

    def hop(self, channels=0, authz=None):
        with dirtier(memory="128M", append="end=96M") as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            add_creds(src, "client", self.dir())
            p = src.qmp.cmd("query-migrate-parameters")
            self.assertEqual((p["tls-creds"], p["tls-hostname"], p["tls-authz"]),
                             ("tls0", "", ""), p)
            with tls_destination(src, uri, self.dir(server="server"), authz) as dst:
                for vm in (src, dst) if channels else ():
                    vm.qmp.cmd("migrate-set-capabilities",
                               capabilities=[{"capability": "multifd", "state": True}])
                    vm.qmp.cmd("migrate-set-parameters", **{"multifd-channels": channels})
                src.qmp.cmd("migrate-set-parameters", **CONVERGE)
                r = migrate_and_check(self, src, dst, uri)
                self.assertGreater(r["ram"]["transferred"], 64 << 20, r)
                self.assertEqual(r["x-godwit-tls"], "gnutls", r)
                self.assertEqual(dst.qmp.cmd("query-migrate")["x-godwit-tls"], "gnutls")

    def test_mutual_authentication(self):
        self.hop()

    def test_postcopy_recovered_over_tls(self):
        from test_postcopy import Link, SLOW_LINK
        with dirtier() as src:
            src.wait_passes(1)
            port = free_port()
            add_creds(src, "client", self.dir())
            with tls_destination(src, f"tcp:127.0.0.1:{port}", self.dir(server="server")) as dst:
                link = Link(port)
                self.addCleanup(link.cut)
                pc = [{"capability": "postcopy-ram", "state": True}]
                for vm in (src, dst):
                    vm.qmp.cmd("migrate-set-capabilities", capabilities=pc)
                src.qmp.cmd("migrate-set-capabilities",
                            capabilities=[{"capability": "events", "state": True}])
                dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 1 << 20})
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW_LINK,
                                                          "tls-hostname": "localhost"})
                src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{link.port}")
                gwtest.wait_until(lambda: src.qmp.cmd("query-migrate").get("ram", {})
                                  .get("dirty-sync-count", 0) >= 2, 60, "a second round")
                src.qmp.cmd("stop")
                src.qmp.cmd("migrate-start-postcopy")
                wait_migration(dst, statuses=("postcopy-active",), timeout=120)
                link.cut()
                for vm in (src, dst):
                    r = wait_migration(vm, statuses=("postcopy-paused",), timeout=60)
                dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
                uri = f"tcp:127.0.0.1:{free_port()}"
                dst.qmp.cmd("migrate-recover", uri=uri)
                src.qmp.cmd("migrate", uri=uri, resume=True)
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                d = wait_migration(dst, timeout=120)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-tls"], "gnutls", d)
                self.assertEqual(dst.ram_hash(), src.ram_hash())
                dst.qmp.cmd("cont")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_multifd_two_channels(self):
        self.hop(channels=2)

    def test_authz_names_the_client(self):
        self.hop(authz=CLIENT_DN)

    def test_socket_passed_with_getfd(self):
        """libvirt's way: it dials the destination, hands the socket over
        with getfd and names the destination with tls-hostname; without
        one there is no name to check and the migration is refused."""
        with dirtier(memory="128M", append="end=96M") as src:
            src.wait_passes(1)
            add_creds(src, "client", self.dir())
            with tls_destination(src, "tcp:127.0.0.1:0", self.dir(server="server")) as dst:
                port = int(dst.qmp.cmd("query-migrate")["x-godwit-listening"].rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    src.qmp.cmd("getfd", fdname="migrate", fd=sock.fileno())
                src.qmp.cmd("migrate", uri="fd:migrate")
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("set tls-hostname", r["error-desc"], r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                assert_destination_refused(self, dst, "closed the connection")
            src.qmp.cmd("migrate-set-parameters", **{"tls-hostname": "localhost", **CONVERGE})
            with tls_destination(src, "tcp:127.0.0.1:0", self.dir(server="server")) as dst:
                port = int(dst.qmp.cmd("query-migrate")["x-godwit-listening"].rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    src.qmp.cmd("getfd", fdname="migrate", fd=sock.fileno())
                src.qmp.cmd("migrate", uri="fd:migrate")
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                self.assertEqual(r["x-godwit-tls"], "gnutls", r)
                d = wait_migration(dst)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_parameters_without_tls(self):
        """libvirt believes in TLS only when query-migrate-parameters has
        tls-creds: there, as "", before anything is set."""
        with Vmm(kernel=gwtest.IDLE) as vm:
            p = vm.qmp.cmd("query-migrate-parameters")
            self.assertEqual((p["tls-creds"], p["tls-hostname"], p["tls-authz"]), ("", "", ""))
            schema = [c["name"] for c in vm.qmp.cmd("query-commands")]
            self.assertIn("object-add", schema)
            self.assertIn("object-del", schema)

    def refused(self, src_dir, dst_dir, src_words, dst_words, hostname=None, authz=None):
        """Both sides fail, each saying why; the source guest runs on."""
        with dirtier() as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            add_creds(src, "client", src_dir)
            if hostname:
                src.qmp.cmd("migrate-set-parameters", **{"tls-hostname": hostname})
            with tls_destination(src, uri, dst_dir, authz) as dst:
                src.qmp.cmd("migrate", uri=uri)
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                for w in src_words:
                    self.assertIn(w.lower(), r["error-desc"].lower(), r)
                self.assertNotIn("ram", r, "state moved before the refusal")
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(2)
                self.assertFalse(src.guest()["check-failed"], src.serial_text())
                assert_destination_refused(self, dst, *dst_words)

    def test_source_does_not_trust_the_server(self):
        self.refused(self.dir(ca="rogue-ca"), self.dir(server="server"),
                     ["server's certificate was refused", "issuer is unknown"],
                     ["client refused the handshake", "CA is unknown"])

    def test_destination_does_not_trust_the_client(self):
        self.refused(self.dir(), self.dir(ca="rogue-ca", server="server"),
                     ["server refused the handshake", "CA is unknown"],
                     ["client's certificate was refused", "issuer is unknown"])

    def test_expired_server_certificate(self):
        self.refused(self.dir(), self.dir(server="expired"),
                     ["server's certificate was refused", "expired"],
                     ["client refused the handshake", "expired"])

    def test_wrong_hostname(self):
        self.refused(self.dir(), self.dir(server="server"),
                     ["server's certificate was refused", "does not match"],
                     ["client refused the handshake"], hostname="elsewhere.example")

    def test_server_certificate_for_another_name(self):
        self.refused(self.dir(), self.dir(server="wrong-name"),
                     ["server's certificate was refused", "does not match"],
                     ["client refused the handshake"])

    def test_client_without_certificate(self):
        self.refused(self.dir(client=None), self.dir(server="server"),
                     ["server refused the handshake"],
                     ["client sent no certificate"])

    def test_authz_refuses_another_client(self):
        self.refused(self.dir(), self.dir(server="server"),
                     ["server refused the handshake"],
                     ["tls-authz refused the client", CLIENT_DN],
                     authz="CN=somebody-else")

    def test_cancel_during_handshake(self):
        """The server accepts the connection and never speaks: the
        handshake waits, and migrate-cancel ends it."""
        with socket.socket() as listener, dirtier() as src:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            src.wait_passes(1)
            add_creds(src, "client", self.dir())
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{listener.getsockname()[1]}")
            conn, _ = listener.accept()
            with conn:
                # The client's hello arrived: the handshake now waits for us.
                conn.settimeout(30)
                self.assertTrue(conn.recv(1))
                self.assertEqual(src.qmp.cmd("query-migrate")["status"], "setup")
                src.qmp.cmd("migrate-cancel")
                r = wait_migration(src)
                self.assertEqual(r["status"], "cancelled", r)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(1)
            self.assertFalse(src.guest()["check-failed"], src.serial_text())

    def test_refusals_before_anything_starts(self):
        with dirtier() as src:
            d = self.dir()
            src.qmp.cmd("migrate-set-parameters", **{"tls-creds": "nosuch"})
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{free_port()}")
            self.assertIn("No TLS credentials with id 'nosuch'", str(e.exception))
            src.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "srv",
                                         "dir": self.dir(server="server"),
                                         "endpoint": "server"})
            src.qmp.cmd("migrate-set-parameters", **{"tls-creds": "srv"})
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{free_port()}")
            self.assertIn("client endpoint", str(e.exception))
            add_creds(src, "client", d)
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate", uri="exec:cat > /dev/null")
            self.assertIn("use tcp:, unix: or fd:", str(e.exception))
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                                             "dir": d})
            self.assertIn("duplicate", str(e.exception))
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "x",
                                             "dir": os.path.join(d, "nowhere")})
            self.assertIn("ca-cert.pem", str(e.exception))
            src.qmp.cmd("object-del", id="tls0")
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("object-del", id="tls0")
            self.assertIn("not found", str(e.exception))
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
        with Vmm(kernel=gwtest.DIRTIER, extra=["--incoming", "defer"]) as dst:
            add_creds(dst, "server", self.dir(server="server"))
            dst.qmp.cmd("migrate-set-parameters", **{"tls-authz": "nosuch"})
            with self.assertRaises(gwtest.QmpError) as e:
                dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{free_port()}")
            self.assertIn("No authorization object with id 'nosuch'", str(e.exception))


if __name__ == "__main__":
    gwtest.main()
