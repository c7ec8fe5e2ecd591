"""Post-copy migration between two godwit-vmm processes (docs/format.md,
"Post-copy" and "Post-copy recovery"): the dirtier guest, switched to
post-copy by migrate-start-postcopy (or by itself after
x-godwit-postcopy-after-passes) while pre-copy cannot converge, runs on
at the destination while its stale pages are fetched, and passes its own
memory check there; a connection cut during post-copy pauses both sides
(postcopy-paused) until migrate-recover and migrate resume=true finish
it, RAM hashes equal; a source killed during post-copy leaves the
destination postcopy-paused with its guest waiting on the missing pages,
never running past them; a destination killed leaves the source's copy
paused, never resumed.
"""
import os
import signal
import socket
import threading
import time
import unittest

import gwtest
from gwtest import destination, dirtier, free_port, wait_migration, wait_until

# A 16 MiB/s link cannot carry what the dirtier writes: pre-copy never
# converges by itself, and the switch is the command's.
SLOW_LINK = 16 << 20


class Link:
    """A TCP connection between the two VMMs that the test can cut: the
    source connects here and every byte is relayed to the destination."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", self.port))
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        a, _ = self.lsock.accept()
        b = socket.create_connection(("127.0.0.1", self.target))
        self.socks = [a, b]
        for x, y in ((a, b), (b, a)):
            threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(x, y):
        try:
            while (data := x.recv(1 << 16)):
                y.sendall(data)
            y.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self):
        """Both ends see the connection fail, as when a network breaks."""
        for sk in self.socks:
            try:
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sk in self.socks + [self.lsock]:
            sk.close()


def postcopy_pair(test, fetch_rate=0, link=False, stop_first=False):
    src = dirtier()
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = destination(src, uri)
    test.addCleanup(src.kill)
    test.addCleanup(dst.kill)
    if link:
        test.link = Link(port)
        test.addCleanup(test.link.cut)
        uri = f"tcp:127.0.0.1:{test.link.port}"
    # The destination's background fetch, bytes/s (0: unlimited).
    dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": fetch_rate})
    for vm in (src, dst):
        vm.qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "postcopy-ram", "state": True},
            {"capability": "events", "state": True}])
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW_LINK})
    src.wait_passes(1)
    src.qmp.cmd("migrate", uri=uri)
    # At least one round went, so the destination holds valid pages too.
    wait_until(lambda: src.qmp.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0) >= 2,
               60, "a second pre-copy round")
    if stop_first:
        # The user's pause travels: both copies then stay still, and
        # their RAM can be compared once every page is in.
        src.qmp.cmd("stop")
    src.qmp.cmd("migrate-start-postcopy")
    return src, dst


def resume(src, uri):
    """migrate resume=true, as a manager retries it while an earlier try
    (to a wrong address, say) still connects."""
    def attempt():
        try:
            src.qmp.cmd("migrate", uri=uri, resume=True)
            return True
        except gwtest.QmpError as e:
            if "still connecting" not in str(e):
                raise
            return None
    wait_until(attempt, 60, "an earlier resume to end")


def recover(test, src, dst):
    """QEMU's recovery: the destination listens, the source resumes."""
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst.qmp.cmd("migrate-recover", uri=uri)
    resume(src, uri)


def events_of(vm):
    return [e["data"]["status"] for e in vm.qmp.events if e["event"] == "MIGRATION"]


