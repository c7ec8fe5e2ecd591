"""Migrations that go wrong: corrupted, truncated and mismatched streams,
connections cut at many points, peers killed mid-stream.

In every case the source guest must keep running as if nothing happened,
and the destination must never run a half-loaded guest.
"""
import contextlib
import os
import shutil
import signal
import socket
import struct
import threading
import time
import unittest

import gwtest
from gwtest import Vmm, assert_destination_refused, assert_names_the_failure, destination, \
    dirtier, free_port, wait_migration, wait_until


def assert_source_unharmed(test, src):
    test.assertEqual(src.qmp.cmd("query-status")["status"], "running")
    src.wait_passes(1)
    test.assertFalse(src.guest()["check-failed"], src.serial_text())


def with_section_version(stream, section, version):
    """The stream with `section`'s version in the CONFIG record replaced and
    both CRCs of that record recomputed: a well-formed stream from a VMM
    that saves another version of the section (docs/format.md, CONFIG)."""
    hdr = 16
    rtype, _, _, length = struct.unpack_from("<HHIQ", stream, hdr)
    assert rtype == 1, "CONFIG is not the first record"
    payload = gwtest.config_with_section_version(stream[hdr + 24:hdr + 24 + length],
                                                 section, version)
    head = bytearray(stream[hdr:hdr + 24])
    struct.pack_into("<I", head, 16, gwtest.crc32c(payload))
    struct.pack_into("<I", head, 20, gwtest.crc32c(head[:20]))
    return stream[:hdr] + bytes(head) + bytes(payload) + stream[hdr + 24 + length:]


