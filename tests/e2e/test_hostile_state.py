"""Loaded state is hostile until checked.

A stream whose checksums are all correct can still carry device state no
real source produces: a writer bug, another VMM, or someone who recomputed
the CRCs. Each case here takes a stream saved by a real godwit-vmm,
changes one field of one section, reseals that record (payload and header
CRC) and feeds it to a real destination. The destination must refuse it
before anything reaches the vCPUs or a device: status `failed`, run state
`inmigrate`, the guest never runs, and the error names the section, the
instance and the field.

The field is found through the stream's own VMDESC (docs/format.md,
"VMDESC"), the way an analyzer finds it, so the test does not hard-code a
layout.
"""
import json
import os
import struct
import time
import unittest

import gwtest
from gwtest import destination, dirtier, wait_migration

REC_SECTION_FULL = 0x0005
REC_VMDESC = 0x0007
STREAM_HEADER = 16
RECORD_HEADER = 24

def records(stream):
    """(offset, type, length) of every record of a stream."""
    off = STREAM_HEADER
    while off + RECORD_HEADER <= len(stream):
        rtype, _, _, length = struct.unpack_from("<HHIQ", stream, off)
        yield off, rtype, length
        off += RECORD_HEADER + length


def vmdesc_fields(stream, section, instance):
    """The VMDESC field list of (section, instance)."""
    for off, rtype, length in records(stream):
        if rtype == REC_VMDESC:
            doc = json.loads(stream[off + RECORD_HEADER:off + RECORD_HEADER + length])
            for s in doc["sections"]:
                if s["name"] == section and s["instance"] == instance:
                    return s["fields"]
    raise AssertionError(f"VMDESC does not describe {section} {instance}")


def section_data(stream, section, instance):
    """(record offset, offset of the section data in the stream) of the
    SECTION_FULL record of (section, instance): after the sub-header
    u32 id, u32 instance, u32 version, str name."""
    for off, rtype, length in records(stream):
        if rtype != REC_SECTION_FULL:
            continue
        p = off + RECORD_HEADER
        (inst,) = struct.unpack_from("<I", stream, p + 4)
        n = stream[p + 12]
        if stream[p + 13:p + 13 + n].decode() == section and inst == instance:
            return off, p + 13 + n
    raise AssertionError(f"no SECTION_FULL record for {section} {instance}")


def field_location(stream, section, instance, field):
    """(record offset, stream offset, VMDESC entry) of `field` of the
    SECTION_FULL record of (section, instance)."""
    rec, pos = section_data(stream, section, instance)
    for f in vmdesc_fields(stream, section, instance):
        if f["name"] == field:
            return rec, pos, f
        pos += f["size"] * f["count"]
    raise AssertionError(f"{section} has no field {field}")


def reseal_record(stream, rec):
    """Recompute both CRCs of the record at offset rec of a bytearray."""
    (length,) = struct.unpack_from("<Q", stream, rec + 8)
    payload = stream[rec + RECORD_HEADER:rec + RECORD_HEADER + length]
    struct.pack_into("<I", stream, rec + 16, gwtest.crc32c(payload))
    struct.pack_into("<I", stream, rec + 20, gwtest.crc32c(stream[rec:rec + 20]))


def with_field(stream, section, instance, field, value, index=0):
    """The stream with element `index` of `field` of (section, instance)
    set to `value` (an int; or bytes, written at byte `index` of a bytes
    field) and both CRCs of that record recomputed, as an honest writer
    would have written them."""
    rec, start, f = field_location(stream, section, instance, field)
    pos = start + index * f["size"]
    if isinstance(value, bytes):
        raw = value
    else:
        raw = value.to_bytes(f["size"], "little", signed=f["type"][0] == "i")
    assert pos + len(raw) <= start + f["size"] * f["count"], f"{field}: write past its end"
    out = bytearray(stream)
    out[pos:pos + len(raw)] = raw
    reseal_record(out, rec)
    return bytes(out)


assert_refused = gwtest.assert_destination_refused


class HostileState(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A running source, so the stream says the guest runs: a
        # destination that took the bad state would start its vCPUs.
        cls.src = dirtier(memory="32M", vcpus=1, append="end=4M")
        cls.src.wait_passes(1)
        cls.path, cls.data = gwtest.save_stream(cls.src)

    @classmethod
    def tearDownClass(cls):
        cls.src.__exit__(None, None, None)

    def load(self, data):
        path = os.path.join(self.src.dir, "hostile.gw")
        with open(path, "wb") as f:
            f.write(data)
        return destination(self.src, "file:" + path)

    def refused(self, section, field, value, *words, index=0):
        data = with_field(self.data, section, 0, field, value, index)
        with self.load(data) as dst:
            assert_refused(self, dst, f"section '{section}' instance 0",
                           f"field '{field}'", *words)

    def test_intact_stream_runs(self):
        # The control: the same stream unchanged loads and its guest runs.
        with self.load(self.data) as dst:
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            dst.wait_passes(1)
            self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")

    def test_rewrite_is_faithful(self):
        # Rewriting a field to the value it has gives the stream back, and
        # a value in range loads: the refusals below are the values' doing.
        self.assertEqual(with_field(self.data, "run-state", 0, "running", 1), self.data)
        data = with_field(self.data, "run-state", 0, "running", 0)
        self.assertNotEqual(data, self.data)
        with self.load(data) as dst:
            d = wait_migration(dst)
            self.assertEqual(d["status"], "completed", d)
            self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")

    def test_msr_count_beyond_the_array(self):
        # Issue 13: 0x100000 read 16 MiB past the 256 entries, 0x10000000
        # crashed, 0xffffffff failed with an empty reason.
        for n in (257, 0x100000, 0x10000000, 0xffffffff):
            with self.subTest(nr_msrs=hex(n)):
                self.refused("cpu", "nr_msrs", n, f"{n} (0x{n:x}) is outside 0..256"
                             if n > 0xffff else f"{n} is outside 0..256")

    def test_uart_fifo_index(self):
        # Issue 13: with rx_head 255 a guest read of RBR returned VMM memory.
        self.refused("uart", "rx_head", 255, "255 is outside 0..15")
        self.refused("uart", "rx_head", 16, "16 is outside 0..15")

    def test_uart_fifo_count(self):
        self.refused("uart", "rx_count", 17, "17 is outside 0..16")

    def test_uart_registers_the_guest_cannot_set(self):
        self.refused("uart", "fcr", 0xff, "bits outside 0xc9")
        self.refused("uart", "ier", 0x10, "16 is outside 0..15")

    def test_run_state_not_a_boolean(self):
        # Issue 13: running=7 was taken for running.
        self.refused("run-state", "running", 7, "7 is outside 0..1")

    def test_cpu_values_the_hardware_refuses(self):
        self.refused("cpu", "mp.mp_state", 7, "not an x86 MP state")
        self.refused("cpu", "mp.mp_state", 100, "100 is outside 0..9")
        # RFLAGS bit 1 is always set.
        self.refused("cpu", "regs.rflags", 0, "bit 1 clear")

    def test_testdev_flags(self):
        self.refused("testdev", "ready", 2, "2 is outside 0..1")
        self.refused("testdev", "pages_per_pass", 1 << 24, "[0] = 16777216 (0x1000000)")


if __name__ == "__main__":
    gwtest.main()
