"""A hostile guest against the virtio-blk device.

guests/blkevil.elf drives the device by hand and, case after case, hands
it what no driver may: descriptors outside RAM or wrapping 2^64, chains
that loop or outgrow the queue, queues of the wrong size or place,
registers written a byte at a time... It checks itself that the device
refused each one (IOERR or UNSUPP, or DEVICE_NEEDS_RESET with a
configuration interrupt), wrote no guest memory outside the buffers a
valid request names, and still served a valid write and read afterwards
(guests/README.md). The host checks the rest: the VMM survived with no
sanitizer report, named on stderr the rule each ring broke, and the image
changed only where the valid writes went.
"""
import os
import random
import re
import shutil
import struct
import tempfile
import unittest

import gwtest
from gwtest import Vmm

IMAGE_BYTES = 1 << 20
# Where blkevil's valid write goes, and what it writes there after case n
# (guests/blkevil.c, valid_qword()).
VALID_SECTOR, VALID_BYTES = 8, 4096
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1

DROPPED = re.compile(r"^godwit-vmm: (\d+) more broken-ring messages not logged$", re.M)
CASE = re.compile(r"^blkevil: (\d+) (\S+): (.*)$", re.M)
RULE = re.compile(r"^godwit-vmm: virtio-blk 0: the driver broke the rules \((.*)\); "
                  r"the device needs a reset$", re.M)
SANITIZERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error",
              "SUMMARY: UndefinedBehaviorSanitizer")

# The cases this device answers with DEVICE_NEEDS_RESET, and what its
# message must say of the rule broken (vmm/dev/virtqueue.c, virtio_mmio.c,
# virtio_blk.c). The others it answers IOERR or UNSUPP, or ignores.
OUTSIDE_RAM = "is outside RAM or too long"
LOOP = "(a loop?)"
OUTSIDE_QUEUE = "is outside the queue of 8"
NO_STATUS = "a request without a status byte"
QUEUE_SIZE = "is not a power of two up to"
QUEUE_OUTSIDE_RAM = "queue parts outside RAM"
QUEUE_MISALIGNED = "queue parts misaligned"
RULES = {
    "desc-beyond-ram": "descriptor 1 (512 bytes) " + OUTSIDE_RAM,
    "desc-across-ram-end": "descriptor 1 (512 bytes) " + OUTSIDE_RAM,
    "desc-in-mmio-hole": "descriptor 1 (512 bytes) " + OUTSIDE_RAM,
    "desc-above-4g": "descriptor 1 (512 bytes) " + OUTSIDE_RAM,
    "desc-wraps-2^64": "descriptor 1 (1024 bytes) " + OUTSIDE_RAM,
    "desc-len-4g-1": "descriptor 1 (4294967295 bytes) " + OUTSIDE_RAM,
    "header-in-mmio-hole": "descriptor 0 (16 bytes) " + OUTSIDE_RAM,
    "status-beyond-ram": "descriptor 2 (1 bytes) " + OUTSIDE_RAM,
    "chain-over-16m": "holds more than 16777216 bytes",
    "chain-loops-back": LOOP,
    "chain-self-loop": LOOP,
    "chain-longer-than-queue": LOOP,
    "next-beyond-queue": "descriptor 8 " + OUTSIDE_QUEUE,
    "next-0xffff": "descriptor 65535 " + OUTSIDE_QUEUE,
    "head-beyond-queue": "descriptor 8 " + OUTSIDE_QUEUE,
    "avail-idx-jump": "made 9 entries available in a queue of 8",
    "readable-after-writable": "descriptor 2 is readable after a writable one",
    "indirect-not-offered": "descriptor 1 is indirect, which was not offered",
    "no-writable-desc": NO_STATUS,
    "status-len-0": NO_STATUS,
    "queue-num-0": "queue size 0 " + QUEUE_SIZE,
    "queue-num-6": "queue size 6 " + QUEUE_SIZE,
    "queue-num-over-max": "queue size 256 " + QUEUE_SIZE,
    "queue-num-0x10008": "queue size 65544 " + QUEUE_SIZE,
    "queue-desc-beyond-ram": QUEUE_OUTSIDE_RAM,
    "queue-avail-across-ram-end": QUEUE_OUTSIDE_RAM,
    "queue-used-in-mmio-hole": QUEUE_OUTSIDE_RAM,
    "queue-used-wraps-2^64": QUEUE_OUTSIDE_RAM,
    "queue-desc-above-4g": QUEUE_OUTSIDE_RAM,
    "queue-desc-misaligned": QUEUE_MISALIGNED,
    "queue-avail-misaligned": QUEUE_MISALIGNED,
    "queue-used-misaligned": QUEUE_MISALIGNED,
}


