"""Local live update between real godwit-vmm processes: cpr-transfer (the
memfds of guest RAM handed to an already started new process over a unix
socket) and cpr-exec (the process execs a new binary that inherits them).

Every update is checked the way a migration is: the guest keeps passing
its own memory check in its new process, the host compares the new
process's RAM as adopted with the old one's RAM at the pause (the same
pages, so a difference would be a write that should not have happened),
and query-migrate says that no RAM byte was copied. The faults kill or
stop the new process at each step of the protocol; after each, exactly one
process runs the guest -- the old one, unless the new one had confirmed.
docs/format.md, "Local live update", is the protocol.
"""
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
import unittest

import gwtest
from gwtest import DIRTIER, QmpError, Vmm, dirtier, wait_migration, wait_until

MIB = 1 << 20


def mem_bytes(vm):
    return int(str(vm.memory).rstrip("M")) * MIB


def new_process(src, path, extra=(), memory="same", vcpus=None, **kw):
    """A godwit-vmm waiting for a cpr-transfer on unix:path, hashing RAM as
    adopted before its guest runs. memory "same" gives --memory like src;
    None leaves it out (the size then comes from the old process)."""
    vm = Vmm(kernel=DIRTIER, memory=src.memory if memory == "same" else memory,
             vcpus=vcpus or src.vcpus, extra=["--incoming", "unix:" + path] + list(extra), **kw)
    try:
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-godwit-verify-hash", "state": True},
            {"capability": "events", "state": True}])
    except BaseException:
        vm.kill()
        raise
    return vm


def start_update(src, path, **migrate):
    src.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "x-godwit-verify-hash", "state": True}])
    src.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
    if migrate:
        src.qmp.cmd("migrate", **migrate)
    else:
        src.qmp.cmd("migrate", uri="unix:" + path)


def assert_updated(test, src, dst):
    """Both sides completed, nothing copied, the new process adopted the
    very RAM the old one paused with, and the guest runs on there, still
    passing its check; the old process will never run it again."""
    r = wait_migration(src)
    test.assertEqual(r["status"], "completed", r)
    d = wait_migration(dst)
    test.assertEqual(d["status"], "completed", d)
    test.assertEqual(r["ram"]["transferred"], 0, r)
    test.assertEqual(r["ram"]["normal"], 0, r)
    test.assertEqual(d["ram"]["transferred"], 0, d)
    test.assertEqual(r["x-godwit-mode"], "cpr-transfer")
    test.assertGreater(r["x-godwit-state-bytes"], 0)
    test.assertLess(r["x-godwit-state-bytes"], MIB, "device state only, no RAM")
    test.assertEqual(d["x-godwit-adopted-bytes"], mem_bytes(src))
    test.assertEqual(d["x-godwit-ram-hash"], r["x-godwit-pause-hash"],
                     "the new process's RAM differs from the old one's at the pause")
    test.assertIn("x-godwit-downtime-us", r)
    test.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
    with test.assertRaises(QmpError) as cm:
        src.qmp.cmd("cont")
    test.assertIn("handed its RAM", str(cm.exception))
    with test.assertRaises(QmpError):
        src.qmp.cmd("migrate", uri="unix:" + os.path.join(src.dir, "again.sock"))
    dst.wait_passes(2)
    test.assertFalse(dst.guest()["check-failed"], dst.serial_text())
    test.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
    return r, d


def quit_old(test, vm):
    vm.qmp.cmd("quit")
    test.assertEqual(vm.wait(), 0, vm.stderr_text())


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_stopped(vm, timeout=30):
    wait_until(lambda: proc_state(vm.proc.pid) == "T" or vm.proc.poll() is not None, timeout,
               "the new process to stop at its point")
    if vm.proc.poll() is not None:
        raise AssertionError(f"the new process exited: {vm.stderr_text()}")


def assert_old_runs_on(test, src, r):
    """The old process took its guest back: failed, says why, runs, and its
    guest is intact."""
    test.assertEqual(r["status"], "failed", r)
    gwtest.assert_names_the_failure(test, r["error-desc"])
    test.assertEqual(src.qmp.cmd("query-status")["status"], "running", r)
    src.wait_passes(2)
    test.assertFalse(src.guest()["check-failed"], src.serial_text())


