#!/usr/bin/env python3
"""What TLS costs a migration: the same migrations with and without it,
in one run, over loopback and over the shaped 10 Gbit/s link.

    bench/tls.py [--build build-release] [--reps 3] [--results DIR]

Guests (godwit-vmm --memory 1024M, 2 vCPUs, the dirtier):
  written   the guest wrote all of its 1 GiB once and was stopped: the
            migration is one pass of 1 GiB of real pages, bound by how
            fast the channel carries them (the throughput figure)
  dirtying  the guest rewrites 101 MiB while it migrates (bench/run.py's
            dirtying workload): rounds, then a switchover (the downtime
            figure)
Variants: `plain`, and `tls` (tls-creds-x509 on both sides, mutual
authentication, certificates made with certtool at the start). The
record layer is GnuTLS's in user space: this kernel has no kernel TLS
(no "tls" in /proc/sys/net/ipv4/tcp_available_ulp), so there is no kTLS
row to measure. max-bandwidth is 10 GiB/s (no limit that matters),
downtime-limit QEMU's 300 ms.

The machine's limits in the same run: the plaintext TCP throughput of
one stream (gw-bench-net, loopback and across the link), and AES-GCM in
one core with 16 KiB records, the TLS record size (`openssl speed -evp`;
GnuTLS's default priority negotiates TLS 1.3 with AES-256-GCM here).

What one run records: total_ms (the source's total-time), downtime_ms
(x-godwit-downtime-us), transferred (ram.transferred) and mib_s
(transferred over total-time). Results go to
bench/results/<date>-tls.jsonl; bench/report.py adds them to
docs/benchmarks.md as the section "TLS". Needs root (KVM, namespaces).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import limits  # noqa: E402
from lazy import Vmm, passes  # noqa: E402
from netns import Hosts  # noqa: E402

MIB = 1 << 20
LINK = ("10gbit-0.2ms", 10e9, 0.2)
WORKLOADS = {"written": "end=1024M", "dirtying": "end=101M"}


def tls_creds(vm, endpoint, d):
    vm.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0", "dir": d,
                            "endpoint": endpoint})
    vm.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})


def one_migration(build, d, pki, workload, variant, hosts):
    """Source and destination, one migration; the figures of the source."""
    append = WORKLOADS[workload]
    ns = hosts.ns if hosts else (None, None)
    host = hosts.addr[1] if hosts else "127.0.0.1"
    port = limits_port()
    src = Vmm(build, d, "src", 1024, ["--append", append], ns[0])
    dst = None
    try:
        deadline = time.monotonic() + 60
        while passes(src) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the source guest made no pass")
            time.sleep(0.02)
        if workload == "written":
            src.cmd("stop")
        dst = Vmm(build, d, "dst", 1024, ["--incoming", "defer"], ns[1])
        if variant == "tls":
            tls_creds(src, "client", pki.endpoint_dir(f"src{port}"))
            # The test certificate names localhost and 127.0.0.1.
            src.cmd("migrate-set-parameters", **{"tls-hostname": "localhost"})
            tls_creds(dst, "server", pki.endpoint_dir(f"dst{port}", server="server"))
        dst.cmd("migrate-incoming", uri=f"tcp:{host}:{port}")
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 10 << 30})
        src.cmd("migrate", uri=f"tcp:{host}:{port}")
        r = src.wait_migration()
        dr = dst.wait_migration()
        ok = r["status"] == "completed" and dr["status"] == "completed"
        rec = {"ok": ok, "status": r["status"], "error": r.get("error-desc") or
               dr.get("error-desc")}
        if ok:
            t = r["total-time"]
            moved = r["ram"]["transferred"]
            rec.update(total_ms=t, downtime_ms=r["x-godwit-downtime-us"] / 1000,
                       transferred=moved, mib_s=moved / MIB / (t / 1000),
                       rounds=r["ram"]["dirty-sync-count"], record_layer=r.get("x-godwit-tls"))
        return rec
    finally:
        src.kill()
        if dst:
            dst.kill()


PORT = [47000 + os.getpid() % 1000]


def limits_port():
    PORT[0] += 1
    return PORT[0]


class Tools:
    """What limits.Limits needs of run.py's tools: ports."""

    @staticmethod
    def next_port():
        return limits_port()


def aes_gcm(bits):
    """Bytes/s of AES-GCM with 16 KiB buffers in one core (openssl)."""
    out = subprocess.run(["openssl", "speed", "-evp", f"aes-{bits}-gcm", "-bytes", "16384",
                          "-seconds", "2", "-mr"], capture_output=True, text=True,
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("+F:"))
    return float(line.split(":")[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", choices=("local", LINK[0]), help="one link's rows only")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    import test_tls  # certtool's certificates, as the e2e test makes them
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(a.results, f"{stamp}-tls.jsonl")
    progs = limits.build(build, names=("net", "wire"))
    out = open(path, "w")

    def add(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    with open("/proc/cpuinfo") as f:
        cpu = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "?")
    add({"type": "machine", "date": stamp, "command": " ".join(["bench/tls.py"] + sys.argv[1:]),
         "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
         "godwit_commit": commit, "loadavg_start": os.getloadavg()[0],
         "ktls": "tls" in open("/proc/sys/net/ipv4/tcp_available_ulp").read().split()})
    pki = test_tls.Pki()
    t0 = time.monotonic()
    try:
        for bits in (128, 256):
            add({"type": "tls-limit", "name": f"aes-{bits}-gcm", "bytes_s": aes_gcm(bits)})
        region = "256M"
        add({"type": "tls-limit", "name": "local-tcp-1",
             **limits._net(progs["net"], f"tcp:127.0.0.1:{limits_port()}", 1, 2, region)})
        with Hosts(progs["wire"]) as hosts, tempfile.TemporaryDirectory(prefix="gw-tls-") as d:
            hosts.set_link(LINK[1], LINK[2])
            add({"type": "tls-limit", "name": f"{LINK[0]}-tcp-1",
                 **limits._net(progs["net"], f"tcp:{hosts.addr[1]}:{limits_port()}", 1, 2,
                               region, hosts.ns[1], hosts.ns[0])})
            for link, h in (("local", None), (LINK[0], hosts)):
                if a.only and link != a.only:
                    continue
                for workload in WORKLOADS:
                    for rep in range(a.reps):
                        for variant in ("plain", "tls"):
                            rec = one_migration(build, d, pki, workload, variant, h)
                            rec.update(type="tls", link=link, workload=workload,
                                       variant=variant, rep=rep)
                            add(rec)
                            print(json.dumps(rec), flush=True)
    finally:
        pki.close()
        add({"type": "end", "elapsed_s": round(time.monotonic() - t0),
             "loadavg_end": os.getloadavg()[0]})
        out.close()
    print(path)


if __name__ == "__main__":
    main()
