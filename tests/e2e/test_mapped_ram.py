#!/usr/bin/env python3
"""Mapped-ram snapshot files: a fixed slot per page (docs/format.md,
"Mapped-RAM files"), saved from a stopped or a running guest, restored
with every page checked, and refused whole when anything is wrong."""
import os
import signal
import struct
import subprocess
import tempfile
import time
import unittest

import gwtest
from gwtest import (DIRTIER, Vmm, assert_destination_refused, dirtier, wait_migration,
                    wait_until)

ENTRY = 320
FIXED = 64


def header(path):
    """The file header, decoded: (fields, [block entries])."""
    with open(path, "rb") as f:
        fixed = f.read(FIXED)
        (state, n, hlen, align, soff, slen, fsize, gen, crc) = struct.unpack_from(
            "<IIIIQQQII", fixed, 16)
        f.seek(0)
        raw = f.read(hlen)
    blocks = []
    for i in range(n):
        e = raw[FIXED + ENTRY * i: FIXED + ENTRY * (i + 1)]
        size, psize, nlen, poff, boff, npres, hoff = struct.unpack_from("<QIIQQQQ", e)
        blocks.append(dict(name=e[64:64 + nlen].decode(), size=size, pages_offset=poff,
                           bitmap_offset=boff, nr_present=npres, hashes_offset=hoff))
    return dict(state=state, stream_offset=soff, stream_length=slen, file_size=fsize,
                header_length=hlen), blocks


def first_present_page(path, block):
    """Page number of the first page the file holds in block."""
    with open(path, "rb") as f:
        f.seek(block["bitmap_offset"])
        words = f.read((block["size"] // 4096 + 63) // 64 * 8)
    for w in range(len(words) // 8):
        v = struct.unpack_from("<Q", words, 8 * w)[0]
        if v:
            return 64 * w + (v & -v).bit_length() - 1
    raise AssertionError("no page present")


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def allocated(path):
    return os.stat(path).st_blocks * 512


def memfd_allocated(vm):
    """Bytes of guest RAM the VMM's memfds hold: its touched RAM."""
    total = 0
    fd_dir = f"/proc/{vm.proc.pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)).startswith("/memfd:ram-"):
                total += os.stat(os.path.join(fd_dir, fd)).st_blocks * 512
        except OSError:
            pass
    return total


def mapped_caps(vm, on=True):
    vm.qmp.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "mapped-ram", "state": on}])


def save(test, vm, path, params=None, timeout=120):
    mapped_caps(vm)
    if params:
        vm.qmp.cmd("migrate-set-parameters", **params)
    vm.qmp.cmd("migrate", uri="file:" + path)
    r = wait_migration(vm, timeout=timeout)
    test.assertEqual(r["status"], "completed", r)
    return r


def restorer(src, path, params=None, **kw):
    """A deferred destination shaped like src that restores path."""
    vm = Vmm(kernel=DIRTIER, memory=kw.pop("memory", src.memory), vcpus=src.vcpus,
             extra=["--incoming", "defer"], **kw)
    try:
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": True},
            {"capability": "mapped-ram", "state": True}])
        if params:
            vm.qmp.cmd("migrate-set-parameters", **params)
        vm.qmp.cmd("migrate-incoming", uri="file:" + path)
    except BaseException:
        vm.kill()
        raise
    return vm


