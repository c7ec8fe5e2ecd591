"""Devices own their migration state: host input during a migration.

Host input reaches the UART on the VMM's main loop (uart_receive()) while
a migration thread saves the UART on the source, and while the loader
hands the loaded UART over on a destination that takes input too. Both
copy the state under the UART's lock (the uart section's pre_save and
post_load hooks, vmm/dev/dev_uart.c). No guest here reads COM1, so what is
typed fills the 16-byte FIFO and stays there. What must hold: every
state saved is one the UART can be in (rx_count, LSR and IIR agree, and
the FIFO holds the first bytes typed, in order); the migration completes
under input and the guest runs on; and the destination's UART is the
source's, followed only by what was typed there after it arrived.

The UART's state is read from streams saved to files, decoded by
`godwit analyze --json` from the stream's own description.
"""
import json
import os
import subprocess
import threading
import time
import unittest

import gwtest
from gwtest import wait_migration, wait_until

FIFO_SIZE = 16
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = b"abcdefghijklmnopqrstuvwxyz"


class SerialVmm(gwtest.Vmm):
    """A godwit-vmm with COM1 on its stdin and stdout (--serial stdio) and
    a pipe on its stdin, for the test to type into."""

    def __init__(self, extra=(), **kw):
        popen = subprocess.Popen

        def with_stdin_pipe(argv, **popen_kw):
            popen_kw["stdin"] = subprocess.PIPE
            return popen(argv, **popen_kw)

        # gwtest.Vmm gives every VMM /dev/null as stdin; only the Popen
        # of this constructor gets a pipe instead.
        subprocess.Popen = with_stdin_pipe
        try:
            # The last --serial wins over gwtest's file:.
            super().__init__(extra=["--serial", "stdio"] + list(extra), **kw)
        finally:
            subprocess.Popen = popen

    def kill(self):
        super().kill()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # bytes still buffered for a process that is gone


class Typist(threading.Thread):
    """Types `text` into a VMM's stdin, one byte every `interval` seconds,
    until the text ends or stop() is called; `typed` is what went out."""

    def __init__(self, vm, text, interval):
        super().__init__(daemon=True)
        self.vm, self.text, self.interval = vm, text, interval
        self.typed = bytearray()
        self.done = threading.Event()

    def run(self):
        for b in self.text:
            if self.done.wait(self.interval):
                return
            try:
                self.vm.proc.stdin.write(bytes([b]))
                self.vm.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            self.typed.append(b)

    def stop(self):
        self.done.set()
        self.join()


def uart_in_stream(path):
    """The uart section's fields, as `godwit analyze --json` decodes them."""
    r = subprocess.run([gwtest.CLI, "--json", "analyze", path], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for s in json.loads(r.stdout)["sections"]:
        if (s["name"], s["instance"]) == ("uart", 0):
            return s["fields"]
    raise AssertionError(f"{path}: no uart section")


def uart_iir(u):
    """The IIR a 16550A state implies (vmm/dev/dev_uart.c, uart_iir())."""
    iir = 0x01
    if u["ier"] & 0x01 and u["rx_count"]:
        iir = 0x04
    elif u["ier"] & 0x02 and u["thr_irq_pending"]:
        iir = 0x02
    return iir | (0xc0 if u["fcr"] & 0x01 else 0)


def received(test, u):
    """The bytes waiting in a UART state that must be one the UART can be
    in, in the order they arrived."""
    test.assertLessEqual(u["rx_count"], FIFO_SIZE, u)
    test.assertLess(u["rx_head"], FIFO_SIZE, u)
    test.assertEqual(u["lsr"], LSR_THRE | LSR_TEMT | (LSR_DR if u["rx_count"] else 0), u)
    test.assertEqual(u["iir"], uart_iir(u), u)
    fifo = bytes.fromhex(u["rbr_fifo"])
    return bytes(fifo[(u["rx_head"] + i) % FIFO_SIZE] for i in range(u["rx_count"]))


def save_to_file(test, vm, path):
    vm.qmp.cmd("migrate", uri="file:" + path)
    r = wait_migration(vm)
    test.assertEqual(r["status"], "completed", r)


class InputDuringMigration(unittest.TestCase):
    def setUp(self):
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            vm.__exit__(None, None, None)

    def vmm(self, **kw):
        vm = SerialVmm(**kw)
        self.vms.append(vm)
        return vm

    def typing(self, vm, text, interval):
        t = Typist(vm, text, interval)
        self.addCleanup(t.stop)
        t.start()
        return t

    def after_arrival(self, dst, arrived, typed_here):
        """The destination's UART, saved to a file: the state that arrived
        (`arrived`, None when unknown: then some first bytes of UPPER),
        then a run of what was typed here once it had arrived."""
        path = os.path.join(dst.dir, "after.gw")
        dst.qmp.cmd("stop")
        save_to_file(self, dst, path)
        got = received(self, uart_in_stream(path))
        n = len(arrived) if arrived is not None else len(got) - len(got.lstrip(UPPER))
        self.assertGreater(n, 0, f"nothing typed on the source arrived: {got!r}")
        self.assertEqual(got[:n], arrived if arrived is not None else UPPER[:n], got)
        # Typed before the state arrived: replaced by it; after: queued
        # behind it until the FIFO was full.
        self.assertIn(got[n:], bytes(typed_here), got)

    def test_saved_while_typing_then_loaded_while_typing(self):
        src = self.vmm(kernel=gwtest.IDLE, memory="64M", append="touch=16M")
        wait_until(lambda: src.guest()["ready"], 10, "the guest to stamp its memory")
        # Slow enough that the FIFO is still filling when the UART is saved.
        src_typist = self.typing(src, UPPER, 0.05)
        wait_until(lambda: len(src_typist.typed) >= 2, 10, "the first keys")
        path = os.path.join(src.dir, "guest.gw")
        save_to_file(self, src, path)
        got = received(self, uart_in_stream(path))
        self.assertGreater(len(got), 0, "no byte typed reached the UART")
        self.assertEqual(got, UPPER[:len(got)], "the FIFO holds the first bytes typed, in order")

        dst = self.vmm(kernel=gwtest.IDLE, memory="64M", extra=["--incoming", "defer"])
        dst_typist = self.typing(dst, LOWER, 0.02)
        dst.qmp.cmd("migrate-incoming", uri="file:" + path)
        d = wait_migration(dst)
        self.assertEqual(d["status"], "completed", d)
        self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
        dst_typist.stop()
        self.after_arrival(dst, got, dst_typist.typed)

    def test_live_migration_while_typing_on_both_sides(self):
        src = self.vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=2, append="end=32M")
        src.wait_passes(1)
        uri = "unix:" + os.path.join(src.dir, "mig.sock")
        dst = self.vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=2, extra=["--incoming", uri])
        dst.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": True}])
        self.typing(src, UPPER, 0.05)
        dst_typist = self.typing(dst, LOWER, 0.05)
        time.sleep(0.2)
        gwtest.migrate_and_check(self, src, dst, uri)
        dst_typist.stop()
        self.after_arrival(dst, None, dst_typist.typed)


if __name__ == "__main__":
    gwtest.main()
