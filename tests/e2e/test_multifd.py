#!/usr/bin/env python3
"""multifd: a live migration whose pages travel on more connections than
the main stream's (capability multifd, parameter multifd-channels, on
both sides, QEMU's names; docs/format.md "multifd").

Two real godwit-vmm processes and the dirtier guest on 2 vCPUs: with 2 and
4 channels over tcp: and unix:, the destination's RAM as loaded equals the
source's at the switchover and the guest's own check passes there; a
channel cut in the middle (through a relay that forwards each connection
and cuts the third it sees) fails the migration on both sides with the
source guest running; a destination without the capability refuses and
says what to turn on; a URI that cannot carry more connections is refused
before anything is sent.
"""
import os
import socket
import threading
import time
import unittest

import gwtest
from gwtest import (assert_destination_refused, destination, dirtier, free_port,
                    migrate_and_check, wait_migration)


def multifd(vm, channels):
    vm.qmp.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "multifd", "state": True}])
    vm.qmp.cmd("migrate-set-parameters", **{"multifd-channels": channels})


class Relay:
    """Listens on a TCP port and forwards every connection to target; the
    cut-th connection (from 1) is closed both ways after it has carried
    cut_after bytes toward the destination."""

    def __init__(self, target_port, cut, cut_after):
        self.target, self.cut, self.cut_after = target_port, cut, cut_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.cut_done = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            limit = self.cut_after if self.count == self.cut else None
            threading.Thread(target=self._pipe, args=(a, b, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a, None), daemon=True).start()

    def _pipe(self, src, dst, limit):
        moved = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                moved += len(data)
                if limit is not None and moved >= limit:
                    self.cut_done.set()
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.sock.close()
        for s in self.conns:
            s.close()


class Multifd(unittest.TestCase):
    def hop(self, channels, uri_of):
        with dirtier(memory="128M", append="end=96M") as src:
            src.wait_passes(1)
            uri = uri_of(src)
            with destination(src, uri) as dst:
                multifd(src, channels)
                multifd(dst, channels)
                # At QEMU's default 128 MiB/s this guest converges only
                # while the machine is busy enough to slow its vCPUs.
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 10 << 30})
                r = migrate_and_check(self, src, dst, uri)
                self.assertGreater(r["ram"]["transferred"], 64 << 20, r)

    def test_two_channels_tcp(self):
        self.hop(2, lambda src: f"tcp:127.0.0.1:{free_port()}")

    def test_four_channels_unix(self):
        self.hop(4, lambda src: "unix:" + os.path.join(src.dir, "mig.sock"))

    def test_channel_cut(self):
        """The second channel (the relay's third connection) is cut after
        1 MiB: the source fails and its guest runs on; the destination
        fails and never runs what it loaded."""
        with dirtier(memory="128M", append="end=96M") as src:
            src.wait_passes(1)
            port = free_port()
            with destination(src, f"tcp:127.0.0.1:{port}") as dst:
                relay = Relay(port, cut=3, cut_after=1 << 20)
                try:
                    multifd(src, 2)
                    multifd(dst, 2)
                    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 20})
                    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{relay.port}")
                    r = wait_migration(src, timeout=120)
                    self.assertTrue(relay.cut_done.is_set())
                    self.assertEqual(r["status"], "failed", r)
                    self.assertIn("multifd channel", r["error-desc"], r)
                    self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                    src.wait_passes(2)
                    self.assertFalse(src.guest()["check-failed"], src.serial_text())
                    assert_destination_refused(self, dst, "multifd channel")
                finally:
                    relay.close()

    def test_destination_without_multifd(self):
        with dirtier() as src:
            src.wait_passes(1)
            uri = "unix:" + os.path.join(src.dir, "mig.sock")
            with destination(src, uri) as dst:
                multifd(src, 2)
                src.qmp.cmd("migrate", uri=uri)
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("turn on the multifd capability", r["error-desc"], r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                assert_destination_refused(self, dst, "multifd capability")

    def test_uri_without_more_connections(self):
        with dirtier() as src:
            multifd(src, 2)
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate", uri="exec:cat > /dev/null")
            self.assertIn("use tcp: or unix:", str(e.exception))
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")


if __name__ == "__main__":
    gwtest.main()
