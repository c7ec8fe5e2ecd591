"""Live migration between real godwit-vmm processes, over every transport.

After every migration the destination's RAM as loaded is compared with the
source's RAM at the switchover (the source stays paused there), and the
guest itself keeps verifying every page it owns on the destination.
"""
import os
import socket
import time
import unittest

import gwtest
from gwtest import Vmm, destination, dirtier, free_port, migrate_and_check, wait_migration, \
    wait_until


class Transports(unittest.TestCase):
    def test_tcp(self):
        port = free_port()
        with dirtier() as src:
            src.wait_passes(1)
            with destination(src, f"tcp:127.0.0.1:{port}") as dst:
                r = migrate_and_check(self, src, dst, f"tcp:127.0.0.1:{port}")
                self.assertGreater(r["ram"]["transferred"], 0)
                self.assertGreaterEqual(r["ram"]["dirty-sync-count"], 1)
                self.assertIn("downtime", r)

    def test_unix(self):
        with dirtier() as src:
            path = os.path.join(src.dir, "mig.sock")
            with destination(src, "unix:" + path) as dst:
                src.wait_passes(1)
                migrate_and_check(self, src, dst, "unix:" + path)

    def test_exec(self):
        # Both ends through a shell command, streaming through a FIFO.
        with dirtier() as src:
            fifo = os.path.join(src.dir, "fifo")
            os.mkfifo(fifo)
            with destination(src, f"exec:cat {fifo}") as dst:
                src.wait_passes(1)
                migrate_and_check(self, src, dst, f"exec:cat > {fifo}")

    def test_fd(self):
        # Each process inherits one end of a socket pair under the same
        # fd number it has here.
        a, b = socket.socketpair()
        src_fd, dst_fd = a.fileno(), b.fileno()
        with dirtier(pass_fds=[src_fd]) as src:
            with destination(src, f"fd:{dst_fd}", pass_fds=[dst_fd]) as dst:
                a.close()
                b.close()
                src.wait_passes(1)
                migrate_and_check(self, src, dst, f"fd:{src_fd}")

    def test_file_save_and_restore(self):
        with dirtier() as src:
            src.wait_passes(1)
            src.qmp.cmd("stop")
            path = os.path.join(src.dir, "guest.gw")
            src.qmp.cmd("migrate", uri="file:" + path)
            r = wait_migration(src)
            self.assertEqual(r["status"], "completed", r)
            with destination(src, "file:" + path) as dst:
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                # The guest was stopped when it was saved: it arrives
                # stopped, as with QEMU, and runs on `cont`.
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                passes = dst.passes()
                time.sleep(0.3)
                self.assertEqual(dst.passes(), passes)
                dst.qmp.cmd("cont")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"])

    def test_incoming_defer(self):
        port = free_port()
        with dirtier() as src:
            with destination(src, "defer") as dst:
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "inmigrate")
                dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
                src.wait_passes(1)
                migrate_and_check(self, src, dst, f"tcp:127.0.0.1:{port}")


class Hops(unittest.TestCase):
    def test_three_hops(self):
        """A -> B -> A' -> B': the guest keeps its memory across every hop."""
        src = dirtier(vcpus=2)
        try:
            src.wait_passes(1)
            for hop in range(3):
                port = free_port()
                dst = destination(src, f"tcp:127.0.0.1:{port}")
                try:
                    migrate_and_check(self, src, dst, f"tcp:127.0.0.1:{port}")
                    passes = dst.passes()
                except BaseException:
                    dst.__exit__(None, None, None)
                    raise
                src.__exit__(None, None, None)
                src = dst
            self.assertTrue(all(p > 0 for p in passes))
        finally:
            src.__exit__(None, None, None)


class Convergence(unittest.TestCase):
    def test_too_slow_link_never_switches_over_until_bandwidth_raised(self):
        port = free_port()
        with dirtier(append="end=32M") as src, \
                destination(src, f"tcp:127.0.0.1:{port}") as dst:
            src.wait_passes(1)
            src.qmp.cmd("migrate-set-parameters", max_bandwidth=4 << 20)
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            wait_until(lambda: src.qmp.cmd("query-migrate").get("ram", {}).get(
                "dirty-sync-count", 0) >= 3, 60, "three rounds")
            r = src.qmp.cmd("query-migrate")
            self.assertEqual(r["status"], "active", r)
            self.assertGreater(r["expected-downtime"], 300, r)
            self.assertIn("x-godwit-blocked", r)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(1)  # the guest keeps running meanwhile
            src.qmp.cmd("migrate-set-parameters", max_bandwidth=0)
            r = wait_migration(src)
            self.assertEqual(r["status"], "completed", r)
            d = wait_migration(dst)
            self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
            dst.wait_passes(1)
            self.assertFalse(dst.guest()["check-failed"])

    def test_auto_converge_completes(self):
        port = free_port()
        with dirtier(append="end=32M") as src, \
                destination(src, f"tcp:127.0.0.1:{port}") as dst:
            src.wait_passes(1)
            src.qmp.cmd("migrate-set-capabilities",
                        capabilities=[{"capability": "auto-converge", "state": True}])
            src.qmp.cmd("migrate-set-parameters", max_bandwidth=16 << 20,
                        cpu_throttle_initial=50, cpu_throttle_increment=20)
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            # The guest rewrites its whole range faster than the link
            # carries it: only the throttle can make it converge.
            wait_until(lambda: src.qmp.cmd("query-migrate").get(
                "cpu-throttle-percentage", 0) > 0 or
                src.qmp.cmd("query-migrate")["status"] == "completed", 120, "a throttle")
            r = src.qmp.cmd("query-migrate")
            self.assertNotEqual(r["status"], "completed", "converged without throttling")
            r = wait_migration(src, timeout=180)
            self.assertEqual(r["status"], "completed", r)
            d = wait_migration(dst)
            self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
            dst.wait_passes(1)
            self.assertFalse(dst.guest()["check-failed"])

    def test_cancel_in_every_phase(self):
        port = free_port()
        with dirtier() as src:
            src.wait_passes(1)
            for delay in (0.0, 0.05, 0.3, 1.0):
                with self.subTest(delay=delay), \
                        destination(src, f"tcp:127.0.0.1:{port}") as dst:
                    src.qmp.cmd("migrate-set-parameters", max_bandwidth=8 << 20)
                    src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
                    time.sleep(delay)
                    src.qmp.cmd("migrate-cancel")
                    r = wait_migration(src)
                    self.assertEqual(r["status"], "cancelled", r)
                    self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                    src.wait_passes(1)
                    self.assertFalse(src.guest()["check-failed"])
                    self.assertNotEqual(dst.qmp.cmd("query-status")["status"], "running")
                port = free_port()


if __name__ == "__main__":
    gwtest.main()
