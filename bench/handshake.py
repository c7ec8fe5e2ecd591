#!/usr/bin/env python3
"""What the switchover handshake costs, and how long a pause takes.

    bench/handshake.py [--build build-release] [--runs 20]

1. Migrates a 256 MiB dirtier guest over loopback TCP `--runs` times and
   reports, per run, the destination's `x-godwit-go-wait-us` (READY sent
   until GO received: the round trip the handshake adds to the downtime),
   the source's `x-godwit-handshake-us` (READY received until RUNNING
   received: that round trip plus the destination's resume) and the
   downtime; medians and spread as a Markdown table for bench/profile.md.
2. Times `stop` (QMP round trip; the reply comes once every vCPU has
   parked) with 1, 2 and 4 vCPUs: what a pause costs a switchover.

Run it on a quiet machine; like every figure here it is a measure of one
run, not a threshold.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))


def spread(xs):
    xs = sorted(xs)
    return f"{statistics.median(xs):.0f} ({xs[0]:.0f}–{xs[-1]:.0f})"


def handshake(gwtest, runs):
    from gwtest import Vmm, dirtier, free_port, wait_migration
    go, hs, down = [], [], []
    vm = dirtier(memory="256M", vcpus=2, append="end=64M")
    try:
        vm.wait_passes(1)
        for _ in range(runs):
            port = free_port()
            dst = Vmm(kernel=gwtest.DIRTIER, memory="256M", vcpus=2,
                      extra=["--incoming", f"tcp:127.0.0.1:{port}"])
            vm.qmp.cmd("migrate-set-parameters", max_bandwidth=0)
            vm.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            s = wait_migration(vm, timeout=120)
            d = wait_migration(dst, timeout=120)
            if s["status"] != "completed" or d["status"] != "completed":
                dst.kill()
                raise SystemExit(f"migration failed: {s} {d}")
            go.append(d["x-godwit-go-wait-us"])
            hs.append(s["x-godwit-handshake-us"])
            down.append(s["downtime"] * 1000)
            vm.kill()
            vm = dst
    finally:
        vm.kill()
    return go, hs, down


def pauses(gwtest, n=30):
    from gwtest import dirtier
    out = {}
    for vcpus in (1, 2, 4):
        with dirtier(memory="64M", vcpus=vcpus, append="end=16M") as vm:
            vm.wait_passes(1)
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                vm.qmp.cmd("stop")
                lat.append((time.perf_counter() - t0) * 1e6)
                vm.qmp.cmd("cont")
                time.sleep(0.02)
            out[vcpus] = lat
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build-release")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    os.environ["GODWIT_BUILD"] = os.path.abspath(os.path.join(ROOT, args.build))
    import gwtest
    go, hs, down = handshake(gwtest, args.runs)
    print(f"| {args.runs} migrations, 256 MiB dirtier, loopback TCP | median (min–max) |")
    print("|---|---|")
    print(f"| destination: READY sent → GO received (`x-godwit-go-wait-us`) | {spread(go)} µs |")
    print(f"| source: GO sent → RUNNING (`x-godwit-handshake-us`) | {spread(hs)} µs |")
    print(f"| downtime (source pause → RUNNING) | {spread(down)} µs |")
    print()
    print("| vCPUs | `stop` round trip, median (min–max) |")
    print("|---|---|")
    for vcpus, lat in pauses(gwtest).items():
        print(f"| {vcpus} | {spread(lat)} µs |")


if __name__ == "__main__":
    main()