def valid_data(case):
    """The 4 KiB blkevil's valid write puts at VALID_SECTOR after `case`."""
    return struct.pack(f"<{VALID_BYTES // 8}Q",
                       *(((case << 32 | i) * GOLDEN) & MASK64 for i in range(VALID_BYTES // 8)))


class HostileDriver(unittest.TestCase):
    def run_blkevil(self, cache, aio):
        """Run blkevil on a 1 MiB image of random bytes: its exit status,
        console and stderr, and the image before and after."""
        d = tempfile.mkdtemp(prefix="gw-e2e-blkevil-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        image = os.path.join(d, "disk.img")
        before = random.Random(cache).randbytes(IMAGE_BYTES)
        with open(image, "wb") as f:
            f.write(before)
        with Vmm(kernel=gwtest.BLKEVIL, memory="64M", qmp=False,
                 extra=["--drive", f"file={image},cache={cache},aio={aio}"]) as vm:
            status = vm.wait(timeout=300)
            serial, stderr = vm.serial_text(), vm.stderr_text()
        with open(image, "rb") as f:
            after = f.read()
        return status, serial, stderr, before, after

    def check(self, cache, aio="threads"):
        status, serial, stderr, before, after = self.run_blkevil(cache, aio)
        for s in SANITIZERS:
            self.assertNotIn(s, stderr)
        self.assertEqual(status, 0, serial + stderr)

        cases = CASE.findall(serial)
        self.assertEqual([int(n) for n, _, _ in cases], list(range(1, len(cases) + 1)), serial)
        self.assertIn(f"blkevil: all {len(cases)} cases ok", serial)
        self.assertNotIn("FAILED", serial)

        # One message per case the device gave up on, in the same order,
        # but at most 10 a second (ratelog.h): those past it are counted
        # in a line of their own when the next second's first one comes,
        # so a fast run logs a subsequence of the cases, the rest counted
        # (or, in its last second, not yet).
        reset = [name for _, name, what in cases if what == "needs reset"]
        self.assertEqual(sorted(reset), sorted(RULES), serial)
        rules = RULE.findall(stderr)
        dropped = sum(int(n) for n in DROPPED.findall(stderr))
        self.assertGreaterEqual(len(rules), min(len(reset), 10), stderr)
        want = iter(reset)
        for rule in rules:
            if not any(RULES[name] in rule for name in want):
                self.fail(f"'{rule}' is no case's rule, or out of order:\n{stderr}")
        self.assertLessEqual(len(rules) + dropped, len(reset), stderr)

        # The bad requests wrote nothing to the disk, and nothing past its
        # end; the valid writes only their 4 KiB, the last one's intact.
        lo, hi = VALID_SECTOR * 512, VALID_SECTOR * 512 + VALID_BYTES
        self.assertEqual(len(after), IMAGE_BYTES)
        self.assertEqual(after[:lo], before[:lo])
        self.assertEqual(after[hi:], before[hi:])
        self.assertEqual(after[lo:hi], valid_data(len(cases)))

    def test_cache_none(self):
        self.check("none")

    def test_cache_writeback(self):
        self.check("writeback")

    def test_io_uring_cache_none(self):
        self.check("none", "io_uring")

    def test_io_uring_cache_writeback(self):
        self.check("writeback", "io_uring")


if __name__ == "__main__":
    gwtest.main()
