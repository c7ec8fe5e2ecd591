"""The switchover handshake under faults: one guest, always.

A fault-injection proxy sits between a source and a destination
godwit-vmm and, at one chosen point of the switchover -- a record boundary
of the stream after the source paused its guest, or one of the handshake
messages READY, GO, RUNNING -- cuts the connection, freezes one direction
for longer than the timeouts, or delays it briefly. A cancel storm sends
`migrate-cancel` at delays spread across the switchover. After every case
exactly one guest runs, or -- only when GO left the source and nothing came
back -- none runs and the source holds the complete guest, paused, and says
so; never two. docs/format.md, "Switchover handshake", is the protocol.
"""
import os
import signal
import socket
import struct
import threading
import time
import unittest

import gwtest
from gwtest import Vmm, dirtier, free_port, wait_migration, wait_until

REC_SECTION_FULL, REC_VMDESC, REC_EOF = 0x0005, 0x0007, 0x0008
READY, RUNNING, FAILED, GO = 2, 0, 1, 3
FINAL = ("completed", "failed", "cancelled")

# Short timeouts keep a case to seconds; the confirmation waits longer than
# the destination waits for GO, so a GO that arrives too late is answered
# FAILED before the source gives up on it (the source may then resume).
TIMEOUTS = {"x-godwit-switchover-timeout": 1500, "x-godwit-ready-timeout": 1500,
            "x-godwit-confirm-timeout": 3000}
GO_TIMEOUT = 1500
FREEZE_S = 4.0   # longer than every timeout
DELAY_S = 0.3    # shorter than every timeout


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class FaultProxy:
    """TCP between source and destination that knows the framing: records of
    the stream (forward) and handshake messages (both ways, after EOF).

    `point` is (direction, kind, value): ("fwd", "record", type) before the
    first record of that type, or (dir, "msg", status) before that message.
    `action` on `target` direction ("fwd"/"back"): "cut" closes both
    connections; "freeze" and "delay" stop forwarding that direction for
    FREEZE_S / DELAY_S, then deliver what was held. `on_point` runs (in the
    proxy thread) when the point is reached, before the action.
    """

    def __init__(self, target_port, point, action, target, on_point=None):
        self.point, self.action, self.target = point, action, target
        self.on_point = on_point
        self.dst_port = target_port
        self.gates = {"fwd": threading.Event(), "back": threading.Event()}
        for g in self.gates.values():
            g.set()
        self.triggered = threading.Event()
        self.cut = False
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.threads = [threading.Thread(target=self.run, daemon=True)]
        self.threads[0].start()

    def run(self):
        try:
            self.src, _ = self.lsock.accept()
        finally:
            self.lsock.close()
        self.dst = socket.create_connection(("127.0.0.1", self.dst_port))
        back = threading.Thread(target=self.pump, args=("back", self.dst, self.src),
                                daemon=True)
        self.threads.append(back)
        back.start()
        self.pump("fwd", self.src, self.dst)
        back.join()
        for s in (self.src, self.dst):
            s.close()

    def fire(self):
        self.triggered.set()
        if self.on_point:
            self.on_point()
        if self.action == "cut":
            self.cut = True
            for s in (self.src, self.dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
        gate = self.gates[self.target]
        gate.clear()
        threading.Timer(FREEZE_S if self.action == "freeze" else DELAY_S, gate.set).start()

    def at(self, direction, kind, value):
        if self.triggered.is_set() or self.point != (direction, kind, value):
            return
        self.fire()

    def send(self, direction, out, data):
        self.gates[direction].wait()
        if self.cut:
            raise EOFError
        out.sendall(data)

    def pump(self, direction, inp, out):
        try:
            if direction == "fwd":
                self.send(direction, out, recv_exact(inp, 16))
                while True:
                    head = recv_exact(inp, 24)
                    rtype, _, _, length = struct.unpack_from("<HHIQ", head)
                    self.at("fwd", "record", rtype)
                    self.send(direction, out, head)
                    while length:
                        chunk = inp.recv(min(length, 1 << 20))
                        if not chunk:
                            raise EOFError
                        self.send(direction, out, chunk)
                        length -= len(chunk)
                    if rtype == REC_EOF:
                        break
            while True:
                head = recv_exact(inp, 24)
                status, _, n = struct.unpack_from("<III", head, 12)
                self.at(direction, "msg", status)
                self.send(direction, out, head + recv_exact(inp, n + 4))
        except (EOFError, OSError):
            pass
        # Pass the end on, so the peer sees what a real cut would show.
        try:
            out.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait(self, timeout=30):
        for t in self.threads:
            t.join(timeout)
            if t.is_alive():
                raise AssertionError("the fault proxy did not finish")


def new_destination(src, port, verify_hash=True):
    vm = Vmm(kernel=gwtest.DIRTIER, memory=src.memory, vcpus=src.vcpus,
             extra=["--incoming", f"tcp:127.0.0.1:{port}"])
    try:
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": verify_hash},
            {"capability": "events", "state": True}])
        vm.qmp.cmd("migrate-set-parameters", x_godwit_go_timeout=GO_TIMEOUT)
    except BaseException:
        vm.kill()
        raise
    return vm


