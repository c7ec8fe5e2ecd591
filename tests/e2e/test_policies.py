"""Migration policies as managers run them (docs/qmp.md, "Managers"):
KubeVirt's and Nova's progress timeout on ram.remaining, downtime stepped
up while the migration runs, auto-converge, a bandwidth changed on the
way, a `stop` that lets a migration converge, and post-copy as the last
step. Each step is checked
for the effect the manager counts on, at the engine's next pass, by
states and orderings only (the machine is shared: no durations)."""
import re

import gwtest
from gwtest import (QmpError, Vmm, destination, dirtier, free_port, wait_migration,
                    wait_until)

# "expected downtime 812 ms > limit 300 ms: guest dirties 120.0 MB/s, link 40.0 MB/s"
BLOCKED = re.compile(r"expected downtime (\d+) ms > limit (\d+) ms: guest dirties "
                     r"[0-9.]+ MB/s, link ([0-9.]+) MB/s")
MIB = 1 << 20


def small_dirtier():
    """A guest that rewrites 6 MiB over and over: at a few MiB/s the link
    never catches up with it, so only the manager ends the migration."""
    return dirtier(memory="32M", append="end=8M")


def sync_count(r):
    return r.get("ram", {}).get("dirty-sync-count", 0)


class Manager:
    """Polls query-migrate as libvirt's job monitor does and keeps every
    reply, so the test can check what was seen in what order."""

    def __init__(self, vm):
        self.vm, self.seen = vm, []

    def poll(self):
        r = self.vm.qmp.cmd("query-migrate")
        self.seen.append(r)
        return r

    def after_passes(self, n):
        """The first reply at least n passes after now (or a final one):
        a setting made now is in effect from the second pass on, as the
        pass under way may have read the old one."""
        start = sync_count(self.poll())
        return wait_until(lambda: (lambda r: r if sync_count(r) >= start + n or
                                   r["status"] in ("completed", "failed", "cancelled")
                                   else None)(self.poll()), 120, f"{n} more passes")

    def stalled(self, passes):
        """KubeVirt's and Nova's progress timeout, counted in passes:
        ram.remaining has made no new low for `passes` syncs."""
        low, low_pass = None, 0
        while True:
            r = self.poll()
            if r["status"] == "setup":
                continue
            self.assert_active(r)
            rem, p = r["ram"]["remaining"], sync_count(r)
            if low is None or rem < low:
                low, low_pass = rem, p
            elif p >= low_pass + passes:
                return r

    @staticmethod
    def assert_active(r):
        if r["status"] != "active":
            raise AssertionError(f"the migration left 'active' without the manager: {r}")


def set_downtime(test, vm, ms):
    vm.qmp.cmd("migrate-set-parameters", {"downtime-limit": ms})
    test.assertEqual(vm.qmp.cmd("query-migrate-parameters")["downtime-limit"], ms)


def assert_passes_consecutive(test, vm, final):
    """One MIGRATION_PASS per sync, numbered 1, 2, 3, ...: the last is
    the final reply's dirty-sync-count."""
    vm.qmp.wait_event("MIGRATION", lambda e: e["data"]["status"] == final["status"])
    passes = [e["data"]["pass"] for e in vm.qmp.events if e["event"] == "MIGRATION_PASS"]
    test.assertEqual(passes, list(range(1, len(passes) + 1)), passes)
    test.assertEqual(passes[-1], final["ram"]["dirty-sync-count"], final)


