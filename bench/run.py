#!/usr/bin/env python3
"""godwit's benchmark: godwit-vmm against QEMU and against the machine's
limits, in one command.

    bench/run.py [--quick] [--build build-release] [--reps N] [--only TEXT]
                 [--refuse VARIANT:COMMAND ...]
    bench/run.py --postcopy [--reps N] [--docs DIR]   issue 14's rows only
    bench/run.py --selftest [--build DIR]

measures the machine's limits (bench/src/), migrates the same boot-sector
guest with QEMU and with godwit-vmm (migration.py), appends every figure
to bench/results/<date>.jsonl and regenerates docs/benchmarks.md with
its plots (report.py). `make bench` and `make bench QUICK=1` run it.

A scenario run that fails (a QMP error, a command the VMM does not have,
a migration that can be neither finished nor cancelled, a VMM that dies
or stops answering) is recorded as FAILED with the reason, its processes
are killed, and the run goes on. Only a bug of the harness stops the
run; every record made before it is already in the results file.

--refuse VARIANT:COMMAND (or GW_BENCH_REFUSE="VARIANT:COMMAND,...") makes
the QMP driver of that variant's hops treat COMMAND as one the VMM does
not have, exactly as if query-commands had not listed it: the way to see
a failure handled without a broken VMM. --selftest does that on a short
QEMU-only run in a temporary directory and checks the outcome.

Python standard library only. Needs root (KVM, network namespaces).
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The QMP client, shared with the end-to-end tests (tools/qmp.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))

import limits  # noqa: E402
import report  # noqa: E402
import snapshot  # noqa: E402
import update  # noqa: E402
import vmms  # noqa: E402
from migration import MIB, CancelFailed, Chain, Link, Unavailable, Variant, Workload  # noqa: E402
from netns import Hosts, LinkError  # noqa: E402
from qmp import VmmError  # noqa: E402
from vmms import BOOTSECTOR_START  # noqa: E402

# What may go wrong in one scenario without stopping the run: the VMMs
# (VmmError: error replies, missing commands, deaths, timeouts), the link,
# and the operating system (starting processes, files).
SCENARIO_FAILURES = (VmmError, LinkError, OSError)

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
    Variant("godwit-multifd4", "godwit", multifd=4),
    Variant("qemu-multifd4", "qemu", multifd=4),
    Variant("godwit-postcopy", "godwit", postcopy=True),
    Variant("qemu-postcopy", "qemu", postcopy=True),
    Variant("godwit-postcopy-fetch4m", "godwit", postcopy=True, postcopy_fetch_rate=4 * MIB),
)}
# Post-copy needs a guest that runs on the destination: not the paused one.
POSTCOPY = [v for v in VARIANTS if VARIANTS[v].postcopy]


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
        # throttling neither VMM could ever finish pre-copy, on either
        # side. Post-copy finishes whatever the guest dirties.
        return (self.workload == "dirtying" and self.link == "1gbit-1ms"
                and not VARIANTS[self.variant].postcopy)


def plan_postcopy():
    """Issue 14's comparison: the dirtying guests, pre-copy against
    post-copy against multifd, both VMMs, loopback and the 1 Gbit/s link.
    The fetch-limited post-copy (godwit only) times the fault path: on
    loopback only, since on the 1 Gbit/s link its ~25,000 faults would
    each wait a 1 ms round trip at least."""
    rows = []
    for mem in (1024, 4096):
        for link in ("local", "1gbit-1ms"):
            rows += [Row(mem, "dirtying", link, v) for v in
                     ("godwit", "qemu", "godwit-postcopy", "qemu-postcopy",
                      "godwit-multifd2", "qemu-multifd2")]
        rows.append(Row(mem, "dirtying", "local", "godwit-postcopy-fetch4m"))
    return rows, ("post-copy only (bench/run.py --postcopy): the 1 and 4 GiB dirtying guests, "
                  "loopback and the 1 Gbit/s link, pre-copy, post-copy and multifd 2")


def plan(quick):
    """The rows to run, and a sentence saying what was left out."""
    rows = []
    if quick:
        # Every kind of figure once, small enough for < 5 minutes: one
        # guest size, the local link for all three workloads, the 1 Gbit/s
        # link for the one workload it changes most.
        for wl, variants in (("idle", ["godwit", "qemu"]),
                             ("dirtying", ["godwit", "qemu", "godwit-multifd2",
                                           "qemu-multifd2", "godwit-multifd4",
                                           "qemu-multifd4", "godwit-postcopy",
                                           "qemu-postcopy"]),
                             ("paused", ["godwit", "qemu", "qemu-default-bw"])):
            rows += [Row(1024, wl, "local", v) for v in variants]
        rows += [Row(1024, "dirtying", "1gbit-1ms", v) for v in ("godwit", "qemu")]
        note = ("QUICK mode: 1 GiB guests only; local link: idle, dirtying (+ multifd, "
                "post-copy), "
                "paused (+ QEMU's default bandwidth); 1 Gbit/s link: dirtying only; "
                "3 runs each. `make bench` runs everything: 1 and 4 GiB, all three "
                "links, 5 runs.")
        return rows, note
    for mem in (1024, 4096):
        for wl in WORKLOADS:
            postcopy = POSTCOPY if wl == "dirtying" else []
            rows += [Row(mem, wl, "local", v) for v in VARIANTS
                     if v not in POSTCOPY or v in postcopy]
            for link in ("1gbit-1ms", "10gbit-0.2ms"):
                rows += [Row(mem, wl, link, v) for v in
                         ("godwit", "qemu", "godwit-multifd2", "qemu-multifd2",
                          *(v for v in postcopy if not VARIANTS[v].postcopy_fetch_rate))]
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


def parse_refusals(specs):
    """["qemu:migrate-cancel", ...] -> {"qemu": ["migrate-cancel"]}."""
    out = {}
    for spec in specs:
        for item in filter(None, (x.strip() for x in spec.split(","))):
            variant, sep, command = item.partition(":")
            if not sep or not command or variant not in VARIANTS:
                raise ValueError(f"--refuse {item!r}: expected VARIANT:COMMAND with VARIANT "
                                 f"one of {', '.join(VARIANTS)}")
            cmds = out.setdefault(variant, [])
            if command.replace("_", "-") not in cmds:
                cmds.append(command.replace("_", "-"))
    return out


def run_rows(rows, reps, tools, hosts, results, timeout, log, refuse=None, observe=None):
    """Every row `reps` times. Rows sharing a guest (VMM, size, END) share
    a chain; repetitions go round-robin over the rows of a chain so slow
    drifts of the machine spread over all of them.

    timeout: seconds, or a function of the row. refuse: variant -> commands
    its hops treat as absent (parse_refusals). observe(record, chain), if
    given, is called after every record (the self-test looks at the
    processes then)."""
    timeout_of = timeout if callable(timeout) else (lambda row: timeout)
    refuse = {v: set(c) for v, c in (refuse or {}).items()}
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
        chain = Chain(vmm, mem, end, tools, hosts, refuse)
        done = {}  # row -> reason to stop repeating it
        try:
            for rep in range(reps):
                for row in chains[key]:
                    variant = VARIANTS[row.variant]
                    base = {"type": "run", "rep": rep, "scenario": row.scenario,
                            **asdict(row), "vmm": vmm, "auto_converge": row.auto_converge,
                            "max_bandwidth": variant.max_bandwidth,
                            "multifd": variant.multifd, "postcopy": variant.postcopy,
                            "postcopy_fetch_rate": variant.postcopy_fetch_rate,
                            "downtime_limit_ms": variant.downtime_limit_ms, "end": end}
                    why = skip.get((row.variant, row.auto_converge)) or done.get(row)
                    if why:
                        if rep == 0:
                            results.add({**base, "status": "unavailable", "error": why})
                        continue
                    t = time.monotonic()
                    try:
                        res = chain.migrate(variant, LINKS[row.link], WORKLOADS[row.workload].paused,
                                            row.auto_converge, timeout_of(row), sample=(rep == 0))
                    except Unavailable as e:
                        skip[(row.variant, row.auto_converge)] = str(e)
                        res = {"status": "unavailable", "error": str(e)}
                    except SCENARIO_FAILURES as e:
                        # The chain has killed its processes: the next run
                        # boots the guest afresh.
                        res = {"status": "failed", "error": str(e) or type(e).__name__,
                               "failure": type(e).__name__}
                        if isinstance(e, CancelFailed):
                            # It would fail again, after the same wait.
                            done[row] = res["error"]
                    if res["status"] == "timeout":
                        done[row] = res["error"]
                    res["wall_s"] = round(time.monotonic() - t, 2)
                    rec = {**base, **res}
                    results.add(rec)
                    log(f"  {row.scenario:28} {row.variant:16} run {rep + 1}: "
                        f"{summary(res)} ({res['wall_s']:.1f} s)")
                    if observe:
                        observe(rec, chain)
        finally:
            chain.close()


def summary(res):
    if res["status"] != "ok":
        return f"{res['status'].upper()}: {res.get('error', '')}"
    down = f", downtime {res['downtime_ms']:.0f} ms" if "downtime_ms" in res else ""
    if "vcpu_blocked_ms" in res:
        # godwit's postcopy-requests count its background pulls too.
        pc = res.get("godwit_postcopy")
        faults = pc["pages-faulted"] if pc else res.get("postcopy_requests")
        down += (f", post-copy: {faults} pages faulted, vCPU blocked "
                 f"{res['vcpu_blocked_ms']:.1f} ms")
    return (f"total {res['total_ms']:.0f} ms{down}, {res['transferred'] / MIB:.0f} MiB, "
            f"{res['rounds']} rounds")


def record_abort(results, started, exc):
    """A failure of the harness itself stops the run, but not before the
    results file says so (every record before it is already there)."""
    what = "".join(traceback.format_exception_only(type(exc), exc)).strip() \
        or type(exc).__name__
    results.add({"type": "end", "elapsed_s": round(time.monotonic() - started, 1),
                 "loadavg_end": os.getloadavg()[0], "aborted": what})
    print(f"bench/run.py stopped: {what}\nthe results so far are in {results.path}; "
          f"bench/report.py {results.path} --docs DIR draws them", file=sys.stderr)


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
    ap.add_argument("--no-snapshots", action="store_true", help="skip the snapshot file rows")
    ap.add_argument("--updates", action="store_true",
                    help="only the local live update rows (bench/update.py), with the limits")
    ap.add_argument("--no-updates", action="store_true", help="skip the local live update rows")
    ap.add_argument("--live-snapshots", action="store_true",
                    help="only the background-snapshot rows (with the stopped saves and "
                         "QEMU's background-snapshot of the same guests) and the limits")
    ap.add_argument("--postcopy", action="store_true",
                    help="only issue 14's rows: the dirtying guests, pre-copy against "
                         "post-copy against multifd, with the limits")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--refuse", action="append", metavar="VARIANT:COMMAND",
                    default=[os.environ["GW_BENCH_REFUSE"]] if os.environ.get("GW_BENCH_REFUSE")
                    else [],
                    help="make VARIANT's hops treat COMMAND as absent from the VMM, as if "
                         "query-commands had not listed it (repeatable; also "
                         "GW_BENCH_REFUSE=VARIANT:COMMAND,...): a forced failure")
    ap.add_argument("--selftest", action="store_true",
                    help="check, on a short QEMU-only run in a temporary directory, that a "
                         "refused command fails its scenario and the run goes on")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: /dev/kvm and network namespaces")
    # SIGTERM unwinds like ^C, so namespaces and VMMs are always cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        refuse = parse_refusals(args.refuse)
    except ValueError as e:
        ap.error(str(e))
    if args.selftest:
        sys.exit(selftest(os.path.abspath(args.build)))

    build_dir = os.path.abspath(args.build)
    reps = args.reps or (3 if args.quick else 5)
    rows, note = plan_postcopy() if args.postcopy else plan(args.quick)
    if args.no_links:
        rows = [r for r in rows if r.link == "local"]
    snap_rows = [] if args.no_snapshots else snapshot.plan(args.quick)
    # The live rows, without the stopped ones plan() already has.
    snap_rows += [r for r in snapshot.plan_live(args.quick) if r not in snap_rows] \
        if not args.no_snapshots else []
    update_rows = [] if args.no_updates else update.plan(args.quick)
    if args.live_snapshots:
        rows, note = [], "background snapshots only (bench/run.py --live-snapshots)"
        snap_rows, update_rows = snapshot.plan_live(args.quick), []
    if args.postcopy:
        snap_rows, update_rows = [], []
    if args.updates:
        rows, snap_rows, note = [], [], "local live update only (bench/run.py --updates)"
    if args.only:
        rows = [r for r in rows if args.only in r.scenario or args.only in r.variant]
        snap_rows = [r for r in snap_rows if args.only in r.scenario or args.only in r.variant]
        update_rows = [r for r in update_rows if args.only in r[3]]
    started = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    tools = Tools(build_dir)
    progs = limits.build(build_dir)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    results = Results(os.path.join(args.results, stamp + ("-quick" if args.quick else "")
                                   + ("-postcopy" if args.postcopy else "")
                                   + ".jsonl"))
    machine = describe_machine(tools)
    machine.update(command=os.environ.get("GW_BENCH_COMMAND") or " ".join(sys.argv),
                   quick=args.quick, reps=reps, plan_note=note,
                   downtime_limit_ms=300, timeout_s=args.timeout)
    if refuse:
        machine["refuse"] = refuse
    results.add(machine)
    log(note)
    log(f"{len(rows)} rows x {reps} runs; results in {results.path}")
    if refuse:
        log("refusing on purpose: " + "; ".join(f"{v}: {', '.join(c)}"
                                                for v, c in refuse.items()))

    try:
        with contextlib.ExitStack() as stack:
            try:
                hosts = stack.enter_context(Hosts(progs["wire"]))
            except RuntimeError as e:
                # Without namespaces only the local rows can run; say so.
                log(f"{e}: running the local rows only")
                hosts = None
                for r in rows:
                    if r.link != "local":
                        results.add({"type": "run", "rep": 0, "scenario": r.scenario,
                                     **asdict(r), "vmm": VARIANTS[r.variant].vmm,
                                     "status": "error", "auto_converge": r.auto_converge,
                                     "error": str(e)})
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
            run_rows(rows, reps, tools, hosts, results, args.timeout, log, refuse)
            if snap_rows:
                log(f"snapshot files: {len(snap_rows)} rows x {reps} runs")
                snapshot.run_rows(snap_rows, reps, tools, results, log)
            if update_rows:
                log(f"local live update: {len(update_rows)} rows x {reps} runs")
                update.run_rows(update_rows, reps, tools, results.add, log)
    except BaseException as e:
        record_abort(results, started, e)
        raise

    results.add({"type": "end", "elapsed_s": round(time.monotonic() - started, 1),
                 "loadavg_end": os.getloadavg()[0]})
    report.write(results.path, args.docs)
    log(f"wrote {os.path.join(args.docs, 'benchmarks.md')} and its plots")


# ---- the self-test -----------------------------------------------------------

# What the self-test refuses: the command whose absence stopped the first
# full run (QEMU 7.2 spells it migrate_cancel), for the plain QEMU variant.
SELFTEST_REFUSE = {"qemu": ["migrate-cancel"]}


def selftest(build_dir):
    """A short run through run_rows, QEMU only, with SELFTEST_REFUSE in
    force, into a temporary results file and page. The rows share one
    guest (one chain), in this order:

      1. local dirtying, qemu, cancelled at once (timeout 0): migrate-cancel
         is refused -> FAILED naming QEMU, its version and the command; no
         process of the chain is left.
      2. local dirtying, qemu-default-bw, cancelled at once: the guest is
         booted afresh; the cancel goes out as QEMU spells it and works ->
         "did not converge", and the source keeps the guest.
      3. local paused, qemu: completes and passes the memory check on the
         same guest (the refusal is still in force, the command unused).
      4. the same over the 10 Gbit/s link, across the two namespaces (when
         they can be made): the namespaces still work after the failure.

    Then: every VMM process has exited, the namespaces are gone, and the
    page drawn from the results names the failure and its reason.
    Returns the exit status."""
    started = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    tools = Tools(build_dir)
    tmp = tempfile.mkdtemp(prefix="gw-bench-selftest-")
    results = Results(os.path.join(tmp, "results", "selftest.jsonl"))
    machine = describe_machine(tools)
    machine.update(command="bench/run.py --selftest", quick=True, reps=1,
                   plan_note="self-test: QEMU only, one run per row, a refused command",
                   downtime_limit_ms=300, timeout_s=60, refuse=SELFTEST_REFUSE)
    results.add(machine)
    log(f"self-test in {tmp}; refusing {SELFTEST_REFUSE}")
    rows = [Row(1024, "dirtying", "local", "qemu"),
            Row(1024, "dirtying", "local", "qemu-default-bw"),
            Row(1024, "paused", "local", "qemu")]
    link_row = Row(1024, "paused", "10gbit-0.2ms", "qemu")
    checks = []

    def check(ok, what):
        checks.append((bool(ok), what))
        log(f"{'ok  ' if ok else 'FAIL'} {what}")

    seen = {}

    def observe(rec, chain):
        alive = [p.pid for p in vmms.STARTED if p.poll() is None]
        live = chain.live
        seen[(rec["scenario"], rec["variant"])] = {
            "status": rec["status"], "error": rec.get("error", ""),
            "alive": alive, "live": live.proc.pid if live else None,
            "cancel": live.qmp.spelling("migrate-cancel") if live and live.qmp else None}

    hosts = None
    with contextlib.ExitStack() as stack:
        try:
            progs = limits.build(build_dir, names=("wire",))
            hosts = stack.enter_context(Hosts(progs["wire"]))
            rows.append(link_row)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            log(f"no namespaces ({e}): the link row is left out")
        try:
            run_rows(rows, 1, tools, hosts, results,
                     lambda row: 0 if row.workload == "dirtying" else 60, log,
                     SELFTEST_REFUSE, observe)
        except BaseException as e:
            record_abort(results, started, e)
            raise
        ns = list(hosts.ns) if hosts else []
    results.add({"type": "end", "elapsed_s": round(time.monotonic() - started, 1),
                 "loadavg_end": os.getloadavg()[0]})

    r1 = seen.get(("local-1G-dirtying", "qemu"), {})
    check(r1.get("status") == "failed", f"1: the refused command fails the run "
          f"(status {r1.get('status')!r})")
    reason = r1.get("error", "")
    check("'migrate-cancel'" in reason and "CommandNotFound" in reason
          and re.search(r"QEMU (\d+\.\d+\.\d+|\(version unknown\))", reason),
          f"1: the reason names QEMU, its version and the command: {reason!r}")
    check(r1.get("alive") == [] and r1.get("live") is None,
          f"1: no VMM process is left after the failure (alive: {r1.get('alive')})")
    r2 = seen.get(("local-1G-dirtying", "qemu-default-bw"), {})
    check(r2.get("status") == "timeout" and "did not converge" in r2.get("error", ""),
          f"2: the run goes on; a real cancel works (status {r2.get('status')!r}: "
          f"{r2.get('error', '')!r})")
    check(r2.get("live") is not None, "2: after the cancel the source keeps the guest")
    check(r2.get("cancel") in ("migrate-cancel", "migrate_cancel"),
          f"2: migrate-cancel goes out as {r2.get('cancel')!r} to this QEMU")
    r3 = seen.get(("local-1G-paused", "qemu"), {})
    check(r3.get("status") == "ok", f"3: the next scenario gives a figure "
          f"(status {r3.get('status')!r} {r3.get('error', '')})")
    if hosts:
        r4 = seen.get((link_row.scenario, "qemu"), {})
        check(r4.get("status") == "ok", f"4: a migration across the namespaces works after "
              f"the failure (status {r4.get('status')!r} {r4.get('error', '')})")
        left = subprocess.run(["ip", "netns", "list"], capture_output=True,
                              text=True).stdout
        check(not any(n in left for n in ns), "the namespaces are gone")
    alive = [p.pid for p in vmms.STARTED if p.poll() is None]
    check(not alive, f"every VMM process started ({len(vmms.STARTED)}) has exited "
          f"(alive: {alive})")
    docs = os.path.join(tmp, "docs")
    report.write(results.path, docs)
    with open(os.path.join(docs, "benchmarks.md")) as f:
        page = f.read()
    check("**FAILED**" in page and "has no QMP command 'migrate-cancel'" in page
          and "Runs without a figure" in page and "refused on purpose" in page,
          "the page names the failure, its reason and the refusal")
    failed = [what for ok, what in checks if not ok]
    log(f"self-test {'PASSED' if not failed else 'FAILED'}: {len(checks) - len(failed)} of "
        f"{len(checks)} checks; results and page in {tmp}")
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
        log("(removed: they are kept only when a check fails)")
    return 1 if failed else 0


if __name__ == "__main__":
    main()
