#!/usr/bin/env python3
"""godwit's benchmark: godwit-vmm against QEMU and against the machine's
limits, in one command.

    bench/run.py [--quick] [--build build-release] [--reps N] [--only TEXT]

measures the machine's limits (bench/src/), migrates the same boot-sector
guest with QEMU and with godwit-vmm (migration.py), appends every figure
to bench/results/<date>.jsonl and regenerates docs/benchmarks.md with
its plots (report.py). `make bench` and `make bench QUICK=1` run it.

Python standard library only. Needs root (KVM, network namespaces).
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import limits  # noqa: E402
import report  # noqa: E402
from migration import MIB, Chain, Link, Unavailable, Variant, Workload  # noqa: E402
from netns import Hosts  # noqa: E402
from vmms import BOOTSECTOR_START  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = {w.name: w for w in (
    # The guest rewrites 64 pages and never touches the rest of its RAM.
    Workload("idle", BOOTSECTOR_START + 256 * 1024),
    # The guest rewrites 100 MiB as fast as it can (see docs).
    Workload("dirtying", 101 * MIB),
    # The same guest, stopped first: 100 MiB of written pages, no dirtying.
    Workload("paused", 101 * MIB, paused=True),
)}

LINKS = {link.name: link for link in (
    Link("local"),
    Link("1gbit-1ms", rate_bps=1e9, rtt_ms=1.0),
    Link("10gbit-0.2ms", rate_bps=10e9, rtt_ms=0.2),
)}

VARIANTS = {v.name: v for v in (
    Variant("godwit", "godwit"),
    Variant("qemu", "qemu"),
    Variant("qemu-default-bw", "qemu", max_bandwidth=None),
    Variant("godwit-multifd2", "godwit", multifd=2),
    Variant("qemu-multifd2", "qemu", multifd=2),
)}


@dataclass(frozen=True)
class Row:
    memory_mib: int
    workload: str
    link: str
    variant: str

    @property
    def scenario(self):
        return f"{self.link}-{self.memory_mib // 1024}G-{self.workload}"

    @property
    def auto_converge(self):
        # 1 Gbit/s carries ~0.12 GB/s; the guest dirties ~1 GB/s: without
        # throttling neither VMM could ever finish, on either side.
        return self.workload == "dirtying" and self.link == "1gbit-1ms"


def plan(quick):
    """The rows to run, and a sentence saying what was left out."""
    rows = []
    if quick:
        # Every kind of figure once, small enough for < 5 minutes: one
        # guest size, the local link for all three workloads, the 1 Gbit/s
        # link for the one workload it changes most.
        for wl, variants in (("idle", ["godwit", "qemu"]),
                             ("dirtying", ["godwit", "qemu", "godwit-multifd2",
                                           "qemu-multifd2"]),
                             ("paused", ["godwit", "qemu", "qemu-default-bw"])):
            rows += [Row(1024, wl, "local", v) for v in variants]
        rows += [Row(1024, "dirtying", "1gbit-1ms", v) for v in ("godwit", "qemu")]
        note = ("QUICK mode: 1 GiB guests only; local link: idle, dirtying (+ multifd), "
                "paused (+ QEMU's default bandwidth); 1 Gbit/s link: dirtying only; "
                "3 runs each. `make bench` runs everything: 1 and 4 GiB, all three "
                "links, 5 runs.")
        return rows, note
    for mem in (1024, 4096):
        for wl in WORKLOADS:
            rows += [Row(mem, wl, "local", v) for v in VARIANTS]
            for link in ("1gbit-1ms", "10gbit-0.2ms"):
                rows += [Row(mem, wl, link, v) for v in
                         ("godwit", "qemu", "godwit-multifd2", "qemu-multifd2")]
    return rows, "Full mode: every scenario, 5 runs each."


class Tools:
    """Paths of everything the harness runs, and TCP ports."""

    def __init__(self, build_dir):
        self.build_dir = build_dir
        self.qemu = shutil.which("qemu-system-x86_64")
        if not self.qemu:
            sys.exit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
        self.bootsector = os.path.join(build_dir, "guests", "bootdirtier.bin")
        if not os.path.exists(self.bootsector):
            sys.exit(f"{self.bootsector} is missing: build first (make build)")
        self.godwit_vmm = os.path.join(build_dir, "vmm", "godwit-vmm")
        self.godwit_vmm_ok = os.access(self.godwit_vmm, os.X_OK)
        self.godwit_vmm_why = "" if self.godwit_vmm_ok else f"{self.godwit_vmm} is not built"
        self._port = random.randrange(20000, 40000)

    def next_port(self):
        """A port free in this namespace; the other namespaces are fresh,
        so it is free there too."""
        while True:
            self._port += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", self._port))
                    return self._port
                except OSError:
                    continue


def _first_line(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def describe_machine(tools):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    commit = _first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "type": "machine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "qemu": _first_line([tools.qemu, "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
        "godwit_commit": commit + (" + uncommitted changes" if dirty else ""),
        "loadavg_start": os.getloadavg()[0],
    }


class Results:
    """Every record goes to the JSONL file as soon as it exists, so an
    interrupted run keeps what it measured."""

    def __init__(self, path):
        self.path = path
        self.records = []
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def add(self, rec):
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


def run_rows(rows, reps, tools, hosts, results, timeout, log):
    """Every row `reps` times. Rows sharing a guest (VMM, size, END) share
    a chain; repetitions go round-robin over the rows of a chain so slow
    drifts of the machine spread over all of them."""
    chains = {}
    for row in rows:
        wl = WORKLOADS[row.workload]
        key = (VARIANTS[row.variant].vmm, row.memory_mib, wl.end)
        chains.setdefault(key, []).append(row)
    # godwit and QEMU chains of the same guest back to back.
    order = sorted(chains, key=lambda k: (k[1], k[2], k[0]))
    skip = {}  # (variant, auto_converge) -> why it cannot run anywhere
    for key in order:
        vmm, mem, end = key
        chain = Chain(vmm, mem, end, tools, hosts)
        done = {}  # row -> reason to stop repeating it
        try:
            for rep in range(reps):
                for row in chains[key]:
                    variant = VARIANTS[row.variant]
                    base = {"type": "run", "rep": rep, "scenario": row.scenario,
                            **asdict(row), "vmm": vmm, "auto_converge": row.auto_converge,
                            "max_bandwidth": variant.max_bandwidth,
                            "multifd": variant.multifd, "end": end}
                    why = skip.get((row.variant, row.auto_converge)) or done.get(row)
                    if why:
                        if rep == 0:
                            results.add({**base, "status": "unavailable", "error": why})
                        continue
                    t = time.monotonic()
                    try:
                        res = chain.migrate(variant, LINKS[row.link], WORKLOADS[row.workload].paused,
                                            row.auto_converge, timeout, sample=(rep == 0))
                    except Unavailable as e:
                        skip[(row.variant, row.auto_converge)] = str(e)
                        res = {"status": "unavailable", "error": str(e)}
                    except (RuntimeError, OSError) as e:
                        # A VMM died or never came up: say so, start afresh.
                        res = {"status": "error", "error": str(e)}
                        chain.close()
                        chain = Chain(vmm, mem, end, tools, hosts)
                    if res["status"] == "timeout":
                        done[row] = res["error"]
                    results.add({**base, **res})
                    log(f"  {row.scenario:28} {row.variant:16} run {rep + 1}: "
                        f"{summary(res)} ({time.monotonic() - t:.1f} s)")
        finally:
            chain.close()


def summary(res):
    if res["status"] != "ok":
        return f"{res['status'].upper()}: {res.get('error', '')}"
    down = f", downtime {res['downtime_ms']:.0f} ms" if "downtime_ms" in res else ""
    return (f"total {res['total_ms']:.0f} ms{down}, {res['transferred'] / MIB:.0f} MiB, "
            f"{res['rounds']} rounds")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the < 5 minute subset")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"),
                    help="meson build directory with godwit-vmm and the guests")
    ap.add_argument("--reps", type=int, help="runs per row (default: 3 quick, 5 full)")
    ap.add_argument("--only", help="run only rows whose scenario or variant contains this")
    ap.add_argument("--timeout", type=float, default=60,
                    help="seconds before a migration counts as not converging")
    ap.add_argument("--no-links", action="store_true", help="skip the namespace link rows")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: /dev/kvm and network namespaces")
    # SIGTERM unwinds like ^C, so namespaces and VMMs are always cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    build_dir = os.path.abspath(args.build)
    reps = args.reps or (3 if args.quick else 5)
    rows, note = plan(args.quick)
    if args.no_links:
        rows = [r for r in rows if r.link == "local"]
    if args.only:
        rows = [r for r in rows if args.only in r.scenario or args.only in r.variant]
    started = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    tools = Tools(build_dir)
    progs = limits.build(build_dir)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    results = Results(os.path.join(args.results, stamp + ("-quick" if args.quick else "")
                                   + ".jsonl"))
    machine = describe_machine(tools)
    machine.update(command=os.environ.get("GW_BENCH_COMMAND") or " ".join(sys.argv),
                   quick=args.quick, reps=reps, plan_note=note,
                   downtime_limit_ms=300, timeout_s=args.timeout)
    results.add(machine)
    log(note)
    log(f"{len(rows)} rows x {reps} runs; results in {results.path}")

    with contextlib.ExitStack() as stack:
        try:
            hosts = stack.enter_context(Hosts(progs["wire"]))
        except RuntimeError as e:
            # Without namespaces only the local rows can run; say so.
            log(f"{e}: running the local rows only")
            hosts = None
            for r in rows:
                if r.link != "local":
                    results.add({"type": "run", "rep": 0, "scenario": r.scenario, **asdict(r),
                                 "vmm": VARIANTS[r.variant].vmm, "status": "error",
                                 "auto_converge": r.auto_converge, "error": str(e)})
            rows = [r for r in rows if r.link == "local"]
        log("measuring the machine's limits")
        probe = limits.Limits(progs, tools, args.quick)
        for _ in range(1 if args.quick else 3):
            probe.machine(build_dir, ns=hosts.ns[0] if hosts else None)
        for name in sorted({r.link for r in rows if r.link != "local"}):
            probe.link(hosts, LINKS[name])
        for rec in probe.records:
            results.add({"type": "limit", **rec})
        log("limits: " + ", ".join(report.limit_summary(probe.records)))
        run_rows(rows, reps, tools, hosts, results, args.timeout, log)

    results.add({"type": "end", "elapsed_s": round(time.monotonic() - started, 1),
                 "loadavg_end": os.getloadavg()[0]})
    report.write(results.path, args.docs)
    log(f"wrote {os.path.join(args.docs, 'benchmarks.md')} and its plots")


if __name__ == "__main__":
    main()
