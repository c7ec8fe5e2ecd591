"""Post-copy migration between two godwit-vmm processes (docs/format.md,
"Post-copy"): the dirtier guest, switched to post-copy by
migrate-start-postcopy while pre-copy cannot converge, runs on at the
destination while its stale pages are fetched, and passes its own memory
check there; a source killed during post-copy leaves the destination
postcopy-paused, its vCPUs stopped, never running with pages missing; a
destination killed then leaves the source's copy paused, never resumed.
"""
import os
import signal
import time
import unittest

import gwtest
from gwtest import destination, dirtier, free_port, wait_migration, wait_until

# A 16 MiB/s link cannot carry what the dirtier writes: pre-copy never
# converges by itself, and the switch is the command's.
SLOW_LINK = 16 << 20


def postcopy_pair(test, fetch_rate=0):
    src = dirtier()
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst = destination(src, uri)
    test.addCleanup(src.kill)
    test.addCleanup(dst.kill)
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
    src.qmp.cmd("migrate-start-postcopy")
    return src, dst


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
        self.assertIn("recovery is not built", d["error-desc"])
        self.assertNotEqual(dst.qmp.cmd("query-status")["status"], "running")
        passes = dst.passes()
        time.sleep(0.3)
        self.assertEqual(dst.passes(), passes, "a guest with pages missing ran")
        with self.assertRaises(gwtest.QmpError):
            dst.qmp.cmd("cont")

    def test_destination_killed_during_postcopy(self):
        # The source cannot know what the destination's guest did since GO:
        # its copy stays paused, and it says so.
        src, dst = postcopy_pair(self, fetch_rate=64 << 10)
        wait_migration(src, statuses=("postcopy-active", "completed", "failed"), timeout=120)
        os.kill(dst.proc.pid, signal.SIGKILL)
        r = wait_migration(src, timeout=120)
        self.assertEqual(r["status"], "failed", r)
        self.assertTrue(r.get("x-godwit-unconfirmed"), r)
        self.assertIn("recovery is not built", r["error-desc"])
        self.assertNotEqual(src.qmp.cmd("query-status")["status"], "running")
        passes = src.passes()
        time.sleep(0.3)
        self.assertEqual(src.passes(), passes, "the source's stale copy ran")


if __name__ == "__main__":
    gwtest.main()
