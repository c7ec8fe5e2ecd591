#!/usr/bin/env python3
"""Local live update: the guest moved onto a new VMM process on the same
host without a copy of its RAM, godwit against QEMU and against the
machine's own cost of handing memfds over, in one run.

    bench/update.py [--quick] [--reps N] [--build build-release] [--results DIR]

Rows: guests of 256 MiB, 1 GiB, 4 GiB and 16 GiB (--quick: 256 MiB and
1 GiB), idle (the boot-sector dirtier rewriting 64 KiB) or dirtying (it
rewrites all of a touched part: 200 MiB, then 1 GiB at most, so the 16 GiB
guest is mostly never touched), each moved by

  godwit-cpr-transfer  mode cpr-transfer to a godwit-vmm waiting on
                       --incoming unix:PATH (memfds over SCM_RIGHTS)
  godwit-cpr-exec      mode cpr-exec: the process execs godwit-vmm again
                       with its own command line; the guest waits in a
                       stand-in (the new binary, by cpr-transfer) and
                       comes back to the new image: two short pauses
  qemu-ignore-shared   QEMU 7.2 with its RAM in a shared file
                       (memory-backend-file share=on in /dev/shm) and the
                       x-ignore-shared capability on both sides, over a
                       unix socket to a second QEMU on this host: QEMU's
                       way of not copying RAM before cpr-transfer existed

What one run records (all from the VMMs' own query-migrate):
  events_us     the source's STOP event to the destination's RESUME event
                (their QMP timestamps, one host clock): the same measure for
                both VMMs, as in bench/migration.py (not for cpr-exec, whose
                new image emits RESUME before a client can be back)
  blackout_us   godwit: x-godwit-downtime-us (the old process's pause to the
                new one's resume, on the host's one monotonic clock; for
                cpr-exec the new image reports it: both pauses, summed;
                pauses_us has each). QEMU: its `downtime`, which it counts
                in whole milliseconds
  ram_bytes     RAM bytes copied (ram.transferred of godwit, whose stream
                carries no page; ram.transferred of QEMU)
  state_bytes   bytes of state sent
  adopt_us      godwit: mapping the memfds, making them guest memory and
                pre-faulting their populated ranges (cpr-transfer: before
                the pause)
  mem_*         the host's MemAvailable before the update, its lowest during
                it (sampled every 2 ms) and after; the PSS of the VMM
                processes before and after: a second copy of the RAM would
                show in both
and checks that the guest went on in its new process (new passes on its
serial line).

The machine's limit (same run): sending the guest's memfds over a unix
socketpair (SCM_RIGHTS) and receiving them, and mapping them with
MADV_POPULATE_WRITE of the touched part: the floor of the hand-over
itself and of godwit's adoption.

Results go to bench/results/<date>-update.jsonl; `bench/report.py FULL
[LIVE ...] UPDATE` puts them in docs/benchmarks.md ("Local live update").
Python standard library only; needs root (KVM).
"""
import argparse
import array
import ctypes
import datetime
import json
import mmap
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from migration import _event, event_time  # noqa: E402
from qmp import Qmp, QmpError, VmmError  # noqa: E402
from vmms import BOOTSECTOR_START, PASS_CHAR, write_bootsector  # noqa: E402

MIB = 1 << 20
MADV_POPULATE_WRITE = 23
VARIANTS = ("godwit-cpr-transfer", "godwit-cpr-exec", "qemu-ignore-shared")


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """The lowest MemAvailable while it runs."""

    def __init__(self):
        self.lowest = mem_available()
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.done.is_set():
            self.lowest = min(self.lowest, mem_available())
            time.sleep(0.002)

    def stop(self):
        self.done.set()
        self.t.join()
        return self.lowest


