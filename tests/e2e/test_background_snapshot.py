#!/usr/bin/env python3
"""Background snapshots (capability background-snapshot): the guest as it
was at the command, saved while it runs on, with userfaultfd
write-protect catching every write to a page not saved yet.

The proof of the instant: the source hashes its RAM while the engine holds
the guest paused (x-godwit-verify-hash gives it as x-godwit-snapshot-hash),
the guest keeps rewriting its memory during the save, and the restore loads
exactly that hash, not the RAM at the end."""
import os
import signal
import subprocess
import tempfile
import time
import unittest

import gwtest
from gwtest import (DIRTIER, Vmm, assert_destination_refused, dirtier, wait_migration,
                    wait_until)

PM_UFFD_WP = 1 << 57


def protected_pages(vm):
    """Pages of guest RAM that are still write-protected in the VMM, read
    from /proc/PID/pagemap (bit 57: uffd-wp, markers of holes included)."""
    count = 0
    with open(f"/proc/{vm.proc.pid}/maps") as f:
        ranges = [tuple(int(x, 16) for x in line.split()[0].split("-"))
                  for line in f if "memfd:ram-" in line]
    assert ranges, "no guest RAM mapping in godwit-vmm"
    with open(f"/proc/{vm.proc.pid}/pagemap", "rb") as pm:
        for start, end in ranges:
            pm.seek(start // 4096 * 8)
            data = pm.read((end - start) // 4096 * 8)
            for i in range(0, len(data), 8):
                if int.from_bytes(data[i:i + 8], "little") & PM_UFFD_WP:
                    count += 1
    return count


def live_caps(vm, mapped=False, hashed=True):
    vm.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "background-snapshot", "state": True},
        {"capability": "mapped-ram", "state": mapped},
        {"capability": "x-godwit-verify-hash", "state": hashed}])


def snapshot(test, vm, uri, params=None, mapped=False, timeout=120):
    """A background snapshot into uri, checked while it runs and after:
    the guest never stops running (but for the pause), the writes it made
    during the save were caught, and nothing stays protected."""
    live_caps(vm, mapped)
    vm.qmp.cmd("migrate-set-parameters", **(params or {}))
    before = vm.passes()
    vm.qmp.cmd("migrate", uri=uri)
    seen = set()

    def done():
        seen.add(vm.qmp.cmd("query-status")["status"])
        return vm.qmp.cmd("query-migrate")["status"] in ("completed", "failed", "cancelled")

    wait_until(done, timeout, "the snapshot's end")
    r = vm.qmp.cmd("query-migrate")
    test.assertEqual(r["status"], "completed", r)
    # finish-migrate: the pause of the instant, which a poll may catch.
    test.assertEqual(seen - {"running", "finish-migrate"}, set(),
                     "the guest stopped during the snapshot")
    test.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
    test.assertEqual(protected_pages(vm), 0)
    vm.wait_passes(1)
    test.assertTrue(all(a > b for a, b in zip(vm.passes(), before)))
    test.assertFalse(vm.guest()["check-failed"], vm.serial_text())
    return r


def check_restore(test, src, path, snap_hash):
    with gwtest.destination(src, "file:" + path) as dst:
        d = wait_migration(dst)
        test.assertEqual(d["status"], "completed", d)
        test.assertEqual(d["x-godwit-ram-hash"], snap_hash,
                         "the restore is not the guest at the snapshot's instant")
        test.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
        dst.wait_passes(2)
        test.assertFalse(dst.guest()["check-failed"], dst.serial_text())


class Instant(unittest.TestCase):
    """Restored RAM is RAM at the command, while the guest rewrote it."""

    def run_pattern(self, append, mapped, params):
        with dirtier(memory="256M", append=append) as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "live.gwm" if mapped else "live.gw")
            # Slow enough that the guest rewrites its pages many times over
            # while they are saved.
            params = dict({"max-bandwidth": 48 << 20}, **params)
            r = snapshot(self, src, "file:" + path, params, mapped=mapped)
            self.assertGreater(r["x-godwit-wp-faults"], 0, r)
            self.assertIn("x-godwit-wp-max-wait-us", r)
            self.assertGreater(r["x-godwit-pause-us"], 0, r)
            snap = r["x-godwit-snapshot-hash"]
            self.assertNotEqual(src.ram_hash(), snap, "the guest wrote nothing after the instant")
            check_restore(self, src, path, snap)

    def test_random_pages_stream(self):
        self.run_pattern("end=64M mode=random", False, {})

    def test_random_pages_mapped_two_writers(self):
        self.run_pattern("end=64M mode=random", True, {"multifd-channels": 2})

    def test_whole_range_stream(self):
        self.run_pattern("end=64M", False, {})

    def test_whole_range_mapped_direct_io_four_writers(self):
        self.run_pattern("end=64M", True, {"direct-io": True, "multifd-channels": 4})

    def test_every_uri(self):
        """exec:, fd: (getfd), unix: and tcp: as well as file:. A godwit
        destination on a socket loads the snapshot and holds that copy
        paused (its source runs on): 'cont' runs it."""
        with dirtier(memory="128M", append="end=32M mode=random") as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "exec.gw")
            r = snapshot(self, src, f"exec:cat > {path}")
            check_restore(self, src, path, r["x-godwit-snapshot-hash"])

            path = os.path.join(src.dir, "fd.gw")
            with open(path, "wb") as f:
                src.qmp.cmd("getfd", fdname="snap", fd=f.fileno())
            r = snapshot(self, src, "fd:snap")
            check_restore(self, src, path, r["x-godwit-snapshot-hash"])

            for uri in (f"unix:{os.path.join(src.dir, 'mig.sock')}",
                        f"tcp:127.0.0.1:{gwtest.free_port()}"):
                with self.subTest(uri=uri), gwtest.destination(src, uri) as dst:
                    r = snapshot(self, src, uri)
                    d = wait_migration(dst)
                    self.assertEqual(d["status"], "completed", d)
                    self.assertTrue(d.get("x-godwit-held"), d)
                    self.assertEqual(d["x-godwit-ram-hash"], r["x-godwit-snapshot-hash"])
                    self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                    dst.qmp.cmd("cont")
                    dst.wait_passes(2)
                    self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_cli_snapshot_save_live(self):
        with dirtier(memory="128M", append="end=32M") as src:
            src.wait_passes(1)
            src.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "x-godwit-verify-hash", "state": True}])
            path = os.path.join(src.dir, "cli.gwm")
            r = subprocess.run([gwtest.CLI, "-s", src.sock, "snapshot", "save", "--live",
                                "--parallel", "2", path],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"saved .*cli.gwm: \d+ ms, .*live: guest paused "
                                       r"[\d.]+ ms, \d+ write faults")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            snap = src.qmp.cmd("query-migrate")["x-godwit-snapshot-hash"]
            check_restore(self, src, path, snap)


