#!/usr/bin/env python3
"""Lazy restore of a mapped-ram file against a full one: how soon the
guest runs, and how fast the page server fills RAM in each of its modes.

    bench/lazy.py [--sizes 1024,4096] [--reps N] [--build build-release] [--results DIR]

For each guest size (godwit-vmm --memory, MiB), a dirtier guest that has
written half of its RAM once is stopped and saved into a mapped-ram file
(its pages in the page cache: the restores below read from memory, not
from the disk). Then, each from the same file, into a fresh godwit-vmm:

  full            migrate-incoming with mapped-ram: RAM is read whole,
                  then the guest may run
  lazy            with x-godwit-lazy-restore (fill `continue`): the guest
                  may run once its sections are in, RAM arrives behind it
  fill-continue   lazy, with the guest left paused, so the background
  fill-copy       alone fills RAM: MINOR faults + a second mapping +
                  UFFDIO_CONTINUE against MISSING + UFFDIO_COPY

What one run records:
  running_ms    migrate-incoming sent until the guest runs: the restore
                lets go of it (query-status leaves inmigrate, polled every
                millisecond; the guest was saved stopped, so it is then
                paused) and `cont` returned (full and lazy)
  completed_ms  the restore's total-time from query-migrate, at completed
  fill_mib_s    the file's pages over completed_ms (the fill rows)
  lazy          the x-godwit-lazy figures at completion (pages faulted,
                background pages, fault latency mean and max)

Results go to bench/results/<date>-lazy.jsonl. Python standard library
only; needs root (KVM and userfaultfd).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from qmp import Qmp, QmpError  # noqa: E402

MIB = 1 << 20
VARIANTS = ("full", "lazy", "fill-continue", "fill-copy")


class Vmm:
    """One godwit-vmm with a QMP socket in its own directory, in network
    namespace ns if given (bench/tls.py)."""

    def __init__(self, build, d, name, memory_mib, extra, ns=None):
        self.sock = os.path.join(d, name + ".sock")
        self.log = open(os.path.join(d, name + ".log"), "w")
        argv = [os.path.join(build, "vmm", "godwit-vmm"), "--memory", f"{memory_mib}M",
                "--vcpus", "2", "--kernel", os.path.join(build, "guests", "dirtier.elf"),
                "--serial", "file:" + os.path.join(d, name + ".serial"),
                "--qmp", "unix:" + self.sock] + extra
        if ns:
            argv = ["ip", "netns", "exec", ns] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.qmp = Qmp(self.sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"{name}: godwit-vmm did not come up")
                time.sleep(0.01)

    def cmd(self, name, **args):
        return self.qmp.cmd(name, **args)

    def wait_migration(self, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.cmd("query-migrate")
            if r.get("status") in ("completed", "failed", "cancelled"):
                return r
            time.sleep(0.005)
        raise RuntimeError("migration did not end")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def passes(vm):
    return min(v["pass"] for v in vm.cmd("x-godwit-query-guest")["vcpus"])


def save(build, d, mem):
    """A dirtier that wrote half of RAM once, saved stopped: the file."""
    src = Vmm(build, d, "src", mem, ["--append", f"end={mem // 2}M"])
    try:
        deadline = time.monotonic() + 600
        while passes(src) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the source guest made no pass")
            time.sleep(0.05)
        src.cmd("stop")
        src.cmd("migrate-set-capabilities",
                capabilities=[{"capability": "mapped-ram", "state": True}])
        path = os.path.join(d, "guest.gwm")
        src.cmd("migrate", uri="file:" + path)
        r = src.wait_migration()
        if r["status"] != "completed":
            raise RuntimeError(f"save: {r}")
        return path
    finally:
        src.kill()


def restore(build, d, mem, path, variant):
    lazy = variant != "full"
    fill_only = variant.startswith("fill-")
    dst = Vmm(build, d, variant, mem, ["--incoming", "defer"])
    try:
        caps = [{"capability": "mapped-ram", "state": True}]
        if lazy:
            caps.append({"capability": "x-godwit-lazy-restore", "state": True})
        dst.cmd("migrate-set-capabilities", capabilities=caps)
        if lazy:
            dst.cmd("migrate-set-parameters", **{
                "x-godwit-lazy-fill": "copy" if variant == "fill-copy" else "continue"})
        t0 = time.monotonic()
        dst.cmd("migrate-incoming", uri="file:" + path)
        rec = {}
        if not fill_only:
            # The guest was saved stopped: the restore lets go of it paused,
            # and `cont` runs it at once.
            while dst.cmd("query-status")["status"] == "inmigrate":
                if time.monotonic() - t0 > 600:
                    raise RuntimeError("the restore did not let go of the guest")
                time.sleep(0.001)
            dst.cmd("cont")
            rec["running_ms"] = round((time.monotonic() - t0) * 1000, 1)
            if dst.cmd("query-status")["status"] != "running":
                raise RuntimeError("the guest did not run")
        r = dst.wait_migration()
        if r["status"] != "completed":
            raise RuntimeError(f"restore: {r}")
        rec["completed_ms"] = r["total-time"]
        if lazy:
            rec["lazy"] = r["x-godwit-lazy"]
        if fill_only:
            pages = r["x-godwit-lazy"]["background-pages"] + r["x-godwit-lazy"]["pages-faulted"]
            rec["fill_mib_s"] = round(pages * 4096 / MIB / max(r["total-time"], 1) * 1000, 1)
        return rec
    finally:
        dst.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,4096", help="guest sizes in MiB")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(args.results, f"{stamp}-lazy.jsonl")
    out = open(path, "w")

    def put(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    put({"type": "machine", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
         "cpus": os.cpu_count(), "kernel": platform.release(), "godwit_commit": commit,
         "build": os.path.relpath(args.build, ROOT),
         "command": " ".join(["bench/lazy.py"] + sys.argv[1:]),
         "loadavg_start": os.getloadavg()[0]})
    for mem in (int(s) for s in args.sizes.split(",")):
        d = tempfile.mkdtemp(prefix="gw-bench-lazy-")
        try:
            f = save(args.build, d, mem)
            size = os.stat(f).st_size
            for rep in range(args.reps):
                for variant in VARIANTS:
                    rec = {"type": "lazy", "memory_mib": mem, "touched_mib": mem // 2,
                           "file_bytes": size, "variant": variant, "rep": rep}
                    try:
                        rec.update(restore(args.build, d, mem, f, variant))
                        rec["ok"] = True
                    except (RuntimeError, QmpError, OSError) as e:
                        rec.update(ok=False, error=str(e)[:500])
                    put(rec)
                    print(json.dumps(rec), flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    put({"type": "end", "loadavg_end": os.getloadavg()[0]})
    out.close()
    print(f"results: {path}")


if __name__ == "__main__":
    main()
