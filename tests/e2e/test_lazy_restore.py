#!/usr/bin/env python3
"""Lazy restore of a mapped-ram file (x-godwit-lazy-restore, docs/qmp.md
"Lazy restore"): the guest runs as soon as its device state is loaded,
its page faults are served from the file, and a background thread reads
the rest; every page is checked against its hash in the file before the
guest can see it. A bad page, a file cut short under the restore, or a
cancel leaves the guest paused for good, the status failed, and the
process alive.

The source guest is the dirtier (it checks every page it rewrites) with
extra data written into RAM above its range, which it never touches: that
part is filled by the background alone. max-postcopy-bandwidth, which
applies at once, holds the background back (1 byte/s) until the test has
watched the guest run, whatever the machine's load, then lets it go."""
import os
import shutil
import tempfile
import time
import unittest

import gwtest
from gwtest import (DIRTIER, QmpError, Vmm, assert_destination_refused, dirtier,
                    wait_migration, wait_until)
from test_mapped_ram import first_present_page, flip, header, save

MEMORY = "256M"
# The dirtier rewrites [2 MiB, 32 MiB); [64 MiB, 96 MiB) holds data it
# never touches.
EXTRA_AT, EXTRA_LEN = 64 << 20, 32 << 20
HELD = 1  # byte/s: the background stands still after its first run


