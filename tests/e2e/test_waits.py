"""Every wait can be cancelled and every exit works.

A migration whose output nobody reads (a FIFO without a reader, a command
that lingers after the stream, a destination frozen at the switchover)
must never hold the VMM: QMP answers, `migrate-cancel` ends the wait, the
source guest runs again, and `quit` or SIGTERM end the process in bounded
time. No timing thresholds: the bounds checked are the VMM's own timeouts
plus generous slack.
"""
import os
import signal
import time
import unittest

import gwtest
from gwtest import destination, dirtier, free_port, wait_migration, wait_until

FINAL = ("completed", "failed", "cancelled")


def assert_runs(test, vm):
    test.assertEqual(vm.qmp.cmd("query-status")["status"], "running")
    vm.wait_passes(1)
    test.assertFalse(vm.guest()["check-failed"], vm.serial_text())


class Fifo(unittest.TestCase):
    def test_cancel_while_no_reader(self):
        with dirtier(memory="32M", append="end=8M") as src:
            fifo = os.path.join(src.dir, "fifo")
            os.mkfifo(fifo)
            src.qmp.cmd("migrate", uri="file:" + fifo)
            time.sleep(0.3)
            self.assertEqual(src.qmp.cmd("query-migrate")["status"], "setup")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.qmp.cmd("migrate-cancel")
            r = wait_migration(src, FINAL, 10)
            self.assertEqual(r["status"], "cancelled", r)
            assert_runs(self, src)

    def test_quit_while_no_reader(self):
        with dirtier(memory="32M", append="end=8M") as src:
            fifo = os.path.join(src.dir, "fifo")
            os.mkfifo(fifo)
            src.qmp.cmd("migrate", uri="file:" + fifo)
            time.sleep(0.3)
            src.qmp.cmd("quit")
            src.wait(10)

    def test_reader_that_stops_reading(self):
        # A reader opens the FIFO and never reads: the writer must still
        # wake for a cancel.
        with dirtier(memory="32M", append="end=8M") as src:
            src.qmp.cmd("stop")
            fifo = os.path.join(src.dir, "fifo")
            os.mkfifo(fifo)
            src.qmp.cmd("migrate", uri="file:" + fifo)
            reader = os.open(fifo, os.O_RDONLY)
            try:
                # The pipe fills and the writer waits, in a round or in
                # the final pass: for a cancel.
                busy = ("active", "device")
                seen = []

                def started():
                    seen.append(src.qmp.cmd("query-migrate"))
                    return seen[-1]["status"] in busy

                try:
                    wait_until(started, 10, "the save to start")
                except AssertionError as e:
                    raise AssertionError(f"{e}; last query-migrate: {seen[-1] if seen else None}; "
                                         f"stderr: {src.stderr_text()[-500:]}") from None
                time.sleep(0.3)
                self.assertIn(src.qmp.cmd("query-migrate")["status"], busy)
                src.qmp.cmd("migrate-cancel")
                r = wait_migration(src, FINAL, 10)
                self.assertEqual(r["status"], "cancelled", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "paused")
            finally:
                os.close(reader)


def descendant_runs(pid, argv):
    """Does a process with this argv run below pid (its child, grandchild...)?"""
    want = "\0".join(argv) + "\0"
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline") as f:
                if f.read() != want:
                    continue
            p = int(d)
            while p > 1:
                with open(f"/proc/{p}/stat") as f:
                    p = int(f.read().rsplit(")", 1)[1].split()[1])
                if p == pid:
                    return True
        except (OSError, ValueError):
            continue
    return False


class LingeringCommand(unittest.TestCase):
    CMD = "exec:cat >/dev/null; sleep 600"

    def test_grace_then_sigterm(self):
        with dirtier(memory="32M", append="end=8M") as src:
            src.qmp.cmd("stop")
            src.qmp.cmd("migrate-set-parameters", x_godwit_exec_grace=500)
            src.qmp.cmd("migrate", uri=self.CMD)
            # The main loop stays free while the command lingers.
            wait_until(lambda: src.qmp.cmd("query-migrate")["status"] == "device", 10,
                       "the stream to be written")
            self.assertEqual(src.qmp.cmd("query-status")["status"], "finish-migrate")
            r = wait_migration(src, FINAL, 10)
            self.assertEqual(r["status"], "failed", r)
            self.assertIn("did not exit within 500 ms", r["error-desc"])
            self.assertIn("SIGTERM", r["error-desc"])
            # The whole stream reached the command, which may have started
            # the guest elsewhere: the source keeps it paused, and says so.
            self.assertTrue(r.get("x-godwit-unconfirmed"), r)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")

    def test_cancel_ends_the_wait(self):
        with dirtier(memory="32M", append="end=8M") as src:
            src.qmp.cmd("migrate-set-parameters", max_bandwidth=0)
            src.qmp.cmd("migrate", uri=self.CMD)
            # The whole stream has left once the command's cat has seen its
            # end and its sleep runs ("device" alone may come before).
            wait_until(lambda: descendant_runs(src.proc.pid, ["sleep", "600"]), 20,
                       "the stream to be written")
            src.qmp.cmd("migrate-cancel")
            # The cancel ends the wait at once (the grace is 10 s), but the
            # whole stream had left: the guest stays paused for the operator.
            r = wait_migration(src, FINAL, 5)
            self.assertEqual(r["status"], "failed", r)
            self.assertTrue(r.get("x-godwit-unconfirmed"), r)
            self.assertIn("exec 'cat >/dev/null; sleep 600'", r["error-desc"])
            self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
            src.qmp.cmd("cont")
            assert_runs(self, src)

    def test_sigterm_while_it_lingers(self):
        with dirtier(memory="32M", append="end=8M") as src:
            src.qmp.cmd("stop")
            src.qmp.cmd("migrate", uri=self.CMD)
            wait_until(lambda: src.qmp.cmd("query-migrate")["status"] == "device", 10,
                       "the stream to be written")
            src.proc.send_signal(signal.SIGTERM)
            # Two exec graces (SIGTERM, then SIGKILL) at the very most.
            src.wait(25)


class FrozenDestination(unittest.TestCase):
    def test_frozen_at_switchover(self):
        # The destination is stopped the moment the source pauses its
        # guest, with tens of MiB of the final pass still to go: the
        # source gives up after x-godwit-switchover-timeout and runs on.
        with dirtier(memory="64M", append="end=48M") as src:
            src.wait_passes(1)
            port = free_port()
            with destination(src, f"tcp:127.0.0.1:{port}") as dst:
                src.qmp.cmd("migrate-set-parameters", max_bandwidth=32 << 20,
                            downtime_limit=2000000, x_godwit_switchover_timeout=1000)
                src.qmp.events.clear()
                src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
                src.qmp.wait_event("STOP", timeout=30)
                dst.proc.send_signal(signal.SIGSTOP)
                try:
                    r = wait_migration(src, FINAL, 20)
                finally:
                    dst.proc.send_signal(signal.SIGCONT)
                self.assertEqual(r["status"], "failed", r)
                self.assertIn("x-godwit-switchover-timeout", r["error-desc"])
                assert_runs(self, src)
                d = wait_migration(dst, FINAL, 20)
                self.assertEqual(d["status"], "failed", d)
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "inmigrate")


if __name__ == "__main__":
    gwtest.main()