class CprTransfer(unittest.TestCase):
    def test_three_updates_in_a_row(self):
        # old -> new -> newer -> newest, the guest dirtying on 2 vCPUs
        # throughout; each old process is quit once its successor runs.
        vm = dirtier()
        try:
            vm.wait_passes(1)
            for hop in range(3):
                with self.subTest(hop=hop):
                    path = os.path.join(vm.dir, f"cpr{hop}.sock")
                    nxt = new_process(vm, path)
                    start_update(vm, path)
                    assert_updated(self, vm, nxt)
                    quit_old(self, vm)
                    vm.kill()
                    vm = nxt
        finally:
            vm.kill()

    def test_channels_form(self):
        # QEMU's channels argument: a main and a cpr channel, one socket.
        with dirtier() as src:
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path) as dst:
                addr = {"transport": "socket", "type": "unix", "path": path}
                start_update(src, path, channels=[{"channel-type": "main", "addr": addr},
                                                  {"channel-type": "cpr", "addr": addr}])
                assert_updated(self, src, dst)

    def test_size_from_the_old_process(self):
        # Started without --memory, the new process takes the old guest's size.
        with dirtier(memory="96M") as src:
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path, memory=None) as dst:
                start_update(src, path)
                assert_updated(self, src, dst)

    def test_refusals_before_the_pause(self):
        # Each refusal comes in answer to the hello, before the old guest
        # paused: it runs on, and the new process never runs anything.
        cases = [
            ("tcp URI", {"uri": "tcp:127.0.0.1:1"}, None, "unix socket"),
            ("different cpr channel", {"channels": [
                {"channel-type": "main", "addr": {"transport": "socket", "type": "unix",
                                                  "path": "/tmp/a"}},
                {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix",
                                                 "path": "/tmp/b"}}]}, None, "one unix socket"),
            ("vCPU count", None, {"vcpus": 1}, "vcpu"),
            ("memory size", None, {"memory": "32M"}, "--memory"),
        ]
        for name, migrate, dst_kw, words in cases:
            with self.subTest(name), dirtier() as src:
                src.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
                if migrate:
                    with self.assertRaises(QmpError) as cm:
                        src.qmp.cmd("migrate", **migrate)
                    self.assertIn(words, str(cm.exception).lower())
                    self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                    continue
                path = os.path.join(src.dir, "cpr.sock")
                with new_process(src, path, **dst_kw) as dst:
                    src.qmp.cmd("migrate", uri="unix:" + path)
                    r = wait_migration(src)
                    assert_old_runs_on(self, src, r)
                    self.assertIn(words, r["error-desc"].lower())
                    self.assertNotIn("downtime", r, "the old guest was paused")
                    gwtest.assert_destination_refused(self, dst, words)

    def test_section_version_out_of_range_refused_before_the_pause(self):
        # A new binary whose uart section is at a version the other side
        # does not accept, made by rewriting the hello between the two.
        with dirtier() as src:
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path) as dst:
                proxy = HelloProxy(os.path.join(src.dir, "proxy.sock"), path,
                                   lambda cfg: gwtest.config_with_section_version(cfg, "uart", 7))
                src.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
                src.qmp.cmd("migrate", uri="unix:" + proxy.path)
                r = wait_migration(src)
                proxy.close()
                assert_old_runs_on(self, src, r)
                self.assertNotIn("downtime", r)
                for w in ("uart", "version 7", "1..1"):
                    self.assertIn(w, r["error-desc"])
                gwtest.assert_destination_refused(self, dst, "uart", "version 7")

    def test_new_process_killed_at_each_step(self):
        # Killed before the fds arrive (stopped before the old one even
        # connects), after it adopted them, after the whole state loaded,
        # and after GO but before it resumed: the old guest runs on, and
        # since the new process is gone, even after GO it is taken back.
        for point in ("before-fds", "adopted", "loaded", "go"):
            with self.subTest(point=point), dirtier() as src:
                src.qmp.cmd("migrate-set-parameters", **{"x-godwit-confirm-timeout": 20000})
                path = os.path.join(src.dir, "cpr.sock")
                extra = [] if point == "before-fds" else ["--x-godwit-stop-at", point]
                with new_process(src, path, extra) as dst:
                    if point == "before-fds":
                        dst.proc.send_signal(signal.SIGSTOP)
                        wait_stopped(dst)
                    start_update(src, path)
                    if point == "before-fds":
                        time.sleep(0.3)
                    else:
                        wait_stopped(dst)
                    dst.proc.kill()
                    dst.proc.wait()
                    r = wait_migration(src, timeout=30)
                    assert_old_runs_on(self, src, r)
                    if point == "go":
                        self.assertIn("exited without running the guest", r["error-desc"])

    def test_new_process_killed_after_it_confirmed(self):
        # Once the new process said RUNNING the old one only exits: it never
        # takes the guest back, whatever happens to the new one.
        with dirtier() as src:
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path) as dst:
                start_update(src, path)
                assert_updated(self, src, dst)
                dst.proc.kill()
                dst.proc.wait()
                time.sleep(0.3)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
                with self.assertRaises(QmpError):
                    src.qmp.cmd("cont")

    def test_each_step_delayed(self):
        # The new process stalls at each step for longer than a scheduling
        # hiccup, shorter than the timeouts: the update completes.
        for point in ("adopted", "loaded", "go"):
            with self.subTest(point=point), dirtier() as src:
                path = os.path.join(src.dir, "cpr.sock")
                with new_process(src, path, ["--x-godwit-stop-at", point]) as dst:
                    start_update(src, path)
                    wait_stopped(dst)
                    # Stopped there, the old guest still runs, or is paused.
                    self.assertIn(src.qmp.cmd("query-status")["status"],
                                  ("running", "finish-migrate"))
                    time.sleep(0.5)
                    dst.proc.send_signal(signal.SIGCONT)
                    assert_updated(self, src, dst)

    def test_cancel_before_the_pause(self):
        with dirtier() as src:
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path, ["--x-godwit-stop-at", "adopted"]) as dst:
                start_update(src, path)
                wait_stopped(dst)
                src.qmp.cmd("migrate-cancel")
                r = wait_migration(src)
                self.assertEqual(r["status"], "cancelled", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                dst.proc.send_signal(signal.SIGCONT)
                d = wait_migration(dst)
                self.assertEqual(d["status"], "failed", d)
                src.wait_passes(2)
                self.assertFalse(src.guest()["check-failed"])

    def test_no_second_copy_of_ram(self):
        # A guest with 1 GiB touched: the host's available memory never
        # drops by more than a few tens of MiB during and after the update,
        # and the two processes' PSS adds up to one copy of the RAM.
        with dirtier(memory="1024M", append="end=1000M") as src:
            src.wait_passes(1, timeout=60)
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path) as dst:
                time.sleep(0.2)
                before = mem_available()
                pss_before = pss(src.proc.pid) + pss(dst.proc.pid)
                lowest = [before]
                done = threading.Event()

                def sample():
                    while not done.is_set():
                        lowest[0] = min(lowest[0], mem_available())
                        time.sleep(0.002)
                t = threading.Thread(target=sample)
                t.start()
                try:
                    start_update(src, path)
                    assert_updated(self, src, dst)
                finally:
                    done.set()
                    t.join()
                after = mem_available()
                pss_after = pss(src.proc.pid) + pss(dst.proc.pid)
                rss_shmem = rss_shmem_kib(dst.proc.pid)
                msg = (f"MemAvailable before {before >> 20} MiB, lowest {lowest[0] >> 20} MiB, "
                       f"after {after >> 20} MiB; PSS {pss_before >> 20} -> {pss_after >> 20} "
                       f"MiB; new process RssShmem {rss_shmem >> 10} MiB")
                print(msg)
                # The processes' own figures are the sharp test: a second
                # copy would add ~1000 MiB to their PSS. MemAvailable is the
                # whole host's, where the last test's processes may still be
                # giving memory back (or a daemon taking some): half a copy.
                self.assertLess(pss_after - pss_before, 64 * MIB, msg)
                self.assertLess(before - lowest[0], 500 * MIB, msg)
                self.assertLess(before - after, 500 * MIB, msg)
                # The new process maps the guest's pages: they are shared.
                self.assertGreater(rss_shmem << 10, 900 * MIB, msg)


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_shmem_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    return 0