def running(vm):
    return vm.qmp.cmd("query-status")["status"] == "running"


def assert_one_guest(test, src, dst):
    """The one-guest rule after a switchover, whatever happened. Returns the
    VMM that holds the guest now (after a manual `cont` in the one case
    that needs it)."""
    s = wait_migration(src, FINAL, 60)
    d = wait_migration(dst, ("completed", "failed"), 60)
    src_runs, dst_runs = running(src), running(dst)
    test.assertFalse(src_runs and dst_runs, f"two guests run: source {s}, destination {d}")
    if dst_runs:
        test.assertEqual(d["status"], "completed", d)
        test.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
        if "x-godwit-ram-hash" in d:  # with x-godwit-verify-hash
            test.assertEqual(d["x-godwit-ram-hash"], src.ram_hash(),
                             "the destination runs RAM that differs from the source's")
        dst.wait_passes(1)
        test.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        return dst
    test.assertEqual(dst.qmp.cmd("query-status")["status"], "inmigrate", d)
    test.assertEqual(d["status"], "failed", d)
    test.assertTrue(d.get("error-desc"), d)
    if not src_runs:
        # The documented manual case: GO left, no word came back.
        test.assertEqual(s["status"], "failed", s)
        test.assertTrue(s.get("x-godwit-unconfirmed"), s)
        test.assertIn("stays paused", s["error-desc"])
        test.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
        src.qmp.cmd("cont")
    test.assertIn(s["status"], ("failed", "cancelled"), s)
    test.assertTrue(running(src))
    src.wait_passes(1)
    test.assertFalse(src.guest()["check-failed"], src.serial_text())
    return src


POINTS = {
    "device-state": ("fwd", "record", REC_SECTION_FULL),
    "vmdesc": ("fwd", "record", REC_VMDESC),
    "eof": ("fwd", "record", REC_EOF),
    "ready": ("back", "msg", READY),
    "go": ("fwd", "msg", GO),
    "running": ("back", "msg", RUNNING),
}


