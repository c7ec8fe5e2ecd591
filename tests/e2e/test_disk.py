"""A virtio-blk disk that migrates with its guest on shared storage.

The guest (guests/diskcheck.elf) keeps writing every block of a range of
its disk with a pass number and a checksum, several requests in flight,
flushing as it goes, and reads each pass back; a migrated guest that
finds a block it wrote missing or torn fails its check. The host reads
the image too (guests/README.md has the block format): every block must
hold the last pass the guest finished or the one it was writing.
"""
import os
import signal
import struct
import time
import unittest

import gwtest
from gwtest import (DISKCHECK, QmpError, Vmm, assert_destination_refused, free_port,
                    wait_migration, wait_until)

BLOCK = 4096
BLOCKS = 256  # 1 MiB: a pass is a few hundred requests

M = (1 << 64) - 1
G = 0x9E3779B97F4A7C15


def block_pass(data, lba):
    """The pass a diskcheck block holds, or None if it is not a valid block
    at lba (guests/README.md)."""
    q = struct.unpack(f"<{len(data) // 8}Q", data)
    if q[0] != 0x31304B5349445747 or q[1] != lba:
        return None
    x = ((lba * G) & M) ^ q[2] or G
    h = 0xCBF29CE484222325
    for i, v in enumerate(q):
        if i >= 4:
            x ^= (x << 13) & M
            x ^= x >> 7
            x ^= (x << 17) & M
            if v != x:
                return None
        if i != 3:
            h = ((h ^ v) * 0x100000001B3) & M
    return q[2] if h == q[3] else None


def image_passes(path, blocks=BLOCKS):
    """The pass of every block of the image, None where a block is not valid."""
    with open(path, "rb") as f:
        data = f.read(blocks * BLOCK)
    return [block_pass(data[i * BLOCK:(i + 1) * BLOCK], i * BLOCK // 512)
            for i in range(blocks)]


def make_image(directory, name="disk.img", size=2 << 20):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def disk_guest(image, cache="none", append="", extra=(), aio="threads", **kw):
    return Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
               append=f"blocks={BLOCKS} depth=8 flush=16 {append}".strip(),
               extra=["--drive", f"file={image},cache={cache},aio={aio}"] + list(extra), **kw)


def disk_destination(src, image, uri, cache="none", extra=(), aio="threads"):
    dst = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
              extra=["--drive", f"file={image},cache={cache},aio={aio}", "--incoming", uri]
              + list(extra))
    dst.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "x-godwit-verify-hash", "state": True}])
    return dst


def hop(test, src, dst, migrate):
    """migrate() moves src's guest to dst (and checks what it expects of
    the migration); the guest's own check then passes there, src is gone
    and dst is returned. A failure kills dst too."""
    try:
        migrate()
        dst.wait_passes(2, timeout=60)
        test.assertFalse(dst.guest()["check-failed"], dst.serial_text())
    except BaseException:
        dst.kill()
        raise
    src.kill()
    return dst


def check_image(test, vm, image):
    """With the guest stopped and its requests done: every block holds the
    pass the guest finished last or the one it was writing."""
    done = vm.passes()[0]
    passes = image_passes(image)
    bad = [(i, p) for i, p in enumerate(passes) if p not in (done, done + 1)]
    test.assertEqual(bad[:5], [], f"blocks not of pass {done} or {done + 1}")