def extra_data():
    """Non-zero, different in every page."""
    return b"".join(((i * 2654435761) & 0xffffffff).to_bytes(4, "little") * 1024
                    for i in range(EXTRA_LEN // 4096))


def nr_present(path):
    return sum(b["nr_present"] for b in header(path)[1])


def read_guest(vm, gpa, length):
    with open(f"/proc/{vm.proc.pid}/mem", "rb", buffering=0) as f:
        f.seek(vm.ram_mapping() + gpa)
        return f.read(length)


def lazy_restorer(src, path, fill="continue", rate=0, paused=False):
    """A deferred destination shaped like src that restores path lazily."""
    vm = Vmm(kernel=DIRTIER, memory=src.memory, vcpus=src.vcpus, paused=paused,
             extra=["--incoming", "defer"])
    try:
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-lazy-restore", "state": True}])
        vm.qmp.cmd("migrate-set-parameters", **{"x-godwit-lazy-fill": fill,
                                                 "max-postcopy-bandwidth": rate})
        vm.qmp.cmd("migrate-incoming", uri="file:" + path)
    except BaseException:
        vm.kill()
        raise
    return vm


def let_go(dst, rate=0):
    dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": rate})


def running_before_the_end(test, dst):
    """The guest runs, passes its checks, faults pages in, while pages of
    the file are still to come: the state query-migrate shows then."""
    wait_until(lambda: dst.qmp.cmd("query-status")["status"] == "running", 60,
               "the restored guest to run")
    dst.wait_passes(2, timeout=180)
    r = dst.qmp.cmd("query-migrate")
    test.assertEqual(r["status"], "postcopy-active", r)
    test.assertGreater(r["x-godwit-lazy"]["pages-faulted"], 0, r)
    test.assertGreater(r["x-godwit-lazy"]["remaining-pages"], 0, r)
    test.assertFalse(dst.guest()["check-failed"], dst.serial_text())
    return r


class LazyRestore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="gw-lazy-")
        cls.src = dirtier(memory=MEMORY)
        try:
            cls.src.wait_passes(1)
            cls.extra = extra_data()
            cls.src.poke(EXTRA_AT, cls.extra)
            cls.good = os.path.join(cls.tmp.name, "guest.gwm")
            save(unittest.TestCase(), cls.src, cls.good)
            cls.hash = cls.src.ram_hash()
            cls.present = nr_present(cls.good)
        except BaseException:
            cls.src.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.src.kill()
        shutil.rmtree(cls.src.dir, ignore_errors=True)
        cls.tmp.cleanup()

    def copy(self, name):
        path = os.path.join(self.tmp.name, name)
        shutil.copyfile(self.good, path)
        return path

    def test_guest_runs_while_pages_arrive(self):
        """The guest runs and checks itself before the background ends;
        every page of the file comes in once, checked; the data the guest
        never touched arrives as it was saved."""
        with lazy_restorer(self.src, self.good, rate=HELD) as dst:
            running_before_the_end(self, dst)
            let_go(dst)
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            lazy = d["x-godwit-lazy"]
            self.assertEqual(lazy["remaining-pages"], 0, d)
            self.assertEqual(lazy["pages-faulted"] + lazy["background-pages"], self.present, d)
            self.assertGreater(lazy["background-pages"], EXTRA_LEN // 4096 - 1, d)
            self.assertGreaterEqual(lazy["fault-latency-max-us"],
                                    lazy["fault-latency-mean-us"], d)
            # Both vCPUs rewrite their own share: each took faults of its own.
            self.assertEqual([v["cpu-index"] for v in lazy["vcpus"]], [0, 1], d)
            for v in lazy["vcpus"]:
                self.assertGreater(v["faults"], 0, d)
                self.assertGreaterEqual(v["fault-latency-max-us"], v["fault-latency-mean-us"], d)
            self.assertEqual(read_guest(dst, EXTRA_AT, EXTRA_LEN), self.extra)
            dst.wait_passes(2)
            self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
            self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")

    def test_ram_equals_the_source(self):
        """Restored lazily while held paused, in both fill modes: RAM is
        the source's at the save, bit for bit, and the guest then runs."""
        for fill in ("continue", "copy"):
            with self.subTest(fill=fill), \
                    lazy_restorer(self.src, self.good, fill=fill, paused=True) as dst:
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-lazy"]["pages-faulted"] +
                                 d["x-godwit-lazy"]["background-pages"], self.present, d)
                self.assertEqual(dst.ram_hash(), self.hash)
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                dst.qmp.cmd("cont")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_ram_hash_refused_while_pages_arrive(self):
        with lazy_restorer(self.src, self.good, rate=HELD) as dst:
            wait_until(lambda: dst.qmp.cmd("query-migrate")["status"] == "postcopy-active",
                       30, "postcopy-active")
            with self.assertRaises(QmpError) as e:
                dst.ram_hash()
            self.assertIn("lazily", str(e.exception))

    def failed_for_good(self, dst, *words):
        """The guest ran, then stopped for good: failed, paused, and the
        figures say how far the restore got."""
        d = assert_destination_refused(self, dst, *words)
        self.assertGreater(d["x-godwit-lazy"]["pages-faulted"], 0, d)
        self.assertGreater(d["x-godwit-lazy"]["remaining-pages"], 0, d)
        self.assertFalse(dst.guest()["check-failed"], "the guest saw a bad page")
        self.assertIsNone(dst.proc.poll(), "the destination exited")
        return d

    def test_corrupted_page_found_by_the_background(self):
        """A page of the data the guest never touches is corrupted: the
        background finds it while the guest runs."""
        path = self.copy("bad-extra.gwm")
        b = header(path)[1][0]
        # The page at EXTRA_AT + 1 MiB: its index among the present pages
        # does not matter, only its slot (fixed offset) does.
        page = (EXTRA_AT >> 12) + 256
        flip(path, b["pages_offset"] + 4096 * page + 7)
        with lazy_restorer(self.src, path, rate=HELD) as dst:
            running_before_the_end(self, dst)
            let_go(dst)
            d = self.failed_for_good(dst, "corrupted", "ram-low",
                                     f"page at {page * 4096:#x}",
                                     f"file offset {b['pages_offset'] + 4096 * page:#x}")
            self.assertIn("lazily", d["error-desc"])

    def test_corrupted_page_found_by_a_fault(self):
        """A page the guest rewrites in its first pass, far ahead of a
        background held back: its fault finds the corruption, and the guest
        never gets the page."""
        path = self.copy("bad-range.gwm")
        b = header(path)[1][0]
        page = (30 << 20) >> 12
        self.assertGreaterEqual(page, first_present_page(path, b))
        flip(path, b["pages_offset"] + 4096 * page + 100)
        with lazy_restorer(self.src, path, rate=HELD) as dst:
            self.failed_for_good(dst, "corrupted", f"page at {page * 4096:#x}")

    def test_corrupted_hash_table(self):
        """The hash table is read whole once the guest runs (not before:
        8 bytes a page would make the time to running grow with the
        guest); until then each read takes its own slice. A damaged
        table then fails the restore, the guest stopped for good."""
        path = self.copy("bad-table.gwm")
        b = header(path)[1][0]
        flip(path, b["hashes_offset"] + 8 * (b["nr_present"] - 1) + 3)
        with lazy_restorer(self.src, path, rate=HELD) as dst:
            d = assert_destination_refused(self, dst, "hash table", "corrupted", "ram-low")
            self.assertIn("lazily", d["error-desc"])
            self.assertFalse(dst.guest()["check-failed"], "the guest saw a bad page")
            self.assertIsNone(dst.proc.poll(), "the destination exited")

    def test_file_truncated_mid_restore(self):
        """The file is cut inside the data the background has yet to read."""
        path = self.copy("cut.gwm")
        b = header(path)[1][0]
        with lazy_restorer(self.src, path, rate=HELD) as dst:
            running_before_the_end(self, dst)
            os.truncate(path, b["pages_offset"] + EXTRA_AT + EXTRA_LEN // 2)
            let_go(dst)
            self.failed_for_good(dst, "truncated", "ram-low")

    def test_cancel_during_the_fill(self):
        with lazy_restorer(self.src, self.good, rate=HELD) as dst:
            running_before_the_end(self, dst)
            dst.qmp.cmd("migrate-cancel")
            self.failed_for_good(dst, "cancelled", "paused")

    def test_refused_for_a_stream(self):
        """The capability on a stream that is not a mapped-ram file: refused
        before anything runs."""
        stream = os.path.join(self.tmp.name, "stream.gw")
        with dirtier() as src:
            src.wait_passes(1)
            src.qmp.cmd("migrate", uri="file:" + stream)
            self.assertEqual(wait_migration(src)["status"], "completed")
            with lazy_restorer(src, stream) as dst:
                assert_destination_refused(self, dst, "mapped-ram files only")


if __name__ == "__main__":
    gwtest.main()