class SaveRestore(unittest.TestCase):
    def check_restore(self, src, path, params=None, was_running=True):
        with restorer(src, path, params) as dst:
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash(),
                             "restored RAM differs from the guest at the save")
            if not was_running:
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                dst.qmp.cmd("cont")
            dst.wait_passes(2)
            self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
            self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")

    def test_stopped_guest(self):
        with dirtier() as src:
            src.wait_passes(1)
            src.qmp.cmd("stop")
            path = os.path.join(src.dir, "guest.gwm")
            r = save(self, src, path)
            h, blocks = header(path)
            self.assertEqual(h["state"], 0x454e4f44)
            # What went into the file, pages included.
            self.assertGreaterEqual(r["ram"]["transferred"], 4096 * blocks[0]["nr_present"])
            self.assertEqual([b["name"] for b in blocks], ["ram-low"])
            self.check_restore(src, path, was_running=False)

    def test_live_dirtying_guest_many_rounds_bounded_size(self):
        """A 2-vCPU guest that keeps rewriting 24 MiB is saved live over
        many rounds: the file holds each page once (its allocation is at
        most the touched RAM plus metadata, and below what the same save
        into a stream file takes), and it restores to the guest as it was
        at the save's pause."""
        def save_rounds(vm, path, mapped):
            mapped_caps(vm, mapped)
            # No pause fits while anything is dirty: rounds go on until the
            # limit is raised, however slowly a loaded machine runs the
            # guest (a 1 ms limit was met after 4 or 5 rounds there).
            vm.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 0,
                                                    "max-bandwidth": 400 << 20})
            vm.qmp.cmd("migrate", uri="file:" + path)
            wait_until(lambda: vm.qmp.cmd("query-migrate").get("ram", {}).get(
                "dirty-sync-count", 0) >= 6, 60, "six rounds")
            vm.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 5000})
            r = wait_migration(vm, timeout=60)
            self.assertEqual(r["status"], "completed", r)
            return r

        with dirtier(memory="128M", append="end=24M") as src:
            src.wait_passes(1)
            stream = os.path.join(src.dir, "guest.gw")
            save_rounds(src, stream, False)
            src.qmp.cmd("cont")
            src.wait_passes(1)
            path = os.path.join(src.dir, "guest.gwm")
            r = save_rounds(src, path, True)
            self.assertGreaterEqual(r["ram"]["dirty-sync-count"], 6)
            h, blocks = header(path)
            meta = h["header_length"] + h["stream_length"] + sum(
                (b["size"] // 4096 + 63) // 64 * 8 + 8 * b["nr_present"] for b in blocks)
            touched = memfd_allocated(src)
            self.assertLessEqual(allocated(path), touched + meta + 64 * 4096,
                                 f"file {allocated(path)} B, touched RAM {touched} B")
            self.assertLess(allocated(path), allocated(stream))
            self.check_restore(src, path)

    def test_direct_io_four_writers(self):
        with dirtier(memory="128M", append="end=32M") as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "guest.gwm")
            params = {"direct-io": True, "multifd-channels": 4}
            save(self, src, path, params)
            h, blocks = header(path)
            # The page region never went through the page cache: what is
            # resident is at most the header, the stream and the metadata.
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                                  path], capture_output=True, text=True, check=True)
            resident = int(out.stdout.split()[0])
            pages = sum(4096 * b["nr_present"] for b in blocks)
            self.assertGreater(pages, 16 << 20)
            self.assertLess(resident, 2 << 20, f"{resident} bytes of the file are cached")
            self.check_restore(src, path, params)


