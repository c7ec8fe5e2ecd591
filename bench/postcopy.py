#!/usr/bin/env python3
"""Pre-copy against post-copy on the dirtying guest.

    bench/postcopy.py [--build build] [--runs 3]

Migrates the dirtier guest (bench/run.py's dirtying workload: a 256 MiB
guest rewriting 100 MiB as fast as it can, 2 vCPUs) over loopback TCP
back and forth, in turn a pre-copy migration (it switches over when the
rest fits the downtime limit) and post-copy ones (migrate-start-postcopy
once the first round is over), with the destination's background fetch
unlimited and at 4 MiB/s (then the guest's faults bring most pages). Per run it records the blackout
(the source's STOP event to the destination's RESUME event, each
stamped by its VMM on the host's clock), the total time (the source's
total-time), and for post-copy the destination's page server: pages
fetched for faults and in the background, fault latency mean and max.
One line per run into bench/results/<date>-postcopy.jsonl, and medians
on stdout: a measure of one machine, not a threshold.
"""
import argparse
import datetime
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))


def first_event(vm, name):
    from qmp import event_time
    for e in vm.qmp.events:
        if e["event"] == name:
            return event_time(e)
    raise SystemExit(f"no {name} event")


# The modes, in turn: pre-copy; post-copy with the background fetch at
# full speed; and with it at 4 MiB/s, so that the guest's own accesses
# fault most stale pages in and the fault path is what is measured.
MODES = (("precopy", False, 0), ("postcopy", True, 0), ("postcopy-bg4MiB", True, 4 << 20))


def one(gwtest, vm, mode):
    name, postcopy, fetch_rate = mode
    from gwtest import Vmm, free_port, wait_migration, wait_until
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = Vmm(kernel=gwtest.DIRTIER, memory=vm.memory, vcpus=vm.vcpus,
              extra=["--incoming", uri])
    caps = [{"capability": "events", "state": True},
            {"capability": "postcopy-ram", "state": postcopy}]
    for v in (vm, dst):
        v.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        v.qmp.events.clear()
    vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    dst.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": fetch_rate})
    vm.qmp.cmd("migrate", uri=uri)
    if postcopy:
        wait_until(lambda: vm.qmp.cmd("query-migrate").get("ram", {})
                   .get("dirty-sync-count", 0) >= 2, 120, "the first round")
        vm.qmp.cmd("migrate-start-postcopy")
    s = wait_migration(vm, timeout=300)
    d = wait_migration(dst, timeout=300)
    if s["status"] != "completed" or d["status"] != "completed":
        dst.kill()
        raise SystemExit(f"migration failed: {s} {d}")
    rec = {"mode": name,
           "blackout_ms": round((first_event(dst, "RESUME") - first_event(vm, "STOP")) * 1e3, 3),
           "total_ms": s["total-time"],
           "source_downtime_ms": s.get("downtime"),
           "dirty_sync_count": s["ram"]["dirty-sync-count"],
           "transferred": s["ram"]["transferred"]}
    if postcopy:
        pc = d["x-godwit-postcopy"]
        rec.update(postcopy_requests=s["ram"]["postcopy-requests"],
                   pages_faulted=pc["pages-faulted"], background_pages=pc["background-pages"],
                   fault_mean_us=pc["fault-latency-mean-us"],
                   fault_max_us=pc["fault-latency-max-us"])
    dst.wait_passes(1)
    if dst.guest()["check-failed"]:
        raise SystemExit("the guest's self-check failed at the destination")
    return rec, dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    os.environ["GODWIT_BUILD"] = os.path.abspath(a.build)
    import gwtest
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    out = os.path.join(ROOT, "bench", "results", f"{stamp}-postcopy.jsonl")
    recs = []
    vm = gwtest.dirtier(memory="256M", vcpus=2, append="end=100M")
    try:
        vm.wait_passes(1)
        for i in range(len(MODES) * a.runs):
            rec, dst = one(gwtest, vm, MODES[i % len(MODES)])
            rec["run"] = i // len(MODES)
            recs.append(rec)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            vm.kill()
            vm = dst
    finally:
        vm.kill()
    for mode, _, _ in MODES:
        rs = [r for r in recs if r["mode"] == mode]
        line = ", ".join(f"{k} {statistics.median(r[k] for r in rs)}"
                         for k in ("blackout_ms", "total_ms", "pages_faulted", "fault_mean_us",
                                   "fault_max_us") if k in rs[0])
        print(f"{mode}: medians of {len(rs)}: {line}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