class Faults(unittest.TestCase):
    def assert_unharmed(self, vm):
        """Running, nothing protected, and every page of its range written
        again (seq mode writes each page once per pass)."""
        self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
        self.assertEqual(protected_pages(vm), 0)
        vm.wait_passes(2)
        self.assertFalse(vm.guest()["check-failed"], vm.serial_text())

    def test_cancel_at_several_points(self):
        with dirtier(memory="256M", append="end=64M") as src:
            src.wait_passes(1)
            for point in ("at once", "early", "mid-RAM", "at the end"):
                with self.subTest(point=point):
                    path = os.path.join(src.dir, "cancelled.gwm")
                    if os.path.exists(path):
                        os.unlink(path)
                    live_caps(src, mapped=True, hashed=False)
                    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20})
                    src.qmp.cmd("migrate", uri="file:" + path)
                    if point == "early":
                        time.sleep(0.05)
                    elif point == "mid-RAM":
                        wait_until(lambda: src.qmp.cmd("query-migrate").get(
                            "ram", {}).get("transferred", 0) > 24 << 20, 30, "mid-RAM")
                    elif point == "at the end":
                        wait_until(lambda: src.qmp.cmd("query-migrate").get(
                            "ram", {}).get("transferred", 0) > 60 << 20, 30, "the end")
                    src.qmp.cmd("migrate-cancel")
                    r = wait_migration(src)
                    self.assertIn(r["status"], ("cancelled", "completed") if point == "at the end"
                                  else ("cancelled",), r)
                    self.assert_unharmed(src)
                    # Cancelled before the file was opened, there is none.
                    if r["status"] == "cancelled" and os.path.exists(path):
                        with gwtest.destination(src, "file:" + path) as dst:
                            assert_destination_refused(self, dst, "did not finish")

    def test_full_disk(self):
        mnt = tempfile.mkdtemp(prefix="godwit-full-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
        try:
            with dirtier(memory="128M", append="end=48M") as src:
                src.wait_passes(1)
                live_caps(src, hashed=False)
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
                src.qmp.cmd("migrate", uri="file:" + os.path.join(mnt, "full.gw"))
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("no space left", r["error-desc"].lower())
                self.assert_unharmed(src)
        finally:
            subprocess.run(["umount", mnt], check=False)
            os.rmdir(mnt)

    def test_exec_command_exits_early(self):
        with dirtier(memory="128M", append="end=48M") as src:
            src.wait_passes(1)
            live_caps(src, hashed=False)
            src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
            src.qmp.cmd("migrate", uri="exec:head -c 100000 > /dev/null")
            r = wait_migration(src)
            self.assertEqual(r["status"], "failed", r)
            self.assertIn("exec 'head -c 100000", r["error-desc"])
            self.assertIn("before it read the whole stream", r["error-desc"])
            self.assert_unharmed(src)

    def test_killed_midway(self):
        """SIGKILL of the VMM mid-snapshot leaves a file the loader refuses."""
        for mapped in (False, True):
            with self.subTest(mapped=mapped):
                src = dirtier(append="end=32M")
                try:
                    src.wait_passes(1)
                    path = os.path.join(src.dir, "killed.gwm" if mapped else "killed.gw")
                    live_caps(src, mapped=mapped, hashed=False)
                    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20})
                    src.qmp.cmd("migrate", uri="file:" + path)
                    wait_until(lambda: src.qmp.cmd("query-migrate").get("ram", {}).get(
                        "transferred", 0) > 4 << 20, 30, "part of RAM written")
                    os.kill(src.proc.pid, signal.SIGKILL)
                    src.proc.wait()
                    dst = Vmm(kernel=DIRTIER, memory=src.memory, vcpus=src.vcpus,
                              extra=["--incoming", "defer"])
                    with dst:
                        dst.qmp.cmd("migrate-set-capabilities", capabilities=[
                            {"capability": "mapped-ram", "state": mapped}])
                        dst.qmp.cmd("migrate-incoming", uri="file:" + path)
                        assert_destination_refused(
                            self, dst, "did not finish" if mapped else "truncated")
                finally:
                    src.kill()

    def test_incremental_refused(self):
        with dirtier() as src:
            src.wait_passes(1)
            with self.assertRaises(gwtest.QmpError) as e:
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "background-snapshot", "state": True},
                    {"capability": "mapped-ram", "state": True},
                    {"capability": "x-godwit-incremental", "state": True}])
            self.assertIn("background-snapshot and x-godwit-incremental", str(e.exception))


if __name__ == "__main__":
    gwtest.main()