# ---- the hello, rewritten in flight -------------------------------------

HELLO_HEAD = 24


class HelloProxy:
    """A unix socket between the old and the new process that rewrites the
    CONFIG of the hello (fds passed on as they came), then relays bytes."""

    def __init__(self, path, target, rewrite):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.target, self.rewrite = target, rewrite
        self.socks = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        a, _ = self.listener.accept()
        b = socket.socket(socket.AF_UNIX)
        b.connect(self.target)
        self.socks += [a, b]
        head, fds, _, _ = socket.recv_fds(a, HELLO_HEAD, 256)
        while len(head) < HELLO_HEAD:
            head += a.recv(HELLO_HEAD - len(head))
        cfg_len, table_len = struct.unpack_from("<II", head, 16)
        body = b""
        while len(body) < cfg_len + table_len + 4:
            body += a.recv(cfg_len + table_len + 4 - len(body))
        cfg = self.rewrite(body[:cfg_len])
        table = body[cfg_len:cfg_len + table_len]
        msg = head + cfg + table
        msg += struct.pack("<I", gwtest.crc32c(msg))
        socket.send_fds(b, [msg], fds)
        for fd in fds:
            os.close(fd)
        threading.Thread(target=self._pipe, args=(b, a), daemon=True).start()
        self._pipe(a, b)

    @staticmethod
    def _pipe(x, y):
        try:
            while True:
                data = x.recv(65536)
                if not data:
                    break
                y.sendall(data)
        except OSError:
            pass
        for s in (x, y):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        for s in self.socks + [self.listener]:
            s.close()


