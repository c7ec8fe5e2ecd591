"""Starting QEMU and godwit-vmm on the same boot-sector guest.

Both VMMs get the same guest image, the same RAM size, a serial file and a
QMP unix socket; a destination is started with `-incoming defer` so that
capabilities (events, multifd) are set before it listens, as QEMU's
documentation asks for multifd. Everything else about a migration is done
over QMP, identically for both, in migration.py.
"""
import os
import struct
import subprocess
import time

from qmp import Qmp, VmmError

# guests/abi.h
BOOTSECTOR_END_OFFSET = 0x1B0
BOOTSECTOR_START = 0x100000
PASS_CHAR = b"B"

CLK_TCK = os.sysconf("SC_CLK_TCK")
VMM_LABEL = {"qemu": "QEMU", "godwit": "godwit-vmm"}

# Every VMM process the harness started, so a self-test can check that none
# outlived its scenario (run.py --selftest).
STARTED = []


def write_bootsector(src, dst, end):
    """Copy the boot sector with END (exclusive, bytes) patched in."""
    with open(src, "rb") as f:
        img = bytearray(f.read())
    if len(img) != 512 or img[510:512] != b"\x55\xaa":
        raise RuntimeError(f"{src} is not a 512-byte boot sector")
    img[BOOTSECTOR_END_OFFSET:BOOTSECTOR_END_OFFSET + 4] = struct.pack("<I", end)
    with open(dst, "wb") as f:
        f.write(img)


def _proc_cpu_seconds(stat_path):
    """utime + stime from a /proc/.../stat file, in seconds."""
    with open(stat_path) as f:
        text = f.read()
    # The command name may contain spaces: fields start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Vm:
    """One VMM process: QMP connection, serial file, CPU accounting."""

    def __init__(self, kind, tools, workdir, name, image, memory_mib, incoming=False,
                 netns=None):
        self.kind, self.name = kind, name
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.serial_path = os.path.join(workdir, name + ".serial")
        self.log_path = os.path.join(workdir, name + ".log")
        if kind == "qemu":
            argv = [tools.qemu, "-accel", "kvm", "-m", str(memory_mib),
                    "-display", "none", "-nodefaults", "-no-user-config",
                    "-serial", "file:" + self.serial_path,
                    "-drive", f"file={image},format=raw,if=ide",
                    "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
            if incoming:
                argv += ["-incoming", "defer"]
        else:
            argv = [tools.godwit_vmm, "--bootsector", image, "--memory", f"{memory_mib}M",
                    "--qmp", "unix:" + self.qmp_path, "--serial", "file:" + self.serial_path]
            if incoming:
                argv += ["--incoming", "defer"]
        if netns:
            # `ip netns exec` execs the command: the child's pid is the VMM's.
            argv = ["ip", "netns", "exec", netns] + argv
        self.argv = argv
        self.log = open(self.log_path, "w")
        self.qmp = None
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT)
        except OSError as e:
            self.log.close()
            raise VmmError(f"cannot start {self.label} ({argv[0]}): {e}") from e
        STARTED.append(self.proc)
        try:
            self._connect()
            cpus = self.qmp.cmd("query-cpus-fast")
            try:
                self.vcpu_tids = [c["thread-id"] for c in cpus]
            except (KeyError, TypeError):
                raise VmmError(f"{self.qmp.who}: query-cpus-fast gave no thread-ids: "
                               f"{str(cpus)[:200]}") from None
        except BaseException:
            self.kill()  # nobody else holds this process yet
            raise

    @property
    def label(self):
        return VMM_LABEL.get(self.kind, self.kind)

    def _connect(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None:
                raise VmmError(f"{self.label} ({self.name}) exited with status "
                               f"{self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise VmmError(f"{self.label} ({self.name}): no QMP socket after {timeout}s")
            time.sleep(0.01)
        # The socket file appears at bind(), a moment before listen().
        while True:
            try:
                self.qmp = Qmp(self.qmp_path, vmm=self.label, name=self.name, probe=True)
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise VmmError(f"{self.label} ({self.name}): QMP refuses connections: "
                                   f"{self.log_tail()}") from None
                time.sleep(0.01)

    def log_tail(self, n=400):
        if not self.log.closed:
            self.log.flush()
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:].strip()
        except OSError:
            return ""

    def passes(self):
        """Passes the guest completed here: the 'B's it wrote on COM1."""
        try:
            with open(self.serial_path, "rb") as f:
                return f.read().count(PASS_CHAR)
        except FileNotFoundError:
            return 0

    def wait_passes(self, n, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            p = self.passes()
            if p >= n:
                return p
            if self.proc.poll() is not None:
                raise VmmError(f"{self.label} ({self.name}) exited with status "
                               f"{self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise VmmError(f"{self.label} ({self.name}): guest made {p} passes "
                               f"in {timeout}s, expected {n}")
            time.sleep(0.005)

    def cpu(self):
        """(whole process, vCPU threads) CPU seconds so far. The process
        figure includes threads that already exited (the kernel folds them
        into the process), so process - vCPU is what the VMM itself spent:
        migration threads, main loop, everything but running the guest."""
        pid = self.proc.pid
        try:
            total = _proc_cpu_seconds(f"/proc/{pid}/stat")
            vcpu = sum(_proc_cpu_seconds(f"/proc/{pid}/task/{tid}/stat")
                       for tid in self.vcpu_tids)
        except (OSError, ValueError, IndexError) as e:
            raise VmmError(f"{self.label} ({self.name}): no CPU figures in /proc "
                           f"(exited? status {self.proc.poll()}): {e}") from e
        return total, vcpu

    def kill(self):
        """For a process in an unknown state (a failed scenario): SIGKILL,
        no questions asked. Never leaves a process behind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if not self.log.closed:
            self.log.close()

    def close(self):
        """Quit politely, then for good; never leaves a process behind."""
        if self.proc.poll() is None and self.qmp:
            try:
                self.qmp.sock.settimeout(5)
                self.qmp.refuse = set()
                self.qmp.cmd("quit")
            except (VmmError, OSError):
                pass
        try:
            self.proc.wait(5 if self.qmp else 0)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
