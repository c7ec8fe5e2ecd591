#!/usr/bin/env python3
"""What pause-before-switchover adds to a migration's downtime.

    bench/pause_switchover.py [--build build-release] [--runs 10]

Migrates a 128 MiB dirtier guest over loopback TCP back and forth,
alternating runs without and with the capability. With it, the
benchmark acts as the manager: it waits for the `pre-switchover` event
and answers `migrate-continue` at once, so the extra downtime is the
event's trip to the manager and the command's trip back. Reports, per
mode, the source's downtime (`x-godwit-downtime-us`) and, with the
capability, the manager's own view: the event's timestamp to the
continue's reply. Medians and ranges; a measure of one run, not a
threshold. One line per migration goes to
bench/results/<date>-pause.jsonl (docs/benchmarks.md, "pause-before-
switchover", via bench/report.py).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))


def spread(xs):
    xs = sorted(xs)
    return f"{statistics.median(xs):.0f} ({xs[0]:.0f}–{xs[-1]:.0f})"


def run(gwtest, runs, put):
    from qmp import event_time
    from gwtest import Vmm, dirtier, free_port, wait_migration
    down = {False: [], True: []}
    manager = []
    vm = dirtier(memory="128M", vcpus=2, append="end=32M")
    try:
        vm.wait_passes(1)
        for i in range(2 * runs):
            pause = bool(i % 2)
            port = free_port()
            dst = Vmm(kernel=gwtest.DIRTIER, memory="128M", vcpus=2,
                      extra=["--incoming", f"tcp:127.0.0.1:{port}"])
            vm.qmp.cmd("migrate-set-parameters", max_bandwidth=0)
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "events", "state": True},
                {"capability": "pause-before-switchover", "state": pause}])
            vm.qmp.events.clear()
            vm.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            answered_us = None
            if pause:
                ev = vm.qmp.wait_event("MIGRATION",
                                       lambda e: e["data"]["status"] == "pre-switchover",
                                       120)
                vm.qmp.cmd("migrate-continue", state="pre-switchover")
                answered_us = (time.time() - event_time(ev)) * 1e6
                manager.append(answered_us)
            s = wait_migration(vm, timeout=120)
            d = wait_migration(dst, timeout=120)
            if s["status"] != "completed" or d["status"] != "completed":
                dst.kill()
                raise SystemExit(f"migration failed: {s} {d}")
            down[pause].append(s["x-godwit-downtime-us"])
            put({"type": "pause", "pause": pause, "downtime_us": s["x-godwit-downtime-us"],
                 "manager_us": answered_us})
            vm.kill()
            vm = dst
    finally:
        vm.kill()
    return down, manager


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    a = ap.parse_args()
    os.environ["GODWIT_BUILD"] = os.path.abspath(a.build)
    import gwtest
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    os.makedirs(a.results, exist_ok=True)
    out = open(os.path.join(a.results, f"{stamp}-pause.jsonl"), "w")

    def put(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    put({"type": "machine", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
         "cpus": os.cpu_count(), "kernel": platform.release(), "godwit_commit": commit,
         "command": " ".join(["bench/pause_switchover.py"] + sys.argv[1:]),
         "loadavg_start": os.getloadavg()[0]})
    down, manager = run(gwtest, a.runs, put)
    print("| | downtime µs, median (range) |")
    print("|---|---|")
    print(f"| without pause-before-switchover | {spread(down[False])} |")
    print(f"| with it, manager answers at once | {spread(down[True])} |")
    print(f"| manager: event timestamp to continue's reply | {spread(manager)} |")
    print(f"\n{a.runs} runs each, 128 MiB guest dirtying 32 MiB, loopback TCP")
    print(f"results: {out.name}")


if __name__ == "__main__":
    main()