# ---- cpr-exec --------------------------------------------------------------

def exec_command(vm, state, extra=(), binary=None):
    """The running VMM's own command line, for the new binary to run."""
    return [binary or vm.argv[0]] + vm.argv[1:] + list(extra) + ["--incoming", "file:" + state]


def reconnect(vm, timeout=30):
    """After the exec, a new connection to the same QMP socket path."""
    if vm.qmp:
        vm.qmp.close()
    vm.qmp = wait_until(vm._try_connect_any, timeout, "QMP after the exec")
    return vm.qmp


def _try_connect_any(self):
    try:
        return gwtest.Qmp(self.sock)
    except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError, EOFError,
            OSError):
        return None


Vmm._try_connect_any = _try_connect_any


def exec_update(test, vm, state, extra=(), binary=None):
    cmd = exec_command(vm, state, extra, binary)
    vm.qmp.cmd("migrate-set-parameters", mode="cpr-exec", **{"cpr-exec-command": cmd})
    vm.qmp.cmd("migrate", uri="file:" + state)
    wait_until(lambda: vm.proc.poll() is not None or _exec_done(vm), 30, "the exec")
    test.assertIsNone(vm.proc.poll(), vm.stderr_text())
    reconnect(vm)
    return wait_migration(vm)


def _exec_done(vm):
    # The old image answers QMP until it execs; the new one says
    # "completed" for its incoming side.
    try:
        q = gwtest.Qmp(vm.sock)
    except OSError:
        return False
    try:
        r = q.cmd("query-migrate")
        return "x-godwit-adopted-bytes" in r or r.get("status") == "failed"
    except (QmpError, OSError, EOFError):
        return False
    finally:
        q.close()