class Boot(unittest.TestCase):
    def test_passes_and_image(self):
        """The guest writes, flushes and verifies two passes and exits; the
        image holds exactly pass 2 in every block, for both cache modes and
        both I/O engines."""
        for cache, aio in (("none", "threads"), ("writeback", "threads"),
                           ("none", "io_uring"), ("writeback", "io_uring")):
            with self.subTest(cache=cache, aio=aio):
                d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
                image = make_image(d)
                with disk_guest(image, cache, "passes=2", aio=aio) as vm:
                    self.assertEqual(vm.wait(60), 0, vm.serial_text() + vm.stderr_text())
                    self.assertIn("diskcheck", vm.serial_text())
                self.assertEqual(image_passes(image), [2] * BLOCKS)
                # A restart on the image finds pass 2 and goes on from it.
                with disk_guest(image, cache, "passes=1", aio=aio) as vm:
                    self.assertEqual(vm.wait(60), 0, vm.serial_text())
                self.assertEqual(image_passes(image), [3] * BLOCKS)
                gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_bad_drive_options(self):
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        odd = os.path.join(d, "odd.img")
        with open(odd, "wb") as f:
            f.write(b"x" * 1000)
        for spec, words in ((f"file={d}/missing.img", "No such file"),
                            (f"file={odd}", "whole 512-byte sectors"),
                            ("cache=none", "file=PATH"),
                            (f"file={odd},format=qcow2", "format=raw"),
                            (f"file={odd},bogus=1", "expected"),
                            (f"file={odd},aio=native", "aio=threads|io_uring")):
            with self.subTest(spec=spec):
                vm = Vmm(kernel=DISKCHECK, extra=["--drive", spec], qmp=False)
                self.assertEqual(vm.wait(10), 2)
                self.assertIn(words, vm.stderr_text())
                vm.kill()
        gwtest.shutil.rmtree(d, ignore_errors=True)


