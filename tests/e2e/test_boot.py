"""Boot, run, stop/cont and shut down real guests in godwit-vmm."""
import os
import signal
import struct
import time
import unittest

import gwtest
from gwtest import Vmm, wait_until


class Boot(unittest.TestCase):
    def test_elf_dirtier_one_vcpu(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=1) as vm:
            vm.wait_passes(2)
            g = vm.guest()
            self.assertTrue(g["ready"])
            self.assertFalse(g["check-failed"])
            self.assertGreater(g["vcpus"][0]["pages-per-pass"], 0)
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")

    def test_elf_dirtier_four_vcpus(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=4) as vm:
            vm.wait_passes(2)
            g = vm.guest()
            self.assertEqual(len(g["vcpus"]), 4)
            self.assertFalse(g["check-failed"])
            cpus = vm.qmp.cmd("query-cpus-fast")
            self.assertEqual([c["cpu-index"] for c in cpus], [0, 1, 2, 3])
            self.assertEqual(len({c["thread-id"] for c in cpus}), 4)

    def test_dirtier_modes(self):
        for mode in ("hot", "random"):
            with self.subTest(mode=mode), \
                    Vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=2,
                        append=f"mode={mode} passes=5") as vm:
                self.assertEqual(vm.wait(60), 0, vm.serial_text())
                self.assertIn("final check ok", vm.serial_text())

    def test_guest_exit_status_after_passes(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=2, append="passes=3") as vm:
            ev = vm.qmp.wait_event("SHUTDOWN", timeout=60)
            self.assertEqual(ev["data"], {"guest": True, "reason": "guest-shutdown"})
            self.assertEqual(vm.wait(), 0)

    def test_idle_guest(self):
        with Vmm(kernel=gwtest.IDLE, memory="64M", vcpus=2, append="touch=8M") as vm:
            wait_until(lambda: vm.guest()["ready"], 20, "the idle guest to be ready")
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")

    def test_bootsector(self):
        with Vmm(bootsector=gwtest.BOOTDIRTIER, memory="128M") as vm:
            wait_until(lambda: vm.serial_text().count("B") >= 2, 30,
                       "two passes of the boot-sector dirtier")
            vm.qmp.cmd("stop")
            path = os.path.join(vm.dir, "mem.bin")
            vm.qmp.cmd("pmemsave", val=1 << 20, size=8 << 20, filename=path)
            with open(path, "rb") as f:
                mem = f.read()
            firsts = sorted({mem[i] for i in range(0, len(mem), 4096)})
            # A stopped pass leaves the pages before it one ahead of the
            # pages after it (modulo 256), and no other difference.
            self.assertIn(len(firsts), (1, 2), firsts)
            if len(firsts) == 2:
                self.assertIn((firsts[1] - firsts[0]) % 256, (1, 255), firsts)
            self.assertNotEqual(firsts, [0], "the boot sector never wrote")


class StopCont(unittest.TestCase):
    def test_stop_freezes_memory_and_cont_resumes(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="64M", vcpus=2) as vm:
            vm.wait_passes(1)
            vm.qmp.cmd("stop")
            vm.qmp.wait_event("STOP")
            self.assertEqual(vm.qmp.cmd("query-status"),
                             {"running": False, "singlestep": False, "status": "paused"})
            h1, p1 = vm.ram_hash(), vm.passes()
            time.sleep(0.2)
            h2, p2 = vm.ram_hash(), vm.passes()
            self.assertEqual(h1, h2, "guest memory changed while stopped")
            self.assertEqual(p1, p2)
            vm.qmp.cmd("cont")
            vm.qmp.wait_event("RESUME")
            vm.wait_passes(1)
            self.assertNotEqual(vm.ram_hash(), h1)
            self.assertFalse(vm.guest()["check-failed"])

    def test_start_paused(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", paused=True) as vm:
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "paused")
            time.sleep(0.2)
            self.assertFalse(vm.guest()["ready"])
            vm.qmp.cmd("cont")
            vm.wait_passes(1)

    def test_stop_cont_many_times(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=4) as vm:
            vm.wait_passes(1)
            for _ in range(50):
                vm.qmp.cmd("stop")
                vm.qmp.cmd("cont")
            vm.wait_passes(1)
            self.assertFalse(vm.guest()["check-failed"])


class Shutdown(unittest.TestCase):
    def test_quit(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=2) as vm:
            vm.wait_passes(1)
            self.assertEqual(vm.qmp.cmd("quit"), {})
            ev = vm.qmp.wait_event("SHUTDOWN")
            self.assertEqual(ev["data"], {"guest": False, "reason": "host-qmp-quit"})
            self.assertEqual(vm.wait(), 0)
            self.assertFalse(os.path.exists(vm.sock), "QMP socket left behind")

    def test_sigterm(self):
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=2) as vm:
            vm.wait_passes(1)
            vm.proc.send_signal(signal.SIGTERM)
            ev = vm.qmp.wait_event("SHUTDOWN")
            self.assertEqual(ev["data"]["reason"], "host-signal")
            self.assertEqual(vm.wait(), 0)

    def test_self_check_failure_exits_nonzero(self):
        # Corrupt one page the dirtier owns behind its back, the way a
        # broken migration would; the guest must notice and the VMM fail.
        with Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=1, append="end=16M") as vm:
            vm.wait_passes(1)
            vm.qmp.cmd("stop")
            vm.poke(12 << 20, struct.pack("<Q", 0xdeadbeefdeadbeef))
            vm.qmp.cmd("cont")
            wait_until(lambda: vm.guest()["check-failed"], 30, "the guest to detect it")
            vm.qmp.cmd("quit")
            self.assertNotEqual(vm.wait(), 0)
            self.assertIn("self-check FAILED", vm.stderr_text())

    def test_bad_command_lines(self):
        import subprocess
        cases = [
            [],
            ["--kernel", "/nonexistent.elf"],
            ["--kernel", gwtest.DIRTIER, "--memory", "3M"],
            ["--kernel", gwtest.DIRTIER, "--vcpus", "0"],
            ["--kernel", gwtest.DIRTIER, "--bootsector", gwtest.BOOTDIRTIER],
            ["--bootsector", gwtest.DIRTIER],
            ["--kernel", gwtest.BOOTDIRTIER],
            ["--kernel", gwtest.DIRTIER, "--serial", "bogus"],
            ["--kernel", gwtest.DIRTIER, "--qmp", "tcp:1:2"],
        ]
        for argv in cases:
            with self.subTest(argv=argv):
                r = subprocess.run([gwtest.VMM] + argv, capture_output=True, text=True,
                                   timeout=10)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("godwit-vmm", r.stderr)

    def test_numbers_refuse_blanks_on_either_side(self):
        """strtoull() skips leading blanks: ' 64M' must fail like '64M '."""
        import subprocess
        cases = [("--memory", v, "not a size (decimal digits and an optional K, M, G or B "
                  "suffix, no blanks)")
                 for v in (" 64M", "64M ", "\t64M", "64 M", "+64M", "-64M", "", "0x40", "64MB")]
        cases += [("--vcpus", v, "must be a number from 1 to")
                  for v in (" 2", "2 ", "+2", "-1", "")]
        for opt, value, why in cases:
            with self.subTest(option=opt, value=value):
                r = subprocess.run([gwtest.VMM, "--kernel", gwtest.DIRTIER, opt, value],
                                   capture_output=True, text=True, timeout=10)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(f"godwit-vmm: {opt} '{value}': {why}", r.stderr)


if __name__ == "__main__":
    gwtest.main()