class FaultMatrix(unittest.TestCase):
    """Every switchover point x cut / freeze / delay, on either direction
    where both can hold something back: 27 migrations."""

    def setUp(self):
        self.src = dirtier(memory="32M", append="end=8M")
        self.src.qmp.cmd("migrate-set-parameters", max_bandwidth=0, **{
            k.replace("-", "_"): v for k, v in TIMEOUTS.items()})
        self.src.wait_passes(1)

    def tearDown(self):
        self.src.__exit__(None, None, None)

    def run_case(self, point, action, target):
        src = self.src
        port = free_port()
        dst = new_destination(src, port)
        try:
            proxy = FaultProxy(port, POINTS[point], action, target)
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
            s = wait_migration(src, FINAL, 60)
            proxy.wait()
            self.assertTrue(proxy.triggered.is_set(), f"the stream never reached {point}")
            holder = assert_one_guest(self, src, dst)
            print(f"{point:>12} {action:>6} {target:>4}: source {s['status']}"
                  f"{' (unconfirmed)' if s.get('x-godwit-unconfirmed') else ''}, "
                  f"guest on the {'destination' if holder is dst else 'source'}"
                  f" -- {s.get('error-desc', '')[:150]}")
            if action == "delay":
                self.assertEqual(s["status"], "completed", s)
                self.assertIs(holder, dst)
        except BaseException:
            dst.__exit__(None, None, None)
            raise
        if holder is dst:
            # The guest lives on the destination now: it is the next source.
            src.__exit__(None, None, None)
            dst.qmp.cmd("migrate-set-parameters", max_bandwidth=0, **{
                k.replace("-", "_"): v for k, v in TIMEOUTS.items()})
            self.src = dst
        else:
            dst.__exit__(None, None, None)

    def test_matrix(self):
        cases = []
        for point in ("device-state", "vmdesc", "eof"):
            for action in ("cut", "freeze", "delay"):
                for target in ("fwd", "back"):
                    if action != "cut" or target == "fwd":
                        cases.append((point, action, target))
        for point in ("ready", "go", "running"):
            for action in ("cut", "freeze", "delay"):
                cases.append((point, action, POINTS[point][0]))
        for point, action, target in cases:
            with self.subTest(point=point, action=action, direction=target):
                self.run_case(point, action, target)

    def test_destination_stopped_before_eof(self):
        # The destination process is frozen (SIGSTOP) while the EOF record
        # is on its way, and thawed after the source gave up: it must not
        # resume from the EOF it finds buffered.
        src = self.src
        port = free_port()
        with new_destination(src, port) as dst:
            proxy = FaultProxy(port, POINTS["eof"], "delay", "fwd",
                               on_point=lambda: dst.proc.send_signal(signal.SIGSTOP))
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
            s = wait_migration(src, FINAL, 60)
            self.assertEqual(s["status"], "failed", s)
            self.assertIn("READY", s["error-desc"])
            self.assertTrue(running(src))
            time.sleep(1)
            dst.proc.send_signal(signal.SIGCONT)
            proxy.wait()
            self.assertIs(assert_one_guest(self, src, dst), src)
            # Well after the thaw, still one guest.
            time.sleep(0.5)
            self.assertFalse(running(dst))


class CancelStorm(unittest.TestCase):
    """100 cancels spread over 0-30 ms after the source's STOP event. The
    guest moves whenever the cancel came too late, so it travels back and
    forth between fresh processes and checks itself all the way."""

    def test_storm(self):
        vm = dirtier(memory="32M", append="end=8M")
        outcomes = {"cancelled": 0, "completed": 0, "failed": 0}
        try:
            for i in range(100):
                delay = (i % 26) / 1000.0
                port = free_port()
                vm.qmp.cmd("migrate-set-parameters", max_bandwidth=0)
                dst = new_destination(vm, port, verify_hash=bool(i % 2))
                try:
                    vm.qmp.events.clear()
                    vm.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
                    vm.qmp.wait_event("STOP", timeout=30)
                    time.sleep(delay)
                    vm.qmp.cmd("migrate-cancel")
                    holder = assert_one_guest(self, vm, dst)
                    outcomes[vm.qmp.cmd("query-migrate")["status"]] += 1
                except BaseException:
                    dst.__exit__(None, None, None)
                    raise
                old, vm = (vm, dst) if holder is dst else (dst, vm)
                old.__exit__(None, None, None)
        finally:
            vm.__exit__(None, None, None)
        print(f"cancel storm outcomes: {outcomes}")
        # Both outcomes must occur, or the delays missed the switchover.
        self.assertGreater(outcomes["cancelled"], 0, outcomes)
        self.assertGreater(outcomes["completed"], 0, outcomes)


if __name__ == "__main__":
    gwtest.main()