class SharedStorage(unittest.TestCase):
    def migrate(self, src, dst, uri):
        src.qmp.cmd("migrate", uri=uri)
        r = wait_migration(src)
        self.assertEqual(r["status"], "completed", r)
        d = wait_migration(dst)
        self.assertEqual(d["status"], "completed", d)
        self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
        # The switchover's fdatasync is part of the downtime, and says how much.
        self.assertLessEqual(r["x-godwit-disk-sync-us"], r["x-godwit-downtime-us"], r)
        return r

    def test_three_hops_each_transport(self):
        """Writes in flight at every switchover: the guest's own check of
        every block passes on each destination, and the image is whole.
        The hops alternate the I/O engine: the device state is the same."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        src = disk_guest(image)
        try:
            src.wait_passes(1, timeout=60)
            for n, kind in enumerate(("tcp", "unix", "tcp")):
                uri = (f"tcp:127.0.0.1:{free_port()}" if kind == "tcp" else
                       f"unix:{os.path.join(d, f'mig{n}.sock')}")
                dst = disk_destination(src, image, uri,
                                       aio=("io_uring", "threads")[n % 2])
                src = hop(self, src, dst, lambda: self.migrate(src, dst, uri))
            src.qmp.cmd("stop")
            time.sleep(0.2)  # requests taken before the stop complete
            check_image(self, src, image)
        finally:
            src.kill()
            gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_source_killed_right_after_completion(self):
        """The source flushed before it sent the device state: killed the
        moment it reports completion, it loses nothing the guest was told
        was written, and the destination's next verification proves it."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        for cache in ("none", "writeback"):
            with self.subTest(cache=cache):
                src = disk_guest(image, cache)
                uri = f"unix:{os.path.join(d, 'kill.sock')}"
                try:
                    src.wait_passes(1, timeout=60)
                    dst = disk_destination(src, image, uri, cache)
                    try:
                        src.qmp.cmd("migrate", uri=uri)
                        wait_until(lambda: src.qmp.cmd("query-migrate")["status"] in
                                   ("completed", "failed"), 60, "the migration", 0.001)
                        os.kill(src.proc.pid, signal.SIGKILL)
                        self.assertEqual(wait_migration(dst)["status"], "completed")
                        dst.wait_passes(2, timeout=60)
                        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
                    finally:
                        dst.kill()
                finally:
                    src.kill()
        gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_destination_image_of_another_size_refused(self):
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        other = make_image(d, "other.img", 4 << 20)
        with disk_guest(image) as src:
            src.wait_passes(1, timeout=60)
            uri = f"unix:{os.path.join(d, 'size.sock')}"
            with disk_destination(src, other, uri) as dst:
                src.qmp.cmd("migrate", uri=uri)
                self.assertEqual(wait_migration(src)["status"], "failed")
                assert_destination_refused(self, dst, "bytes", "4194304")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(1, timeout=60)
            self.assertFalse(src.guest()["check-failed"], src.serial_text())
        gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_cancel_leaves_the_source_whole(self):
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        with disk_guest(image) as src:
            src.wait_passes(1, timeout=60)
            uri = f"unix:{os.path.join(d, 'cancel.sock')}"
            with disk_destination(src, image, uri) as dst:
                # The guest's RAM is mostly holes: at 16 KiB/s its few
                # hundred KiB take seconds, its disk requests going on.
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 10})
                src.qmp.cmd("migrate", uri=uri)
                wait_until(lambda: src.qmp.cmd("query-migrate")["status"] == "active", 10,
                           "the migration to start")
                time.sleep(0.2)
                src.qmp.cmd("migrate-cancel")
                self.assertEqual(wait_migration(src)["status"], "cancelled")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(2, timeout=60)
            self.assertFalse(src.guest()["check-failed"], src.serial_text())
        gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_snapshots_and_unshared_disks_refused(self):
        """Not built yet, so said plainly: a snapshot would not hold the
        disk, and an image only this host sees cannot follow the guest."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        with disk_guest(image) as vm:
            for uri, words in ((f"file:{d}/snap.gw", "snapshot"),):
                with self.assertRaises(QmpError) as cm:
                    vm.qmp.cmd("migrate", uri=uri)
                self.assertIn(words, str(cm.exception))
        local = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1, append=f"blocks={BLOCKS}",
                    extra=["--drive", f"file={image},shared=off"])
        with local:
            with self.assertRaises(QmpError) as cm:
                local.qmp.cmd("migrate", uri=f"unix:{d}/x.sock")
            self.assertIn("shared=off", str(cm.exception))
            self.assertEqual(local.qmp.cmd("query-status")["status"], "running")
        gwtest.shutil.rmtree(d, ignore_errors=True)


def seeded_image(directory, name, size=4 << 20):
    """An image whose guest range (the first MiB) the guest writes, with a
    MiB of data it never touches after it and a hole (the rest)."""
    path = make_image(directory, name, size)
    data = os.urandom(1 << 20)
    with open(path, "r+b") as f:
        f.seek(1 << 20)
        f.write(data)
    return path, data


def allocated(path):
    return os.stat(path).st_blocks * 512


def block_on(vm):
    vm.qmp.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "block", "state": True}])


class NonSharedStorage(unittest.TestCase):
    """Each host its own image: the disk is copied live with the RAM."""

    def test_three_hops(self):
        """Writes in flight, the image copied hop after hop (capability
        block, then migrate's blk): the guest's check passes everywhere, the
        data it never touched arrives, and the hole stays a hole."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image, data = seeded_image(d, "hop0.img")
        src = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                  append=f"blocks={BLOCKS} depth=8 flush=16",
                  extra=["--drive", f"file={image},cache=none,shared=off"])
        try:
            src.wait_passes(1, timeout=60)
            for n in range(3):
                nxt = make_image(d, f"hop{n + 1}.img", 4 << 20)
                uri = f"unix:{os.path.join(d, f'blk{n}.sock')}"
                aio = ("io_uring", "threads")[n % 2]
                dst = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                          extra=["--drive", f"file={nxt},cache=none,shared=off,aio={aio}",
                                 "--incoming", uri])

                def migrate(first=n == 0):
                    if first:
                        block_on(src)
                        src.qmp.cmd("migrate", uri=uri)
                    else:
                        src.qmp.cmd("migrate", uri=uri, blk=True)
                    r = wait_migration(src)
                    self.assertEqual(r["status"], "completed", r)
                    self.assertEqual(r["disk"]["total"], 4 << 20, r)
                    self.assertEqual(r["disk"]["remaining"], 0, r)
                    self.assertEqual(wait_migration(dst)["status"], "completed")

                src, image = hop(self, src, dst, migrate), nxt
            src.qmp.cmd("stop")
            time.sleep(0.2)
            check_image(self, src, image)
            with open(image, "rb") as f:
                f.seek(1 << 20)
                self.assertEqual(f.read(1 << 20), data, "the untouched MiB did not arrive")
                self.assertEqual(f.read(), bytes(2 << 20))
            self.assertLessEqual(allocated(image), 2 << 20, "the hole was written")
        finally:
            src.kill()
            gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_paused_guest_images_identical(self):
        """A stopped guest's disk arrives byte for byte."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image, _ = seeded_image(d, "src.img")
        other = make_image(d, "dst.img", 4 << 20)
        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1, append=f"blocks={BLOCKS}",
                 extra=["--drive", f"file={image},shared=off"]) as src:
            src.wait_passes(1, timeout=60)
            src.qmp.cmd("stop")
            uri = f"unix:{os.path.join(d, 'p.sock')}"
            with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                     extra=["--drive", f"file={other},shared=off", "--incoming", uri]) as dst:
                src.qmp.cmd("migrate", uri=uri, blk=True)
                self.assertEqual(wait_migration(src)["status"], "completed")
                self.assertEqual(wait_migration(dst)["status"], "completed")
                with open(image, "rb") as a, open(other, "rb") as b:
                    x, y = a.read(), b.read()
                diff = [i for i in range(0, len(x), 4096) if x[i:i + 4096] != y[i:i + 4096]]
                self.assertEqual(diff[:8], [], f"the images differ in {len(diff)} blocks")
                dst.qmp.cmd("cont")
                dst.wait_passes(1, timeout=60)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_cancel_mid_copy_leaves_the_source_whole(self):
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image, data = seeded_image(d, "src.img", 64 << 20)
        other = make_image(d, "dst.img", 64 << 20)
        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1, append=f"blocks={BLOCKS}",
                 extra=["--drive", f"file={image},shared=off"]) as src:
            src.wait_passes(1, timeout=60)
            uri = f"unix:{os.path.join(d, 'c.sock')}"
            with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                     extra=["--drive", f"file={other},shared=off", "--incoming", uri]):
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
                src.qmp.cmd("migrate", uri=uri, blk=True)
                wait_until(lambda: src.qmp.cmd("query-migrate").get("disk", {})
                           .get("transferred", 0) > 0, 30, "the disk copy to start")
                r = src.qmp.cmd("query-migrate")
                self.assertGreater(r["disk"]["remaining"], 0, r)
                src.qmp.cmd("migrate-cancel")
                self.assertEqual(wait_migration(src)["status"], "cancelled")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(2, timeout=60)
            self.assertFalse(src.guest()["check-failed"], src.serial_text())
            with open(image, "rb") as f:
                f.seek(1 << 20)
                self.assertEqual(f.read(1 << 20), data)
        gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_destination_refusals(self):
        """Another size, a shared image where the copy would land, a full
        file system: refused, the source runs on."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image, _ = seeded_image(d, "src.img")
        small = os.path.join(d, "small")
        os.mkdir(small)
        mounted = subprocess_ok(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small])
        cases = [(make_image(d, "bigger.img", 8 << 20), "shared=off", ("bytes", "8388608")),
                 (make_image(d, "shared.img", 4 << 20), "shared=on", ("shared=on",))]
        if mounted:
            cases.append((make_image(small, "full.img", 4 << 20), "shared=off",
                          ("No space left",)))
        try:
            with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1, append=f"blocks={BLOCKS}",
                     extra=["--drive", f"file={image},shared=off"]) as src:
                src.wait_passes(1, timeout=60)
                for n, (target, shared, words) in enumerate(cases):
                    with self.subTest(target=target):
                        uri = f"unix:{os.path.join(d, f'r{n}.sock')}"
                        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                                 extra=["--drive", f"file={target},{shared}",
                                        "--incoming", uri]) as dst:
                            src.qmp.cmd("migrate", uri=uri, blk=True)
                            self.assertEqual(wait_migration(src)["status"], "failed")
                            assert_destination_refused(self, dst, *words)
                        self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(1, timeout=60)
                self.assertFalse(src.guest()["check-failed"], src.serial_text())
        finally:
            if mounted:
                subprocess_ok(["umount", small])
            gwtest.shutil.rmtree(d, ignore_errors=True)

    def test_snapshot_holds_the_disk(self):
        """With block on, a stream into a file holds the disk: restored
        beside an empty image, the guest finds every block it wrote. A
        flipped byte in a chunk is refused, and nothing runs."""
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image, data = seeded_image(d, "src.img")
        snap = os.path.join(d, "snap.gw")
        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1, append=f"blocks={BLOCKS}",
                 extra=["--drive", f"file={image},shared=off"]) as src:
            src.wait_passes(1, timeout=60)
            with self.assertRaises(QmpError) as cm:
                src.qmp.cmd("migrate", uri="file:" + snap)
            self.assertIn("block migration", str(cm.exception))
            src.qmp.cmd("migrate", uri="file:" + snap, blk=True)
            self.assertEqual(wait_migration(src)["status"], "completed")
        # godwit analyze walks the disk's records without device code.
        out = gwtest.subprocess.run([gwtest.CLI, "analyze", snap], capture_output=True,
                                    text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        for kind in ("SECTION_START", "SECTION_PART", "SECTION_END"):
            self.assertRegex(out.stdout, rf"{kind} .* virtio-blk-data 0 version 1")
        with open(snap, "rb") as f:
            stream = bytearray(f.read())
        at = stream.find(data[:4096])
        self.assertGreater(at, 0, "the untouched MiB is not in the snapshot")
        restored = make_image(d, "restored.img", 4 << 20)
        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                 extra=["--drive", f"file={restored},shared=off",
                        "--incoming", "file:" + snap]) as dst:
            self.assertEqual(wait_migration(dst)["status"], "completed")
            dst.wait_passes(2, timeout=60)
            self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        with open(restored, "rb") as f:
            f.seek(1 << 20)
            self.assertEqual(f.read(1 << 20), data)
        stream[at + 100] ^= 0x40
        bad = os.path.join(d, "bad.gw")
        with open(bad, "wb") as f:
            f.write(stream)
        with Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                 extra=["--drive", f"file={make_image(d, 'r2.img', 4 << 20)},shared=off",
                        "--incoming", "file:" + bad]) as dst:
            assert_destination_refused(self, dst, "SECTION_PART", "crc")
        gwtest.shutil.rmtree(d, ignore_errors=True)