class Incremental(unittest.TestCase):
    """A second save into the file of the first writes only what the guest
    dirtied since, and restores to the guest at the second save."""

    def save(self, vm, path, incremental=True):
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "mapped-ram", "state": True},
            {"capability": "x-godwit-incremental", "state": incremental}])
        vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
        vm.qmp.cmd("migrate", uri="file:" + path)
        r = wait_migration(vm)
        self.assertEqual(r["status"], "completed", r)
        return r

    def restored_hash(self, src, path):
        with restorer(src, path) as dst:
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            # Saved while paused (a second save from postmigrate): it
            # arrives paused, as the guest was.
            if dst.qmp.cmd("query-status")["status"] == "paused":
                dst.qmp.cmd("cont")
            dst.wait_passes(1)
            self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
            return d["x-godwit-ram-hash"]

    def test_incremental_saves(self):
        with dirtier(memory="128M", append="end=40M") as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "incr.gwm")
            first = self.save(src, path)
            self.assertEqual((first["x-godwit-generation"], first["x-godwit-incremental"]),
                             (1, False))
            self.assertGreater(first["ram"]["normal"], 9000)  # the 38 MiB the guest wrote
            # Still paused where it was saved: nothing changed since, and
            # nothing but the device state is written again.
            second = self.save(src, path)
            self.assertEqual((second["x-godwit-generation"], second["x-godwit-incremental"]),
                             (2, True))
            self.assertLess(second["ram"]["normal"], 16, second["ram"])
            self.assertEqual(self.restored_hash(src, path), src.ram_hash())
            # Saved again while the guest is half-way through a pass: the
            # pages it rewrote since go, the others keep their slots.
            src.qmp.cmd("cont")
            src.wait_passes(1)
            third = self.save(src, path)
            self.assertEqual((third["x-godwit-generation"], third["x-godwit-incremental"]),
                             (3, True))
            self.assertEqual(self.restored_hash(src, path), src.ram_hash())
            # Another file: a full save, and it becomes the base.
            src.qmp.cmd("cont")
            other = os.path.join(src.dir, "other.gwm")
            r = self.save(src, other)
            self.assertEqual((r["x-godwit-generation"], r["x-godwit-incremental"]), (1, False))
            # The first file is no longer the base: a full save again.
            src.qmp.cmd("cont")
            r = self.save(src, path)
            self.assertEqual((r["x-godwit-generation"], r["x-godwit-incremental"]), (1, False))
            self.assertEqual(self.restored_hash(src, path), src.ram_hash())
            # With the capability off, tracking ends: the next is full.
            src.qmp.cmd("cont")
            r = self.save(src, path, incremental=False)
            self.assertEqual(r["x-godwit-generation"], 1)
            src.qmp.cmd("cont")
            r = self.save(src, path)
            self.assertEqual((r["x-godwit-generation"], r["x-godwit-incremental"]), (1, False))

    def test_cli_incremental(self):
        with dirtier(memory="128M", append="end=40M") as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "cli.gwm")
            r = cli("-s", src.sock, "snapshot-save", "--incremental", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("full save 1", r.stdout)
            src.qmp.cmd("cont")
            r = cli("-s", src.sock, "snapshot-save", "--incremental", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("incremental save 2", r.stdout)
            self.assertEqual(self.restored_hash(src, path), src.ram_hash())


def cli(*args):
    return subprocess.run([gwtest.CLI, *args], capture_output=True, text=True, timeout=120)


class Cli(unittest.TestCase):
    def test_save_and_restore(self):
        with dirtier() as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "cli.gwm")
            r = cli("-s", src.sock, "snapshot-save", "--direct-io", "--parallel", "3", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"saved .*cli.gwm: \d+ ms, file [\d.]+ MiB allocated")
            params = src.qmp.cmd("query-migrate-parameters")
            self.assertEqual((params["direct-io"], params["multifd-channels"]), (True, 3))
            self.assertEqual(header(path)[0]["state"], 0x454e4f44)
            dst = Vmm(kernel=DIRTIER, memory=src.memory, vcpus=src.vcpus,
                      extra=["--incoming", "defer"])
            with dst:
                dst.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "x-godwit-verify-hash", "state": True}])
                r = cli("-s", dst.sock, "--json", "snapshot-restore", "--parallel", "2", path)
                self.assertEqual(r.returncode, 0, r.stderr)
                import json
                self.assertEqual(json.loads(r.stdout)["x-godwit-ram-hash"], src.ram_hash())
                dst.wait_passes(1)
                self.assertFalse(dst.guest()["check-failed"])

    def test_refusals(self):
        r = cli("-s", "/nonexistent", "snapshot-save", "--parallel", "0", "f")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--parallel '0'", r.stderr)
        r = cli("-s", "/nonexistent", "status", "--direct-io")
        self.assertEqual(r.returncode, 2)
        self.assertIn("status does not take --direct-io", r.stderr)
        with dirtier() as src:
            # A restore into a VMM that is not waiting for one.
            r = cli("-s", src.sock, "snapshot-restore", os.path.join(src.dir, "none.gwm"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("'-incoming' was not specified", r.stderr)
            # A save where the file cannot be.
            r = cli("-s", src.sock, "snapshot-save", "/nonexistent-dir/x.gwm")
            self.assertEqual(r.returncode, 1)
            self.assertIn("nonexistent-dir", r.stderr)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")


class PassedFds(unittest.TestCase):
    """Files the VMM never opens itself, as a sandboxed VMM gets them:
    getfd + fd:NAME and add-fd + file:/dev/fdset/N, both ways."""

    def restore_from(self, src, path, how):
        dst = Vmm(kernel=DIRTIER, memory=src.memory, vcpus=src.vcpus,
                  extra=["--incoming", "defer"])
        with dst, open(path, "rb") as f:
            dst.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "x-godwit-verify-hash", "state": True}])
            if how == "getfd":
                dst.qmp.cmd("getfd", fdname="snapshot", fd=f.fileno())
                uri = "fd:snapshot"
            else:
                r = dst.qmp.cmd("add-fd", fd=f.fileno(), opaque="restore")
                sets = dst.qmp.cmd("query-fdsets")
                self.assertEqual(sets[0]["fdset-id"], r["fdset-id"])
                self.assertEqual(sets[0]["fds"][0]["opaque"], "restore")
                uri = f"file:/dev/fdset/{r['fdset-id']}"
            dst.qmp.cmd("migrate-incoming", uri=uri)
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
            dst.wait_passes(1)
            self.assertFalse(dst.guest()["check-failed"])

    def test_getfd_save_fdset_restore(self):
        with dirtier() as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "passed.gwm")
            with open(path, "wb") as f:
                src.qmp.cmd("getfd", fdname="snapshot", fd=f.fileno())
            mapped_caps(src)
            src.qmp.cmd("migrate", uri="fd:snapshot")
            r = wait_migration(src)
            self.assertEqual(r["status"], "completed", r)
            # The migration took the named fd, as QEMU's does.
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("closefd", fdname="snapshot")
            self.assertIn("not found", str(e.exception))
            self.assertEqual(header(path)[0]["state"], 0x454e4f44)
            self.restore_from(src, path, "fdset")

    def test_fdset_save_getfd_restore(self):
        with dirtier() as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "passed.gwm")
            with open(path, "wb") as f:
                r = src.qmp.cmd("add-fd", fd=f.fileno())
            mapped_caps(src)
            src.qmp.cmd("migrate", uri=f"file:/dev/fdset/{r['fdset-id']}")
            m = wait_migration(src)
            self.assertEqual(m["status"], "completed", m)
            src.qmp.cmd("remove-fd", **{"fdset-id": r["fdset-id"]})
            self.assertEqual(src.qmp.cmd("query-fdsets"), [])
            self.restore_from(src, path, "getfd")

    def test_refusals(self):
        with dirtier() as src:
            for cmd, args, words in (
                    ("getfd", {"fdname": "x"}, "No file descriptor supplied via SCM_RIGHTS"),
                    ("getfd", {"fdname": "7"}, "does not start with a digit"),
                    ("closefd", {"fdname": "nope"}, "File descriptor named 'nope' not found"),
                    ("add-fd", {}, "No file descriptor supplied via SCM_RIGHTS"),
                    ("remove-fd", {"fdset-id": 9}, "not found"),
                    ("migrate", {"uri": "fd:nope"}, "File descriptor named 'nope' not found"),
                    ("migrate", {"uri": "file:/dev/fdset/3"}, "no fd set 3")):
                with self.subTest(cmd=cmd, args=args):
                    with self.assertRaises(gwtest.QmpError) as e:
                        src.qmp.cmd(cmd, **args)
                    self.assertIn(words, str(e.exception))
            # An fd sent with a refused command does not wait for the next one.
            with open(os.path.join(src.dir, "stray"), "wb") as f:
                with self.assertRaises(gwtest.QmpError):
                    src.qmp.cmd("getfd", fdname="9bad", fd=f.fileno())
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("getfd", fdname="later")
            self.assertIn("No file descriptor supplied", str(e.exception))
            # A file open with O_APPEND cannot hold pages at fixed offsets.
            with open(os.path.join(src.dir, "append"), "ab") as f:
                r = src.qmp.cmd("add-fd", fd=f.fileno())
            mapped_caps(src)
            src.qmp.cmd("migrate", uri=f"file:/dev/fdset/{r['fdset-id']}")
            m = wait_migration(src)
            self.assertEqual(m["status"], "failed", m)
            self.assertIn("O_APPEND", m["error-desc"])
            src.qmp.cmd("remove-fd", **{"fdset-id": r["fdset-id"]})
            # A read-only fd cannot take a save.
            with open(os.path.join(src.dir, "ro"), "wb"):
                pass
            with open(os.path.join(src.dir, "ro"), "rb") as f:
                r = src.qmp.cmd("add-fd", fd=f.fileno())
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate", uri=f"file:/dev/fdset/{r['fdset-id']}")
            self.assertIn("no fd open for writing", str(e.exception))
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")