class SavedStream(unittest.TestCase):
    """Damage a saved stream file in many ways; every load must refuse it."""

    @classmethod
    def setUpClass(cls):
        cls.src = dirtier(memory="32M", append="end=16M")
        cls.src.wait_passes(1)
        cls.src.qmp.cmd("stop")
        cls.path, cls.data = gwtest.save_stream(cls.src)

    @classmethod
    def tearDownClass(cls):
        cls.src.__exit__(None, None, None)

    def load(self, data, **kw):
        path = os.path.join(self.src.dir, "damaged.gw")
        with open(path, "wb") as f:
            f.write(data)
        return destination(self.src, "file:" + path, **kw)

    def test_intact_stream_loads(self):
        with self.load(self.data) as dst:
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            self.assertEqual(d["x-godwit-ram-hash"], self.src.ram_hash())

    def test_flipped_byte_anywhere(self):
        n = len(self.data)
        offsets = sorted({0, 9, 16, 20, 30, 41, 60, 100, 200, 1000, 5000, n // 7, n // 3,
                          n // 2, 2 * n // 3, n - 4096, n - 500, n - 100, n - 30, n - 1})
        for off in offsets:
            with self.subTest(offset=off):
                data = bytearray(self.data)
                data[off] ^= 0x20
                with self.load(bytes(data)) as dst:
                    assert_destination_refused(self, dst)

    def test_truncated_anywhere(self):
        n = len(self.data)
        for cut in sorted({0, 8, 16, 17, 40, 100, 4096, n // 5, n // 2, n - 4096, n - 24,
                           n - 1}):
            with self.subTest(cut=cut), self.load(self.data[:cut]) as dst:
                assert_destination_refused(self, dst)

    def test_wrong_ram_size(self):
        with self.load(self.data, memory="64M") as dst:
            assert_destination_refused(self, dst, "ram-low")

    def test_wrong_vcpu_count(self):
        with self.load(self.data, vcpus=3) as dst:
            assert_destination_refused(self, dst, "vcpu")

    def test_section_version_outside_accepted_range(self):
        for version in (2, 0x7fffffff):
            with self.subTest(version=version):
                data = with_section_version(self.data, "uart", version)
                with self.load(data) as dst:
                    assert_destination_refused(self, dst, "uart", f"version {version}", "1..1")

    def test_section_version_rewrite_is_faithful(self):
        # The rewrite itself must produce a stream the loader accepts when
        # it keeps the version, or the test above proves nothing.
        data = with_section_version(self.data, "uart", 1)
        self.assertEqual(data, self.data)

    def test_not_a_stream(self):
        with self.load(b"GET / HTTP/1.1\r\n\r\n" + bytes(4096)) as dst:
            assert_destination_refused(self, dst, "not a godwit stream")


@contextlib.contextmanager
def slow_migration():
    """A dirtying guest being migrated at 8 MiB/s to a fresh destination
    over TCP: slow enough to be caught mid-stream."""
    with dirtier() as src:
        src.wait_passes(1)
        port = free_port()
        with destination(src, f"tcp:127.0.0.1:{port}") as dst:
            src.qmp.cmd("migrate-set-parameters", max_bandwidth=8 << 20)
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            yield src, dst


class CutProxy:
    """Forward a TCP connection, closing both sides after `limit` bytes."""

    def __init__(self, target_port, limit):
        self.limit = limit
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        conn, _ = self.lsock.accept()
        out = socket.create_connection(("127.0.0.1", self.target))
        sent = 0
        try:
            while sent < self.limit:
                chunk = conn.recv(min(65536, self.limit - sent))
                if not chunk:
                    break
                out.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        for s in (conn, out):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.lsock.close()


class CutConnection(unittest.TestCase):
    def test_cut_at_many_points(self):
        with dirtier(memory="32M", append="end=16M") as src:
            src.wait_passes(1)
            for limit in (0, 10, 16, 100, 1000, 50000, 1 << 20, 5 << 20, 12 << 20):
                with self.subTest(limit=limit):
                    port = free_port()
                    with destination(src, f"tcp:127.0.0.1:{port}") as dst:
                        proxy = CutProxy(port, limit)
                        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
                        r = wait_migration(src)
                        self.assertEqual(r["status"], "failed", r)
                        assert_names_the_failure(self, r.get("error-desc"))
                        # Which channel, and which step or errno.
                        self.assertIn("tcp 127.0.0.1:", r["error-desc"])
                        assert_source_unharmed(self, src)
                        assert_destination_refused(self, dst)

    def test_destination_killed_mid_stream(self):
        with slow_migration() as (src, dst):
            wait_until(lambda: src.qmp.cmd("query-migrate")["status"] == "active", 20,
                       "an active migration")
            dst.proc.send_signal(signal.SIGKILL)
            r = wait_migration(src)
            self.assertEqual(r["status"], "failed", r)
            assert_source_unharmed(self, src)

    def test_source_killed_mid_stream(self):
        with slow_migration() as (src, dst):
            wait_until(lambda: dst.qmp.cmd("query-migrate")["status"] == "active", 20,
                       "the destination to receive")
            src.proc.send_signal(signal.SIGKILL)
            assert_destination_refused(self, dst)


class Messages(unittest.TestCase):
    """Each way a source fails names the channel, the step and the errno
    in words; the counters say what really left."""

    CASES = (
        ("file:/dev/full", ("file /dev/full", "round 1", "No space left on device")),
        ("exec:true", ("exec 'true'", "Broken pipe",
                       "the command exited (status 0) before it read the whole stream")),
        ("exec:exit 3", ("exec 'exit 3'", "exited with status 3")),
        ("tcp:127.0.0.1:1", ("tcp:127.0.0.1:1", "Connection refused")),
        ("unix:/nonexistent/gw.sock", ("unix:/nonexistent/gw.sock", "No such file or directory")),
        ("file:/nonexistent/gw", ("cannot open '/nonexistent/gw' for writing",
                                  "No such file or directory")),
        ("tcp:nosuchhost.invalid:4444", ("nosuchhost.invalid",)),
        ("ftp:host", ("ftp:host",)),
    )

    def test_source_failures(self):
        with dirtier(memory="32M", append="end=8M") as src:
            for uri, words in self.CASES:
                with self.subTest(uri=uri):
                    src.qmp.cmd("migrate", uri=uri)
                    r = wait_migration(src)
                    self.assertEqual(r["status"], "failed", r)
                    assert_names_the_failure(self, r["error-desc"])
                    for w in words:
                        self.assertIn(w, r["error-desc"])
                    if uri == "file:/dev/full":
                        # What left, not what was buffered: nothing.
                        self.assertEqual(r["ram"]["transferred"], 0, r)
                    assert_source_unharmed(self, src)


if __name__ == "__main__":
    gwtest.main()