class LocalUpdate(unittest.TestCase):
    """A local live update keeps the very image, shared or not: the new
    process opens it and goes on with the requests in flight."""

    def test_cpr_transfer_and_exec_keep_the_disk(self):
        d = gwtest.tempfile.mkdtemp(prefix="gw-e2e-disk-")
        image = make_image(d)
        drive = ["--drive", f"file={image},cache=none,shared=off"]
        src = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                  append=f"blocks={BLOCKS} depth=8 flush=16", extra=drive)
        try:
            src.wait_passes(1, timeout=60)
            path = os.path.join(d, "cpr.sock")
            dst = Vmm(kernel=DISKCHECK, memory="64M", vcpus=1,
                      extra=drive + ["--incoming", "unix:" + path])

            def cpr_transfer():
                src.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
                src.qmp.cmd("migrate", uri="unix:" + path)
                self.assertEqual(wait_migration(src)["status"], "completed")
                self.assertEqual(wait_migration(dst)["status"], "completed")

            src = hop(self, src, dst, cpr_transfer)
            # cpr-exec: the stand-in and the new image open it too.
            state = os.path.join(d, "state.gw")
            pid = src.proc.pid
            src.qmp.cmd("migrate-set-parameters", mode="cpr-exec", **{
                "cpr-exec-command": src.argv[:-2] + ["--incoming", "file:" + state]})
            src.qmp.cmd("migrate", uri="file:" + state)
            r = wait_until(lambda: (lambda q: q if q and q.get("status") == "completed" and
                                    "x-godwit-adopted-bytes" in q else None)(_query(src)),
                           60, "the new image to run the guest")
            self.assertEqual(src.proc.pid, pid)
            self.assertEqual(len(r["x-godwit-pauses-us"]), 2, r)
            src.wait_passes(2, timeout=60)
            self.assertFalse(src.guest()["check-failed"], src.serial_text())
        finally:
            src.kill()
            gwtest.shutil.rmtree(d, ignore_errors=True)


def _query(vm):
    """query-migrate on a fresh connection (the VMM may have exec'd)."""
    try:
        if vm.qmp:
            vm.qmp.close()
        vm.qmp = gwtest.Qmp(vm.sock)
        return vm.qmp.cmd("query-migrate")
    except (OSError, EOFError, QmpError):
        vm.qmp = None
        return None


def subprocess_ok(argv):
    return gwtest.subprocess.run(argv, capture_output=True).returncode == 0


if __name__ == "__main__":
    gwtest.main()
