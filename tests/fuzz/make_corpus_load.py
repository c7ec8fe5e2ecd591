#!/usr/bin/env python3
"""Write the seed corpus of the load fuzzer (tests/fuzz/corpus-load).

    tests/fuzz/make_corpus_load.py [BUILD_DIR [OUT_DIR]]

Run it after a deliberate change of a section's layout; it needs /dev/kvm
and a build of godwit-vmm and the guests. The streams come from a real
godwit-vmm with the machine tests/fuzz/loadvm.h expects (--memory 4M,
one vCPU, the dirtier guest touching a few pages):

  ok-paused          a guest that never ran (saved with --paused)
  ok-running         a running guest, saved live
  ok-running-state   the same without its RAM_PAGES records: still valid
                     (pages not sent read as zero), and small, so the
                     fuzzer's mutations land in device state
  ok-uart-rx         ok-running-state with bytes waiting in the UART
                     FIFO, wrapped around its end
  ok-mapped          a running guest saved live into a mapped-ram file
                     (docs/format.md, "Mapped-RAM files")
  bad-*              ok-running-state with one field set to a value no
                     device holds (issue 13), CRCs recomputed

Field offsets come from the stream's VMDESC, with the helpers of the e2e
test test_hostile_state.py.
"""
import os
import struct
import sys

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
if len(sys.argv) > 1:
    os.environ["GODWIT_BUILD"] = os.path.abspath(sys.argv[1])
OUT = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else \
    os.path.join(SRC, "tests", "fuzz", "corpus-load")

import gwtest  # noqa: E402
from test_hostile_state import (RECORD_HEADER, STREAM_HEADER,  # noqa: E402
                                field_location, records, with_field)

REC_RAM_PAGES = 0x0006


def save(paused, mapped=False):
    vm = gwtest.dirtier(memory="4M", vcpus=1, append="end=0x208000", paused=paused)
    try:
        if not paused:
            vm.wait_passes(1)
        if mapped:
            vm.qmp.cmd("migrate-set-capabilities",
                       capabilities=[{"capability": "mapped-ram", "state": True}])
        path = os.path.join(vm.dir, "seed.gw")
        vm.qmp.cmd("migrate", uri="file:" + path)
        r = gwtest.wait_migration(vm)
        assert r["status"] == "completed", r
        with open(path, "rb") as f:
            return f.read()
    finally:
        vm.__exit__(None, None, None)


def without_pages(stream):
    out = bytearray(stream[:STREAM_HEADER])
    for off, rtype, length in records(stream):
        if rtype != REC_RAM_PAGES:
            out += stream[off:off + RECORD_HEADER + length]
    return bytes(out)


def field(stream, section, name):
    _, pos, f = field_location(stream, section, 0, name)
    return int.from_bytes(stream[pos:pos + f["size"]], "little")


def uart_with_input(stream):
    """Three bytes waiting at the end of the FIFO and the start again; IIR
    and LSR as the UART would have them (no interrupts enabled)."""
    fcr = field(stream, "uart", "fcr")
    s = with_field(stream, "uart", 0, "rbr_fifo", b"\x02\x03", 0)
    s = with_field(s, "uart", 0, "rbr_fifo", b"\x01", 15)
    for name, value in (("rx_head", 15), ("rx_count", 3), ("ier", 0),
                        ("iir", 0x01 | (0xc0 if fcr & 1 else 0)), ("lsr", 0x61)):
        s = with_field(s, "uart", 0, name, value)
    return s


def main():
    os.makedirs(OUT, exist_ok=True)
    running = save(paused=False)
    state = without_pages(running)
    seeds = {
        "ok-paused": save(paused=True),
        "ok-running": running,
        "ok-running-state": state,
        "ok-uart-rx": uart_with_input(state),
        "ok-mapped": save(paused=False, mapped=True),
        "bad-cpu-nr_msrs-0x100000": with_field(state, "cpu", 0, "nr_msrs", 0x100000),
        "bad-cpu-nr_msrs-0x10000000": with_field(state, "cpu", 0, "nr_msrs", 0x10000000),
        "bad-cpu-nr_msrs-0xffffffff": with_field(state, "cpu", 0, "nr_msrs", 0xffffffff),
        "bad-cpu-rflags": with_field(state, "cpu", 0, "regs.rflags", 0),
        "bad-cpu-mp_state": with_field(state, "cpu", 0, "mp.mp_state", 7),
        # struct kvm_irqchip: chip_id, pad, then kvm_ioapic_state, whose
        # ioregsel follows the 8-byte base address.
        "bad-kvm-vm-ioapic": with_field(state, "kvm-vm", 0, "ioapic",
                                        struct.pack("<I", 0x100), 16),
        "bad-uart-rx_head-255": with_field(state, "uart", 0, "rx_head", 255),
        "bad-uart-rx_count-17": with_field(state, "uart", 0, "rx_count", 17),
        "bad-uart-lsr": with_field(state, "uart", 0, "lsr", 0),
        "bad-testdev-ready-2": with_field(state, "testdev", 0, "ready", 2),
        "bad-run-state-running-7": with_field(state, "run-state", 0, "running", 7),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