class Hostile(unittest.TestCase):
    """One good file of a stopped 64 MiB guest, damaged in turn."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="godwit-mapped-")
        cls.src = dirtier()
        try:
            cls.src.wait_passes(1)
            cls.src.qmp.cmd("stop")
            cls.good = os.path.join(cls.tmp.name, "good.gwm")
            mapped_caps(cls.src)
            cls.src.qmp.cmd("migrate", uri="file:" + cls.good)
            r = wait_migration(cls.src)
            assert r["status"] == "completed", r
        except BaseException:
            cls.src.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.src.kill()
        cls.tmp.cleanup()

    def damaged(self, change):
        path = os.path.join(self.tmp.name, f"{self.id().split('.')[-1]}.gwm")
        with open(self.good, "rb") as f, open(path, "wb") as g:
            g.write(f.read())
        change(path)
        return path

    def refused(self, path, *words, **kw):
        with restorer(self.src, path, **kw) as dst:
            assert_destination_refused(self, dst, *words)

    def test_flipped_page_byte(self):
        def change(path):
            h, blocks = header(path)
            b = blocks[0]
            flip(path, b["pages_offset"] + 4096 * first_present_page(path, b) + 100)
        self.refused(self.damaged(change), "corrupted", "page", "file offset")

    def test_flipped_bitmap(self):
        def change(path):
            b = header(path)[1][0]
            flip(path, b["bitmap_offset"])
        self.refused(self.damaged(change), "bitmap", "corrupted")

    def test_flipped_hash_table(self):
        def change(path):
            b = header(path)[1][0]
            flip(path, b["hashes_offset"] + 3)
        self.refused(self.damaged(change), "hash table", "corrupted")

    def test_flipped_region_header(self):
        # The block entry's pages_offset.
        self.refused(self.damaged(lambda p: flip(p, FIXED + 17)), "header", "corrupted")

    def test_flipped_config(self):
        def change(path):
            h = header(path)[0]
            flip(path, h["stream_offset"] + 16 + 24 + 8)
        self.refused(self.damaged(change), "CONFIG")

    def test_truncated(self):
        def change(path):
            os.truncate(path, header(path)[0]["file_size"] - 8)
        self.refused(self.damaged(change), "truncated")

    def test_page_region_truncated_keeps_checking(self):
        # A file cut inside the page region: the header's file_size says so.
        def change(path):
            b = header(path)[1][0]
            os.truncate(path, b["pages_offset"] + 4096)
        self.refused(self.damaged(change), "truncated")

    def test_guest_of_another_size(self):
        self.refused(self.good, "another guest", "ram-low", memory="128M")

    def test_analyze(self):
        out = subprocess.run([gwtest.CLI, "analyze", self.good], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("mapped-ram file", out.stdout)
        self.assertRegex(out.stdout, r"ram-low .* pages present .* bitmap ok, hash table ok, "
                                     r"\d+ page hashes ok, 0 bad")
        self.assertIn("SECTION_FULL", out.stdout)

        def change(path):
            b = header(path)[1][0]
            flip(path, b["pages_offset"] + 4096 * first_present_page(path, b) + 9)
        bad = self.damaged(change)
        out = subprocess.run([gwtest.CLI, "analyze", bad], capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("do not match their hash", out.stderr)
        out = subprocess.run([gwtest.CLI, "analyze", "--json", bad], capture_output=True,
                             text=True)
        import json
        rep = json.loads(out.stdout)
        self.assertEqual(rep["mapped_ram"]["blocks"][0]["pages_bad"], 1)

    def test_read_as_a_stream(self):
        dst = Vmm(kernel=DIRTIER, memory=self.src.memory, vcpus=self.src.vcpus,
                  extra=["--incoming", "defer"])
        with dst:
            dst.qmp.cmd("migrate-incoming", uri=f"exec:cat {self.good}")
            assert_destination_refused(self, dst, "mapped-ram", "file:")


class Faults(unittest.TestCase):
    def test_killed_midway(self):
        """SIGKILL of the saving VMM at several points: the file it leaves
        is refused as unfinished, never half-loaded."""
        for delay in (0.05, 0.4, 1.0):
            with self.subTest(delay=delay):
                src = dirtier(append="end=32M")
                try:
                    src.wait_passes(1)
                    path = os.path.join(src.dir, "killed.gwm")
                    mapped_caps(src)
                    # Slow enough that the kill lands inside the save.
                    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20})
                    src.qmp.cmd("migrate", uri="file:" + path)
                    time.sleep(delay)
                    self.assertIn(src.qmp.cmd("query-migrate")["status"],
                                  ("setup", "active"))
                    os.kill(src.proc.pid, signal.SIGKILL)
                    src.proc.wait()
                    with restorer(src, path) as dst:
                        assert_destination_refused(self, dst, "did not finish")
                finally:
                    src.kill()

    def test_cancelled_midway(self):
        """migrate-cancel of a save: the guest runs on, the file is refused."""
        with dirtier(append="end=32M") as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "cancelled.gwm")
            mapped_caps(src)
            src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20,
                                                     "multifd-channels": 4})
            src.qmp.cmd("migrate", uri="file:" + path)
            time.sleep(0.3)
            src.qmp.cmd("migrate-cancel")
            r = wait_migration(src)
            self.assertEqual(r["status"], "cancelled", r)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(1)
            self.assertFalse(src.guest()["check-failed"])
            with restorer(src, path) as dst:
                assert_destination_refused(self, dst, "did not finish")

    def test_full_disk(self):
        """A save onto a file system that fills up fails, says so, and the
        source guest runs on unharmed."""
        mnt = tempfile.mkdtemp(prefix="godwit-full-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], check=True)
        try:
            with dirtier(append="end=32M") as src:
                src.wait_passes(1)
                mapped_caps(src)
                src.qmp.cmd("migrate", uri="file:" + os.path.join(mnt, "full.gwm"))
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("no space left", r["error-desc"].lower())
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(2)
                self.assertFalse(src.guest()["check-failed"])
        finally:
            subprocess.run(["umount", mnt], check=False)
            os.rmdir(mnt)

    def test_refused_on_a_socket(self):
        port = gwtest.free_port()
        with dirtier() as src:
            with gwtest.destination(src, f"tcp:127.0.0.1:{port}") as dst:
                mapped_caps(src)
                src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("regular file", r["error-desc"])
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                dst.kill()


if __name__ == "__main__":
    gwtest.main()