class Postcopy(unittest.TestCase):
    def test_dirtier_switched_by_command(self):
        # A 1 MiB/s background: the guest's own passes over its memory
        # fault the stale pages in, so the fault path carries most of them.
        src, dst = postcopy_pair(self, fetch_rate=1 << 20)
        r = wait_migration(src, timeout=120)
        self.assertEqual(r["status"], "completed", r)
        d = wait_migration(dst, timeout=120)
        self.assertEqual(d["status"], "completed", d)
        self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
        # The switch left pages behind at the source, and they were asked for.
        self.assertGreater(r["ram"]["postcopy-requests"], 0, r)
        self.assertEqual(d["ram"]["postcopy-requests"], r["ram"]["postcopy-requests"], d)
        pc = d["x-godwit-postcopy"]
        self.assertEqual(pc["remaining-pages"], 0, d)
        self.assertEqual(pc["pages-faulted"] + pc["background-pages"],
                         d["ram"]["postcopy-requests"], d)
        self.assertGreater(pc["pages-faulted"], 0, d)
        self.assertGreater(pc["fault-latency-max-us"], 0, d)
        # By vCPU, as QEMU's postcopy-vcpu-blocktime: the dirtier's two
        # vCPUs both waited for pages.
        self.assertEqual([v["cpu-index"] for v in pc["vcpus"]], [0, 1], d)
        self.assertTrue(all(v["faults"] > 0 and v["blocked-us"] > 0 for v in pc["vcpus"]), d)
        self.assertEqual(d["postcopy-vcpu-blocktime"],
                         [v["blocked-us"] // 1000 for v in pc["vcpus"]], d)
        self.assertIn("postcopy-active", events_of(src))
        self.assertIn("postcopy-active", events_of(dst))
        dst.wait_passes(2)
        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")

    def test_source_killed_during_postcopy(self):
        # 64 KiB/s: the dirtied pages take minutes to come in the background.
        src, dst = postcopy_pair(self, fetch_rate=64 << 10)
        wait_migration(dst, statuses=("postcopy-active", "completed", "failed"), timeout=120)
        os.kill(src.proc.pid, signal.SIGKILL)
        d = wait_migration(dst, statuses=("postcopy-paused", "completed", "failed"),
                           timeout=60)
        self.assertEqual(d["status"], "postcopy-paused", d)
        self.assertGreater(d["x-godwit-postcopy"]["remaining-pages"], 0, d)
        self.assertIn("if the source is gone, the guest is lost", d["error-desc"])
        # Its vCPUs wait on the missing pages: no pass of the guest ends.
        passes = dst.passes()
        time.sleep(0.3)
        self.assertEqual(dst.passes(), passes, "a guest with pages missing ran")
        with self.assertRaises(gwtest.QmpError) as e:
            dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:1", resume=True)
        self.assertIn("migrate-recover", str(e.exception))

    def test_destination_killed_during_postcopy(self):
        # The source cannot know what the destination's guest did since GO:
        # its copy stays paused, and it says so.
        src, dst = postcopy_pair(self, fetch_rate=64 << 10)
        wait_migration(src, statuses=("postcopy-active", "completed", "failed"), timeout=120)
        os.kill(dst.proc.pid, signal.SIGKILL)
        r = wait_migration(src, statuses=("postcopy-paused", "completed", "failed"),
                           timeout=120)
        self.assertEqual(r["status"], "postcopy-paused", r)
        self.assertTrue(r.get("error-desc"), r)
        self.assertNotEqual(src.qmp.cmd("query-status")["status"], "running")
        # A resume needs a destination: the attempt fails, the copy stays.
        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{free_port()}", resume=True)
        time.sleep(0.2)
        self.assertEqual(src.qmp.cmd("query-migrate")["status"], "postcopy-paused")
        passes = src.passes()
        time.sleep(0.3)
        self.assertEqual(src.passes(), passes, "the source's stale copy ran")

    def test_cut_then_recovered(self):
        # 1 MiB/s in the background: the cut comes with pages still owed.
        src, dst = postcopy_pair(self, fetch_rate=1 << 20, link=True)
        wait_migration(dst, statuses=("postcopy-active",), timeout=120)
        self.link.cut()
        for vm in (src, dst):
            r = wait_migration(vm, statuses=("postcopy-paused", "completed", "failed"),
                               timeout=60)
            self.assertEqual(r["status"], "postcopy-paused", r)
            self.assertTrue(r.get("error-desc"), r)
        self.assertNotEqual(src.qmp.cmd("query-status")["status"], "running")
        # Either side alone refuses what only fits the other.
        with self.assertRaises(gwtest.QmpError) as e:
            src.qmp.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{free_port()}")
        self.assertIn("Migrate recover can only be run when postcopy is paused", str(e.exception))
        recover(self, src, dst)
        r = wait_migration(src, timeout=120)
        self.assertEqual(r["status"], "completed", r)
        d = wait_migration(dst, timeout=120)
        self.assertEqual(d["status"], "completed", d)
        for vm in (src, dst):
            self.assertIn("postcopy-recover", events_of(vm))
            self.assertIn("postcopy-paused", events_of(vm))
        self.assertEqual(d["x-godwit-postcopy"]["remaining-pages"], 0, d)
        dst.wait_passes(2)
        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
        # A resume with nothing paused is refused.
        with self.assertRaises(gwtest.QmpError):
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{free_port()}", resume=True)

    def test_recovered_ram_equal(self):
        # The guest stopped before the switch: once the last page is in,
        # the destination's RAM must be the source's, byte for byte.
        src, dst = postcopy_pair(self, fetch_rate=1 << 20, link=True, stop_first=True)
        wait_migration(dst, statuses=("postcopy-active",), timeout=120)
        self.link.cut()
        wait_migration(dst, statuses=("postcopy-paused",), timeout=60)
        wait_migration(src, statuses=("postcopy-paused",), timeout=60)
        # The first try goes nowhere (nobody listens): still paused.
        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{free_port()}", resume=True)
        dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        recover(self, src, dst)
        self.assertEqual(wait_migration(src, timeout=120)["status"], "completed")
        d = wait_migration(dst, timeout=120)
        self.assertEqual(d["status"], "completed", d)
        self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
        self.assertEqual(dst.ram_hash(), src.ram_hash())
        dst.qmp.cmd("cont")
        dst.wait_passes(2)
        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_switched_by_itself(self):
        # No migrate-start-postcopy: two passes that do not fit are enough.
        src = dirtier()
        uri = f"tcp:127.0.0.1:{free_port()}"
        dst = destination(src, uri)
        self.addCleanup(src.kill)
        self.addCleanup(dst.kill)
        for vm in (src, dst):
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True},
                {"capability": "events", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW_LINK,
                                                  "x-godwit-postcopy-after-passes": 2})
        self.assertEqual(src.qmp.cmd("query-migrate-parameters")
                         ["x-godwit-postcopy-after-passes"], 2)
        src.wait_passes(1)
        src.qmp.cmd("migrate", uri=uri)
        r = wait_migration(src, timeout=120)
        self.assertEqual(r["status"], "completed", r)
        self.assertEqual(wait_migration(dst, timeout=120)["status"], "completed")
        self.assertIn("postcopy-active", events_of(src))
        # Two passes, then the switch's syncs: the early set, the stale set.
        self.assertEqual(r["ram"]["dirty-sync-count"], 4, r)
        dst.wait_passes(2)
        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())


if __name__ == "__main__":
    gwtest.main()