class Proc:
    """One VMM process with a QMP socket and a serial file."""

    def __init__(self, argv, qmp_path, serial_path, log_path, label):
        self.argv, self.qmp_path, self.serial_path = argv, qmp_path, serial_path
        self.label = label
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.qmp = None
        try:
            self.connect()
        except BaseException:
            self.kill()
            raise

    def connect(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise VmmError(f"{self.label} exited with {self.proc.returncode}")
            try:
                if self.qmp:
                    self.qmp.close()
                self.qmp = Qmp(self.qmp_path, vmm=self.label, probe=True)
                return self.qmp
            except (OSError, VmmError):
                if time.monotonic() > deadline:
                    raise VmmError(f"{self.label}: no QMP on {self.qmp_path}") from None
                time.sleep(0.01)

    def passes(self):
        try:
            with open(self.serial_path, "rb") as f:
                return f.read().count(PASS_CHAR)
        except FileNotFoundError:
            return 0

    def wait_passes(self, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        while self.passes() < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise VmmError(f"{self.label}: guest made {self.passes()} passes, expected {n}")
            time.sleep(0.005)

    def wait_migration(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            r = self.qmp.cmd("query-migrate")
            if r.get("status") in ("completed", "failed", "cancelled"):
                return r
            if time.monotonic() > deadline:
                raise VmmError(f"{self.label}: migration still {r.get('status')}")
            time.sleep(0.005)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.qmp:
            self.qmp.close()
        self.log.close()


def godwit_argv(vmm, image, mem_mib, d, name, incoming=None):
    argv = [vmm, "--bootsector", image, "--memory", f"{mem_mib}M",
            "--qmp", f"unix:{d}/{name}.qmp", "--serial", f"file:{d}/{name}.serial"]
    return argv + (["--incoming", incoming] if incoming else [])


def qemu_argv(qemu, image, mem_mib, d, name, shm, incoming=False):
    argv = [qemu, "-accel", "kvm", "-m", str(mem_mib), "-display", "none", "-nodefaults",
            "-no-user-config", "-serial", f"file:{d}/{name}.serial",
            "-object", f"memory-backend-file,id=ram0,size={mem_mib}M,mem-path={shm},share=on",
            "-machine", "memory-backend=ram0",
            "-drive", f"file={image},format=raw,if=ide",
            "-qmp", f"unix:{d}/{name}.qmp,server=on,wait=off"]
    return argv + (["-incoming", "defer"] if incoming else [])


def start(argv, d, name, label):
    return Proc(argv, f"{d}/{name}.qmp", f"{d}/{name}.serial", f"{d}/{name}.log", label)


def event_blackout_us(src, dst):
    """The source's STOP event to the destination's RESUME event, by their
    QMP timestamps (one host clock): what the guest saw, whatever either
    VMM reports about itself (the measure of bench/migration.py)."""
    resume = _event(dst.qmp, "RESUME", timeout=30)
    stop = src.qmp.find_event("STOP")
    if not resume or not stop:
        return None
    return (event_time(resume) - event_time(stop)) * 1e6


def run_godwit_transfer(tools, image, mem_mib, d):
    src = start(godwit_argv(tools.godwit_vmm, image, mem_mib, d, "src"), d, "src", "godwit-vmm src")
    dst = None
    try:
        src.wait_passes(1)
        sock = f"{d}/cpr.sock"
        dst = start(godwit_argv(tools.godwit_vmm, image, mem_mib, d, "dst", "unix:" + sock), d, "dst",
                    "godwit-vmm dst")
        time.sleep(0.1)
        before, pss0 = mem_available(), pss(src.proc.pid) + pss(dst.proc.pid)
        s = Sampler()
        src.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
        src.qmp.cmd("migrate", uri="unix:" + sock)
        r = src.wait_migration()
        dr = dst.wait_migration()
        lowest = s.stop()
        if r["status"] != "completed" or dr["status"] != "completed":
            raise VmmError(f"cpr-transfer: {r.get('error-desc') or dr.get('error-desc')}")
        events_us = event_blackout_us(src, dst)
        passes = dst.passes()
        dst.wait_passes(passes + 1)
        pss1 = pss(src.proc.pid) + pss(dst.proc.pid)
        src.qmp.cmd("quit")
        src.proc.wait(timeout=30)
        time.sleep(0.1)
        return {"blackout_us": r["x-godwit-downtime-us"], "events_us": events_us,
                "ram_bytes": r["ram"]["transferred"],
                "state_bytes": r["x-godwit-state-bytes"], "adopt_us": dr["x-godwit-adopt-us"],
                "handshake_us": r.get("x-godwit-handshake-us"),
                "mem_before": before, "mem_lowest": lowest, "mem_after": mem_available(),
                "pss_before": pss0, "pss_after": pss1}
    finally:
        src.kill()
        if dst:
            dst.kill()


def run_godwit_exec(tools, image, mem_mib, d):
    vm = start(godwit_argv(tools.godwit_vmm, image, mem_mib, d, "vm"), d, "vm", "godwit-vmm")
    try:
        vm.wait_passes(1)
        state = f"{d}/state.gw"
        pid = vm.proc.pid
        before, pss0 = mem_available(), pss(pid)
        s = Sampler()
        vm.qmp.cmd("migrate-set-parameters", mode="cpr-exec",
                   **{"cpr-exec-command": vm.argv + ["--incoming", "file:" + state]})
        vm.qmp.cmd("migrate", uri="file:" + state)
        deadline = time.monotonic() + 60
        while True:
            try:
                r = vm.connect().cmd("query-migrate")
                if "x-godwit-adopted-bytes" in r and r["status"] in ("completed", "failed"):
                    break
                if r["status"] == "failed":
                    raise VmmError(f"cpr-exec: {r.get('error-desc')}")
            except (OSError, VmmError) as e:
                if isinstance(e, VmmError) and "cpr-exec:" in str(e):
                    raise
            if time.monotonic() > deadline:
                raise VmmError("cpr-exec: the new image never answered")
            time.sleep(0.005)
        lowest = s.stop()
        if r["status"] != "completed":
            raise VmmError(f"cpr-exec: {r.get('error-desc')}")
        if vm.proc.pid != pid or vm.proc.poll() is not None:
            raise VmmError("cpr-exec: the pid changed or the process exited")
        passes = vm.passes()
        vm.wait_passes(passes + 1)
        return {"blackout_us": r["x-godwit-downtime-us"], "pauses_us": r["x-godwit-pauses-us"],
                "ram_bytes": r["ram"]["transferred"],
                "state_bytes": r["x-godwit-received"], "adopt_us": r["x-godwit-adopt-us"],
                "mem_before": before, "mem_lowest": lowest, "mem_after": mem_available(),
                "pss_before": pss0, "pss_after": pss(pid)}
    finally:
        vm.kill()


def run_qemu(tools, image, mem_mib, d):
    shm = f"/dev/shm/gw-bench-update-{os.getpid()}"
    src = dst = None
    try:
        src = start(qemu_argv(tools.qemu, image, mem_mib, d, "src", shm), d, "src", "QEMU src")
        src.wait_passes(1)
        dst = start(qemu_argv(tools.qemu, image, mem_mib, d, "dst", shm, incoming=True), d,
                    "dst", "QEMU dst")
        caps = [{"capability": "x-ignore-shared", "state": True}]
        src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        dst.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        sock = f"{d}/qemu.sock"
        dst.qmp.cmd("migrate-incoming", uri="unix:" + sock)
        time.sleep(0.1)
        before, pss0 = mem_available(), pss(src.proc.pid) + pss(dst.proc.pid)
        s = Sampler()
        src.qmp.cmd("migrate", uri="unix:" + sock)
        r = src.wait_migration()
        lowest = s.stop()
        if r["status"] != "completed":
            raise VmmError(f"QEMU: {r.get('error-desc')}")
        dst_r = dst.wait_migration()
        events_us = event_blackout_us(src, dst)
        passes = dst.passes()
        dst.wait_passes(passes + 1)
        return {"blackout_us": r["downtime"] * 1000, "events_us": events_us,
                "ram_bytes": r["ram"]["transferred"],
                # QEMU does not report its device state's size apart.
                "state_bytes": None, "adopt_us": None,
                "dst_status": dst_r.get("status"),
                "mem_before": before, "mem_lowest": lowest, "mem_after": mem_available(),
                "pss_before": pss0, "pss_after": pss(src.proc.pid) + pss(dst.proc.pid)}
    finally:
        for p in (src, dst):
            if p:
                p.kill()
        if os.path.exists(shm):
            os.unlink(shm)


RUNNERS = {"godwit-cpr-transfer": run_godwit_transfer, "godwit-cpr-exec": run_godwit_exec,
           "qemu-ignore-shared": run_qemu}


# ---- the machine's limit -------------------------------------------------

def fd_handover_limit(mem_mib, touched_mib, reps):
    """Send a memfd of the guest's size (touched_mib written) over a unix
    socketpair with SCM_RIGHTS, receive it, map it MAP_SHARED and fault the
    touched part in with MADV_POPULATE_WRITE: the two halves of what godwit's
    adoption is, without any VMM."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fd = os.memfd_create("gw-bench-limit")
    os.ftruncate(fd, mem_mib * MIB)
    m = mmap.mmap(fd, mem_mib * MIB)
    for off in range(0, touched_mib * MIB, 4096):
        m[off] = 1
    send_us, map_us = [], []
    for _ in range(reps):
        a, b = socket.socketpair()
        t0 = time.perf_counter_ns()
        socket.send_fds(a, [b"x" * 64], [fd])
        _, fds, _, _ = socket.recv_fds(b, 64, 1)
        t1 = time.perf_counter_ns()
        mm = mmap.mmap(fds[0], mem_mib * MIB)
        buf = (ctypes.c_char * 1).from_buffer(mm)
        addr = ctypes.addressof(buf)
        if touched_mib and libc.madvise(addr, touched_mib * MIB, MADV_POPULATE_WRITE):
            raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE)")
        t2 = time.perf_counter_ns()
        del buf
        mm.close()
        os.close(fds[0])
        a.close()
        b.close()
        send_us.append((t1 - t0) / 1000)
        map_us.append((t2 - t1) / 1000)
    m.close()
    os.close(fd)
    return {"send_us": statistics.median(send_us), "map_us": statistics.median(map_us)}


def plan(quick):
    sizes = (256, 1024) if quick else (256, 1024, 4096, 16384)
    rows = []
    for mem in sizes:
        for work in ("idle", "dirtying"):
            touched = min(200 if mem == 256 else 1024, mem - 8) if work == "dirtying" else 0
            for v in VARIANTS:
                rows.append((mem, work, touched, v))
    return rows


class Tools:
    """What update.py runs; bench/run.py's Tools has the same members."""

    def __init__(self, build):
        self.godwit_vmm = os.path.join(build, "vmm", "godwit-vmm")
        self.qemu = shutil.which("qemu-system-x86_64")
        self.bootsector = os.path.join(build, "guests", "bootdirtier.bin")
        for p in (self.godwit_vmm, self.bootsector):
            if not os.path.exists(p):
                sys.exit(f"{p} is missing: build first (make build)")
        if not self.qemu:
            sys.exit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")


def machine(tools, cmd):
    def first(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    commit = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"type": "machine",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "qemu": first([tools.qemu, "--version"]),
            "godwit_commit": commit + (" + uncommitted changes" if dirty else ""),
            "command": cmd, "loadavg_start": os.getloadavg()[0]}


def run_rows(rows, reps, tools, put, log):
    """Each row reps times; every record goes to put() as it is made (also
    from bench/run.py, into its results file: the same run as the rest)."""
    for mem, work, touched, variant in rows:
        lim = fd_handover_limit(mem, touched, 5)
        put({"type": "update-limit", "memory_mib": mem, "touched_mib": touched, **lim})
        for rep in range(reps):
            with tempfile.TemporaryDirectory(prefix="gw-bench-update-") as d:
                image = os.path.join(d, "guest.img")
                end = BOOTSECTOR_START + (touched * MIB if touched else 64 << 10)
                write_bootsector(tools.bootsector, image, end)
                rec = {"type": "update", "memory_mib": mem, "workload": work,
                       "touched_mib": touched, "variant": variant, "rep": rep}
                try:
                    rec.update(RUNNERS[variant](tools, image, mem, d))
                    rec["ok"] = True
                except (VmmError, QmpError, OSError, KeyError, subprocess.SubprocessError) as e:
                    rec.update(ok=False, error=str(e)[:500])
                put(rec)
                ev = rec.get("events_us")
                log(f"{mem:6d} MiB {work:8s} {variant:20s} rep {rep}: "
                    + (f"blackout {rec['blackout_us'] / 1000:.3f} ms (events "
                       f"{ev / 1000 if ev else float('nan'):.3f} ms), RAM copied "
                       f"{rec['ram_bytes']}, state {rec['state_bytes']} B" if rec["ok"] else
                       f"FAILED: {rec['error']}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB and 1 GiB only, 3 runs")
    ap.add_argument("--reps", type=int, help="runs per row (default: 3 quick, 5 full)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", help="rows whose variant contains this")
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    tools = Tools(args.build)
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(args.results, f"{stamp}-update{'-quick' if args.quick else ''}.jsonl")
    out = open(path, "w")

    def put(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    put(machine(tools, " ".join(["bench/update.py"] + sys.argv[1:])))
    t_start = time.monotonic()
    rows = [r for r in plan(args.quick) if not args.only or args.only in r[3]]
    run_rows(rows, reps, tools, put, lambda msg: print(msg, flush=True))
    put({"type": "end", "elapsed_s": round(time.monotonic() - t_start),
         "loadavg_end": os.getloadavg()[0]})
    out.close()
    print(f"results: {path}")
    print(f"then: bench/report.py FULL.jsonl [LIVE.jsonl] {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