def stand_ins(vm):
    """The pids of cpr-exec stand-ins still running for this VMM (their
    command line is its own, with the serial log in its directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == vm.proc.pid:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--x-godwit-cpr-return-to" in args and \
                any(vm.dir.encode() in a for a in args):
            found.append(int(d))
    return found


def check_pauses(test, r):
    """Two pauses, to the stand-in and back, and the downtime is both."""
    pauses = r["x-godwit-pauses-us"]
    test.assertEqual(len(pauses), 2, r)
    test.assertTrue(all(p > 0 for p in pauses), r)
    test.assertEqual(sum(pauses), r["x-godwit-downtime-us"], r)


def open_fds(pid, sock):
    """What the process has open: the names of its fds but sockets, and
    the inode of its listening socket bound to sock (/proc/net/unix)."""
    names = [os.readlink(f"/proc/{pid}/fd/{f}") for f in os.listdir(f"/proc/{pid}/fd")]
    listening = set()
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            col = line.split()
            if len(col) >= 8 and col[7] == sock and int(col[3], 16) & 0x10000:
                listening.add(f"socket:[{col[6]}]")
    return (sorted(n for n in names if not n.startswith("socket:")),
            [n for n in names if n in listening])


class CprExec(unittest.TestCase):
    def test_three_execs_in_a_row(self):
        with dirtier() as vm:
            vm.wait_passes(1)
            pid = vm.proc.pid
            fds = open_fds(pid, vm.sock)
            self.assertEqual(len(fds[1]), 1, fds)
            for hop in range(3):
                with self.subTest(hop=hop):
                    state = os.path.join(vm.dir, f"state{hop}.gw")
                    r = exec_update(self, vm, state)
                    # Nothing leaks into the new image (the way back, the
                    # state file), the memfd is the same, and so is the
                    # listening socket.
                    wait_until(lambda: open_fds(pid, vm.sock) == fds, 10,
                               f"the fds of the first image, {fds}, not {open_fds(pid, vm.sock)}")
                    self.assertEqual(r["status"], "completed", r)
                    self.assertEqual(vm.proc.pid, pid)
                    self.assertIsNone(vm.proc.poll())
                    self.assertEqual(r["x-godwit-adopted-bytes"], mem_bytes(vm))
                    self.assertEqual(r["ram"]["transferred"], 0)
                    check_pauses(self, r)
                    # The stand-in gave the guest back and is gone.
                    wait_until(lambda: not stand_ins(vm), 10, "the stand-in to exit")
                    # The QMP socket path is the same file, never recreated.
                    self.assertTrue(stat.S_ISSOCK(os.stat(vm.sock).st_mode))
                    self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
                    vm.wait_passes(2)
                    self.assertFalse(vm.guest()["check-failed"], vm.serial_text())

    def test_stopped_guest_arrives_whole(self):
        # Paused before the update, the guest stays paused after it, with
        # RAM equal to the byte; then it runs on.
        with dirtier() as vm:
            vm.wait_passes(1)
            vm.qmp.cmd("stop")
            before = vm.ram_hash()
            r = exec_update(self, vm, os.path.join(vm.dir, "state.gw"))
            self.assertEqual(r["status"], "completed", r)
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "paused")
            self.assertEqual(vm.ram_hash(), before)
            vm.qmp.cmd("cont")
            vm.wait_passes(2)
            self.assertFalse(vm.guest()["check-failed"], vm.serial_text())

    def test_refused_by_the_new_binary_before_the_pause(self):
        # The new binary, started as the stand-in, is asked first; one that
        # cannot take the guest (here: started with another vCPU count)
        # refuses its hello, the guest never pauses and the old image goes
        # on, same process, same connection; the stand-in is gone.
        with dirtier() as vm:
            state = os.path.join(vm.dir, "state.gw")
            vm.qmp.cmd("migrate-set-parameters", mode="cpr-exec",
                       **{"cpr-exec-command": exec_command(vm, state, ["--vcpus", "1"])})
            vm.qmp.cmd("migrate", uri="file:" + state)
            r = wait_migration(vm)
            self.assertEqual(r["status"], "failed", r)
            for w in ("new binary", "vCPUs"):
                self.assertIn(w, r["error-desc"])
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
            wait_until(lambda: not stand_ins(vm), 10, "the refusing stand-in to be ended")
            vm.wait_passes(2)

    def test_bad_settings_refused(self):
        with dirtier() as vm:
            state = os.path.join(vm.dir, "state.gw")
            vm.qmp.cmd("migrate-set-parameters", mode="cpr-exec")
            for uri, words in (("file:" + state, "cpr-exec-command"),
                               ("unix:" + state, "file:PATH")):
                with self.assertRaises(QmpError) as cm:
                    vm.qmp.cmd("migrate", uri=uri)
                self.assertIn(words, str(cm.exception))
            vm.qmp.cmd("migrate-set-parameters",
                       **{"cpr-exec-command": [vm.argv[0], "--incoming", "file:/elsewhere"]})
            with self.assertRaises(QmpError) as cm:
                vm.qmp.cmd("migrate", uri="file:" + state)
            self.assertIn("--incoming", str(cm.exception))
            with self.assertRaises(QmpError):
                vm.qmp.cmd("migrate-set-parameters", **{"cpr-exec-command": ["relative"]})
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")

    def test_exec_that_fails_gives_the_guest_to_the_old_binary(self):
        # The binary runs as the stand-in and is gone when the exec comes:
        # the exec fails, and this binary is executed again (same pid) and
        # takes the guest back from the stand-in.
        with dirtier() as vm:
            vm.wait_passes(1)
            pid = vm.proc.pid
            script = os.path.join(vm.dir, "vanishing")
            with open(script, "w") as f:
                f.write(f"#!/bin/sh\nrm -f \"$0\"\nexec {vm.argv[0]} \"$@\"\n")
            os.chmod(script, 0o755)
            r = exec_update(self, vm, os.path.join(vm.dir, "state.gw"), binary=script)
            self.assertIn("cannot execute", vm.stderr_text())
            self.assertEqual(r["status"], "completed", r)
            self.assertEqual(vm.proc.pid, pid)
            self.assertEqual(r["x-godwit-adopted-bytes"], mem_bytes(vm))
            check_pauses(self, r)
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
            wait_until(lambda: not stand_ins(vm), 10, "the stand-in to exit")
            vm.wait_passes(2)
            self.assertFalse(vm.guest()["check-failed"], vm.serial_text())

    def test_new_image_that_cannot_load_gives_the_guest_back(self):
        # A binary that takes the guest as the stand-in, but whose image
        # after the exec cannot (another vCPU count): that image executes
        # the old binary, which takes the guest from the stand-in.
        with dirtier() as vm:
            vm.wait_passes(1)
            pid = vm.proc.pid
            script = os.path.join(vm.dir, "liar")
            with open(script, "w") as f:
                f.write(f"#!/bin/sh\nif [ -e \"$0.ran\" ]; then exec {vm.argv[0]} \"$@\" --vcpus 1; fi\n"
                        f"touch \"$0.ran\"\nexec {vm.argv[0]} \"$@\"\n")
            os.chmod(script, 0o755)
            exec_update(self, vm, os.path.join(vm.dir, "state.gw"), binary=script)
            wait_until(lambda: "executing the old one again" in vm.stderr_text(), 30,
                       "the way back")
            r = wait_until(lambda: (lambda q: q if q.get("status") == "completed" else None)(
                reconnect(vm).cmd("query-migrate")), 30, "the old binary to take the guest")
            self.assertEqual(vm.proc.pid, pid)
            self.assertEqual(r["x-godwit-adopted-bytes"], mem_bytes(vm))
            check_pauses(self, r)
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
            wait_until(lambda: not stand_ins(vm), 10, "the stand-in to exit")
            vm.wait_passes(2)
            self.assertFalse(vm.guest()["check-failed"], vm.serial_text())


class Cli(unittest.TestCase):
    def test_update_to(self):
        with dirtier() as src:
            src.wait_passes(1)
            path = os.path.join(src.dir, "cpr.sock")
            with new_process(src, path) as dst:
                out = subprocess.run([gwtest.CLI, "--socket", src.sock, "update", "--to", path],
                                     capture_output=True, text=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertRegex(out.stdout, r"downtime [0-9.]+ ms, state [0-9]+ bytes sent, "
                                 r"RAM copied 0 bytes")
                self.assertEqual(src.wait(), 0, "the old process quits")
                self.assertEqual(wait_migration(dst)["status"], "completed")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"])

    def test_update_exec(self):
        with dirtier() as vm:
            vm.wait_passes(1)
            for _ in range(2):
                out = subprocess.run([gwtest.CLI, "--socket", vm.sock, "update", "--exec",
                                      vm.argv[0]], capture_output=True, text=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertIn(f"pid {vm.proc.pid}, unchanged", out.stdout)
                self.assertRegex(out.stdout, r"downtime [0-9.]+ ms, state [0-9]+ bytes, "
                                 r"RAM copied 0 bytes")
            reconnect(vm)
            vm.wait_passes(2)
            self.assertFalse(vm.guest()["check-failed"])
            self.assertEqual([f for f in os.listdir(vm.dir) if f.endswith(".state")], [])

    def test_update_refused(self):
        with dirtier() as vm:
            script = os.path.join(vm.dir, "refuser")
            with open(script, "w") as f:
                f.write("#!/bin/sh\necho 'this binary takes no guest' >&2\nexit 2\n")
            os.chmod(script, 0o755)
            out = subprocess.run([gwtest.CLI, "--socket", vm.sock, "update", "--exec", script],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 1)
            self.assertIn("refuses", out.stderr)
            self.assertIn("this binary takes no guest", out.stderr)
            self.assertEqual(vm.qmp.cmd("query-migrate-parameters")["mode"], "normal")
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
            out = subprocess.run([gwtest.CLI, "--socket", vm.sock, "update"],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 2, out.stderr)


if __name__ == "__main__":
    gwtest.main()
