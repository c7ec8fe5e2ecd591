"""Shared helpers for godwit's end-to-end tests.

Tests start real godwit-vmm processes running real KVM guests and drive
them over QMP, exactly as a user's tooling would, with the QMP client the
benchmark uses too (tools/qmp.py). Python standard library only.
Environment: GODWIT_BUILD is the meson build directory (default "build"
beside the source tree).
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The QMP client the benchmark uses too (tools/qmp.py).
sys.path.insert(0, os.path.join(SRC, "tools"))
from qmp import Qmp, QmpError  # noqa: E402,F401  (QmpError: for the tests)

BUILD = os.path.abspath(os.environ.get("GODWIT_BUILD", os.path.join(SRC, "build")))
VMM = os.path.join(BUILD, "vmm", "godwit-vmm")
CLI = os.path.join(BUILD, "tools", "godwit")
DIRTIER = os.path.join(BUILD, "guests", "dirtier.elf")
IDLE = os.path.join(BUILD, "guests", "idle.elf")
DISKCHECK = os.path.join(BUILD, "guests", "diskcheck.elf")
BLKEVIL = os.path.join(BUILD, "guests", "blkevil.elf")
BOOTDIRTIER = os.path.join(BUILD, "guests", "bootdirtier.bin")

SKIP = 77  # meson's "skipped" exit code


def main():
    """Run the calling module's unittest cases; skip the file without KVM."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP: /dev/kvm is missing or not accessible; KVM tests need it")
        sys.exit(SKIP)
    unittest.main(verbosity=2)


def wait_until(pred, timeout=10.0, what="condition", interval=0.02):
    """Poll pred() until it returns a true value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Vmm:
    """One godwit-vmm process with a QMP socket and a serial log file."""

    def __init__(self, kernel=None, bootsector=None, memory="64M", vcpus=1, append=None,
                 paused=False, extra=(), qmp=True, pass_fds=()):
        self.memory, self.vcpus = memory, vcpus
        self.dir = tempfile.mkdtemp(prefix="gw-e2e-")
        self.sock = os.path.join(self.dir, "qmp.sock")
        self.serial = os.path.join(self.dir, "serial.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        # memory None: the VMM's own default (or, for a local live update,
        # the old process's size).
        argv = [VMM] + (["--memory", str(memory)] if memory is not None else []) + \
            ["--vcpus", str(vcpus), "--serial", "file:" + self.serial]
        if kernel:
            argv += ["--kernel", kernel]
        if bootsector:
            argv += ["--bootsector", bootsector]
        if append:
            argv += ["--append", append]
        if paused:
            argv += ["--paused"]
        if qmp:
            argv += ["--qmp", "unix:" + self.sock]
        argv += list(extra)
        self.argv = argv
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     pass_fds=pass_fds)
        self.qmp = None
        if qmp:
            try:
                self._connect_first()
            except BaseException:
                # No caller holds this object yet: nobody else would kill it.
                self.kill()
                raise

    def _connect_first(self):
        wait_until(lambda: os.path.exists(self.sock) or self.proc.poll() is not None,
                   10, "the QMP socket")
        if self.proc.poll() is not None:
            raise AssertionError(f"godwit-vmm exited with {self.proc.returncode}: "
                                 f"{self.stderr_text()}")
        # The file appears at bind(), a moment before listen().
        self.qmp = wait_until(self._try_connect, 10, "the QMP socket to listen")

    def _try_connect(self):
        try:
            return Qmp(self.sock)
        except ConnectionRefusedError:
            return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stderr_text(self):
        self.stderr.flush()
        with open(self.stderr_path) as f:
            return f.read()

    def serial_text(self):
        try:
            with open(self.serial, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def connect(self, negotiate=True):
        return Qmp(self.sock, negotiate=negotiate)

    def wait(self, timeout=20.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"godwit-vmm did not exit within {timeout}s")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.qmp:
            self.qmp.close()
        self.stderr.close()

    def guest(self):
        return self.qmp.cmd("x-godwit-query-guest")

    def passes(self):
        return [v["pass"] for v in self.guest()["vcpus"]]

    def wait_passes(self, n, timeout=30.0):
        """Wait until every vCPU has completed at least n more passes."""
        start = self.passes()
        wait_until(lambda: all(p >= s + n for p, s in zip(self.passes(), start)),
                   timeout, f"{n} more guest passes on every vCPU")

    def ram_hash(self):
        return self.qmp.cmd("x-godwit-ram-hash")["hash"]

    def ram_mapping(self, block="ram-low"):
        """Host address of a RAM block in this process, from /proc/PID/maps."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            for line in f:
                if re.search(rf"memfd:{block}\b", line):
                    return int(line.split("-")[0], 16)
        raise AssertionError(f"no mapping of {block} in godwit-vmm")

    def poke(self, gpa, data, block="ram-low"):
        """Write guest RAM from outside the VMM, as a hardware fault would."""
        with open(f"/proc/{self.proc.pid}/mem", "r+b", buffering=0) as f:
            f.seek(self.ram_mapping(block) + gpa)
            f.write(data)