class Policies(gwtest.unittest.TestCase):
    def test_downtime_range_is_qemus(self):
        """QEMU takes 0 to 2000 s (KubeVirt may ask for the top); one
        more is refused with QEMU's message and changes nothing."""
        with Vmm(kernel=gwtest.IDLE, memory="32M") as vm:
            for ms in (0, 2000000):
                set_downtime(self, vm, ms)
            for bad in (2000001, -1):
                with self.assertRaises(QmpError) as e:
                    vm.qmp.cmd("migrate-set-parameters", {"downtime-limit": bad,
                                                          "max-bandwidth": 1})
                self.assertIn("Parameter 'downtime_limit' expects an integer in the range "
                              "of 0 to 2000000 milliseconds", str(e.exception))
            p = vm.qmp.cmd("query-migrate-parameters")
            self.assertEqual((p["downtime-limit"], p["max-bandwidth"]), (2000000, 128 * MIB))

    def test_downtime_steps_and_auto_converge(self):
        """Nova's live_migration_downtime_steps and KubeVirt's
        allowAutoConverge: each time ram.remaining stops making progress
        the manager raises downtime-limit one step; every step shows in
        query-migrate-parameters and, from the next pass, in what the
        engine says blocks it; the throttle climbs while the guest
        outruns the link; a step the rest fits makes it switch over."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True},
                    {"capability": "auto-converge", "state": True}])
                src.qmp.cmd("migrate-set-parameters", {
                    "max-bandwidth": 8 * MIB, "downtime-limit": 1,
                    "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
                    "max-cpu-throttle": 50})
                src.qmp.cmd("migrate", uri=uri)
                mgr = Manager(src)
                for step in (10, 50):
                    mgr.stalled(2)
                    set_downtime(self, src, step)
                    r = mgr.after_passes(2)
                    mgr.assert_active(r)
                    m = BLOCKED.match(r.get("x-godwit-blocked", ""))
                    self.assertTrue(m, r)
                    self.assertEqual(int(m[2]), step, r)
                    self.assertGreater(r["expected-downtime"], step, r)
                # The guest outruns the link in every period: the throttle
                # climbs by its steps to its ceiling, never down.
                wait_until(lambda: mgr.poll().get("cpu-throttle-percentage") == 50, 120,
                           "the throttle at max-cpu-throttle")
                throttles = [r["cpu-throttle-percentage"] for r in mgr.seen
                             if r["status"] == "active"]
                self.assertEqual(throttles, sorted(throttles), throttles)
                self.assertLessEqual(set(throttles), {0, 20, 30, 40, 50}, throttles)
                r = mgr.poll()
                mgr.assert_active(r)
                self.assertIn("(vCPUs throttled)", r["x-godwit-blocked"], r)
                # No switchover so far: every reply was active (or setup).
                self.assertLessEqual({r["status"] for r in mgr.seen}, {"setup", "active"})
                # Nova's last step: a limit the rest fits.
                mgr.stalled(2)
                set_downtime(self, src, 2000000)
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
                assert_passes_consecutive(self, src, r)

    def test_postcopy_as_the_last_step(self):
        """KubeVirt's allowPostCopy and Nova's
        live_migration_permit_post_copy: once raising the downtime and
        throttling did not make it converge, the manager switches to
        post-copy, which ends the migration whatever the guest dirties:
        the guest runs at the destination at once, its pages follow."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                pc = {"capability": "postcopy-ram", "state": True}
                dst.qmp.cmd("migrate-set-capabilities", capabilities=[pc])
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True},
                    {"capability": "auto-converge", "state": True}, pc])
                src.qmp.cmd("migrate-set-parameters", {
                    "max-bandwidth": 2 * MIB, "downtime-limit": 1,
                    "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
                    "max-cpu-throttle": 30})
                src.qmp.cmd("migrate", uri=uri)
                mgr = Manager(src)
                mgr.stalled(2)
                set_downtime(self, src, 5)
                mgr.assert_active(mgr.after_passes(2))
                wait_until(lambda: mgr.poll().get("cpu-throttle-percentage") == 30, 120,
                           "the throttle at max-cpu-throttle")
                mgr.stalled(2)
                src.qmp.cmd("migrate-start-postcopy")
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                d = wait_migration(dst, timeout=120)
                self.assertEqual(d["status"], "completed", d)
                statuses = [e["data"]["status"] for e in src.qmp.events
                            if e["event"] == "MIGRATION"]
                self.assertEqual(statuses[-2:], ["postcopy-active", "completed"], statuses)
                self.assertGreater(r["ram"]["postcopy-requests"], 0, r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
                assert_passes_consecutive(self, src, r)

    def test_bandwidth_lowered_then_raised(self):
        """A lower max-bandwidth caps the link the engine counts on from
        the next pass; lifting it lets the migration converge."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True}])
                src.qmp.cmd("migrate-set-parameters", {"max-bandwidth": 8 * MIB})
                src.qmp.cmd("migrate", uri=uri)
                mgr = Manager(src)
                mgr.stalled(1)
                src.qmp.cmd("migrate-set-parameters", {"max-bandwidth": 2 * MIB})
                self.assertEqual(src.qmp.cmd("query-migrate-parameters")["max-bandwidth"],
                                 2 * MIB)
                r = mgr.after_passes(2)
                mgr.assert_active(r)
                m = BLOCKED.match(r.get("x-godwit-blocked", ""))
                self.assertTrue(m, r)
                self.assertLessEqual(float(m[3]), 2 * MIB / 1e6 + 0.05, r)
                src.qmp.cmd("migrate-set-parameters", {"max-bandwidth": 0})
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                assert_passes_consecutive(self, src, r)

    def test_stop_lets_it_converge_destination_stays_paused(self):
        """A guest stopped during a migration dirties nothing: the next
        pass finds the rest fits even a 1 ms limit and the source switches
        over. The user's pause travels (QEMU's rule): the destination's
        guest is paused until `cont`."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True}])
                src.qmp.cmd("migrate-set-parameters", {"max-bandwidth": 8 * MIB,
                                                       "downtime-limit": 1})
                src.qmp.cmd("migrate", uri=uri)
                mgr = Manager(src)
                mgr.stalled(2)
                src.qmp.cmd("stop")
                self.assertEqual(src.qmp.cmd("query-status")["status"], "paused")
                r = wait_migration(src, timeout=120)
                self.assertEqual(r["status"], "completed", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                self.assertIsNone(dst.qmp.find_event("RESUME"))
                dst.qmp.cmd("cont")
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
                # The source's STOP was the user's; the switchover paused
                # nothing more.
                stops = [e for e in src.qmp.events if e["event"] == "STOP"]
                self.assertEqual(len(stops), 1, src.qmp.events)
                assert_passes_consecutive(self, src, r)

    def stop_in_pre_switchover(self, then_continue):
        """A stop while the source holds the guest paused for the
        switchover does nothing, as in QEMU: the guest ran when the
        migration paused it, so it runs at the destination, or here again
        if the migration is cancelled."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True},
                    {"capability": "pause-before-switchover", "state": True}])
                src.qmp.cmd("migrate", uri=uri)
                src.qmp.wait_event("MIGRATION", lambda e: e["data"]["status"] ==
                                   "pre-switchover", 60)
                self.assertTrue(src.qmp.wait_event("STOP"))
                self.assertEqual(src.qmp.cmd("stop"), {})
                self.assertIsNone(src.qmp.find_event("STOP"))
                self.assertEqual(src.qmp.cmd("query-status")["status"], "finish-migrate")
                if then_continue:
                    src.qmp.cmd("migrate-continue", state="pre-switchover")
                    self.assertEqual(wait_migration(src)["status"], "completed")
                    d = wait_migration(dst)
                    self.assertEqual(d["status"], "completed", d)
                    self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                    self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
                    dst.wait_passes(2)
                    self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
                else:
                    src.qmp.cmd("migrate-cancel")
                    self.assertEqual(wait_migration(src)["status"], "cancelled")
                    self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                    src.wait_passes(1)
                    self.assertFalse(src.guest()["check-failed"])

    def test_stop_in_pre_switchover_then_continue(self):
        self.stop_in_pre_switchover(then_continue=True)

    def test_stop_in_pre_switchover_then_cancel(self):
        self.stop_in_pre_switchover(then_continue=False)


if __name__ == "__main__":
    gwtest.main()