def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    """CRC32C (Castagnoli), as the format's checksums (docs/format.md)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def config_with_section_version(payload, section, version):
    """A CONFIG payload with `section`'s version replaced: the CONFIG of a
    VMM that saves another version of the section (docs/format.md)."""
    payload = bytearray(payload)
    pos = 8
    for _ in range(3):                          # vmm name, version, machine
        pos += 1 + payload[pos]
    (nblocks,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    for _ in range(nblocks):
        pos += 1 + payload[pos] + 16
    (nsections,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    for _ in range(nsections):
        name = bytes(payload[pos + 1:pos + 1 + payload[pos]]).decode()
        pos += 1 + payload[pos]
        if name == section:
            struct.pack_into("<I", payload, pos + 4, version)
        pos += 12
    return bytes(payload)


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_migration(vm, statuses=("completed", "failed", "cancelled"), timeout=60.0):
    """Poll query-migrate until its status is one of statuses; return it."""
    return wait_until(lambda: (lambda r: r if r.get("status") in statuses else None)(
        vm.qmp.cmd("query-migrate")), timeout, f"migration status in {statuses}")


def dirtier(memory="64M", vcpus=2, append="end=32M", **kw):
    return Vmm(kernel=DIRTIER, memory=memory, vcpus=vcpus, append=append, **kw)


def destination(src, uri, extra=(), **kw):
    """A godwit-vmm shaped like src, waiting for a migration on uri, with
    the loaded RAM hashed before its guest runs. A file loads at once, so
    it is started deferred, to have its capabilities set first."""
    deferred = uri.startswith("file:")
    vm = Vmm(kernel=kw.pop("kernel", DIRTIER), memory=kw.pop("memory", src.memory),
             vcpus=kw.pop("vcpus", src.vcpus),
             extra=["--incoming", "defer" if deferred else uri] + list(extra), **kw)
    try:
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": True},
            {"capability": "events", "state": True}])
        if deferred:
            vm.qmp.cmd("migrate-incoming", uri=uri)
    except BaseException:
        vm.kill()
        raise
    return vm


def migrate_and_check(test, src, dst, uri, timeout=120.0):
    """Migrate src to dst over uri and prove nothing was lost: both sides
    completed, the destination's RAM as loaded equals the source's RAM at
    the switchover (the source stays paused there), and the guest goes on
    passing its self-check on the destination."""
    src.qmp.cmd("migrate", uri=uri)
    r = wait_migration(src, timeout=timeout)
    test.assertEqual(r["status"], "completed", r)
    test.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
    d = wait_migration(dst, timeout=timeout)
    test.assertEqual(d["status"], "completed", d)
    test.assertEqual(d["x-godwit-ram-hash"], src.ram_hash(),
                     "destination RAM differs from the source's at switchover")
    dst.wait_passes(2)
    test.assertFalse(dst.guest()["check-failed"], dst.serial_text())
    test.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
    return r


def assert_destination_refused(test, dst, *words):
    """The destination failed the load, says what failed, and nothing it
    loaded ever ran."""
    d = wait_migration(dst, timeout=60)
    test.assertEqual(d["status"], "failed", d)
    test.assertEqual(dst.qmp.cmd("query-status")["status"], "inmigrate")
    # No vCPU ran what was loaded: neither the guest's pass counters nor a
    # byte of its RAM move while the destination sits there.
    passes, ram = dst.passes(), dst.ram_hash()
    time.sleep(0.3)
    test.assertEqual(dst.passes(), passes, "a half-loaded guest ran")
    test.assertEqual(dst.ram_hash(), ram, "a half-loaded guest ran")
    with test.assertRaises(QmpError):
        dst.qmp.cmd("cont")
    assert_names_the_failure(test, d["error-desc"])
    for w in words:
        test.assertIn(w.lower(), d["error-desc"].lower(), d)
    return d


def assert_names_the_failure(test, desc):
    """An error message says what failed: never empty, never cut off
    after a prefix ("restoring vCPU 0: "), never a bare errno."""
    test.assertTrue(desc and desc.strip(), "empty error message")
    test.assertFalse(desc.rstrip().endswith(":"), f"message ends in a bare prefix: {desc!r}")
    test.assertGreater(len(desc), 20, f"message too short to say what failed: {desc!r}")


def save_stream(vm, name="guest.gw"):
    """Save vm's guest to a file: (path, the stream's bytes)."""
    path = os.path.join(vm.dir, name)
    vm.qmp.cmd("migrate", uri="file:" + path)
    r = wait_migration(vm)
    assert r["status"] == "completed", r
    with open(path, "rb") as f:
        return path, f.read()
