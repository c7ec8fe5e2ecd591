#!/usr/bin/env python3
"""A virtio-blk disk's own speed: the guest's requests per second, the
device's, and fio's on the same image, at queue depth 1 and 32, for each
I/O engine (aio=threads, aio=io_uring), in one run.

    bench/diskio.py [--quick] [--reps N] [--build build-release] [--results DIR]

Every row is 4 KiB random reads or writes over a 256 MiB image of random
data, cache=none (O_DIRECT), for 2 s:

  fio          fio --ioengine=io_uring --direct=1 on the image: the disk's
               limit for that depth, the ceiling of every row below;
  device       gw-bench-blkdev (bench/blkdev/): godwit-vmm's virtio-blk
               device and its engine, driven from a host thread through the
               same MMIO registers and virtqueue a guest uses: what a guest
               whose driver ran at host speed would get; also 64 KiB rows
               for MB/s, and the device's CPU per request (the process's
               CPU time less the driver thread's);
  guest        the diskcheck guest in load mode (guests/README.md):
               godwit-vmm with the drive, the guest sending the requests;
               timed from its first to its last pass as the host sees them
               (polling x-godwit-query-guest every 2 ms). The vCPUs of this
               machine are emulated, so the guest's own instructions bound
               this row; it is reported as it is.

The rows run interleaved, rep after rep, so a noisy minute touches every
variant alike. Results go to bench/results/<date>-diskio.jsonl;
bench/report.py puts them in docs/benchmarks.md ("Disk throughput").
Python standard library only; needs root and fio (apt-get install fio).
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from qmp import QmpError, VmmError  # noqa: E402
from update import Tools, machine, start  # noqa: E402

MIB = 1 << 20
IMAGE_MIB = 256
SECONDS = 2
ENGINES = ("threads", "io_uring")
RWS = ("randread", "randwrite")
DEPTHS = (1, 32)


def make_image(path):
    with open(path, "wb") as f:
        for _ in range(IMAGE_MIB // 4):
            f.write(os.urandom(4 * MIB))
        os.fdatasync(f.fileno())


def fio(image, rw, bs, depth):
    out = subprocess.run(
        ["fio", "--name=gw", f"--filename={image}", f"--rw={rw}", f"--bs={bs}",
         f"--iodepth={depth}", "--ioengine=io_uring", "--direct=1", f"--runtime={SECONDS}",
         "--time_based", "--output-format=json"],
        capture_output=True, text=True, check=True).stdout
    job = json.loads(out)["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    return {"iops": iops, "mbps": iops * bs / 1e6}


def device(tools, image, aio, rw, bs, depth):
    out = subprocess.run(
        [tools.blkdev, "--file", image, "--aio", aio, "--cache", "none", "--rw", rw,
         "--bs", str(bs), "--depth", str(depth), "--seconds", str(SECONDS)],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


def guest(tools, image, aio, rw, depth, d):
    """The diskcheck guest sending 4 KiB requests: passes of `ops` each,
    timed from the end of the first to the end of the last."""
    ops, passes = (1000, 6) if depth == 1 else (2000, 6)
    argv = [tools.godwit_vmm, "--kernel", tools.diskcheck, "--memory", "64M",
            "--drive", f"file={image},cache=none,aio={aio}",
            "--append", f"load={'write' if rw == 'randwrite' else 'read'} ops={ops} "
                        f"depth={depth} passes={passes} blocks={IMAGE_MIB * MIB // 4096}",
            "--qmp", f"unix:{d}/g.qmp", "--serial", f"file:{d}/g.serial"]
    vm = start(argv, d, "g", "godwit-vmm")
    try:
        seen, t_first = 0, None
        deadline = time.monotonic() + 120
        while seen < passes:
            if time.monotonic() > deadline:
                raise VmmError(f"the guest made {seen} of {passes} passes")
            try:
                g = vm.qmp.cmd("x-godwit-query-guest")
            except (QmpError, VmmError, OSError):
                break  # it exited after its last pass
            p = g["vcpus"][0]["pass"]
            if p >= 1 and t_first is None:
                t_first, first = time.monotonic(), p
            if p > seen:
                seen, t_last = p, time.monotonic()
            time.sleep(0.002)
        if t_first is None or seen <= first:
            raise VmmError("too few passes seen to time")
        n = (seen - first) * ops
        secs = t_last - t_first
        return {"requests": n, "seconds": secs, "iops": n / secs, "mbps": n * 4096 / secs / 1e6}
    finally:
        vm.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run per row")
    ap.add_argument("--reps", type=int, help="runs per row (default: 1 quick, 3 full)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    if not shutil.which("fio"):
        sys.exit("fio is not installed (apt-get install fio)")
    tools = Tools(args.build)
    tools.diskcheck = os.path.join(args.build, "guests", "diskcheck.elf")
    tools.blkdev = os.path.join(args.build, "bench", "blkdev", "gw-bench-blkdev")
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(args.results, f"{stamp}-diskio{'-quick' if args.quick else ''}.jsonl")
    with open(path, "w") as out, \
            tempfile.TemporaryDirectory(prefix="gw-bench-diskio-", dir="/var/tmp") as d:
        def put(rec):
            out.write(json.dumps(rec) + "\n")
            out.flush()
            print(rec, flush=True)
        put(machine(tools, "bench/diskio.py" + " ".join([""] + sys.argv[1:])))
        image = f"{d}/disk.img"
        make_image(image)
        for rep in range(reps):
            for depth in DEPTHS:
                for rw in RWS:
                    rows = [("fio", None, 4096), ("fio", None, 65536)]
                    rows += [("device", aio, bs) for aio in ENGINES for bs in (4096, 65536)]
                    rows += [("guest", aio, 4096) for aio in ENGINES]
                    for who, aio, bs in rows:
                        rec = {"type": "diskio", "who": who, "aio": aio, "rw": rw, "bs": bs,
                               "depth": depth, "rep": rep}
                        try:
                            if who == "fio":
                                rec.update(fio(image, rw, bs, depth))
                            elif who == "device":
                                rec.update(device(tools, image, aio, rw, bs, depth))
                            else:
                                rd = tempfile.mkdtemp(dir=d)
                                rec.update(guest(tools, image, aio, rw, depth, rd))
                                shutil.rmtree(rd, ignore_errors=True)
                            rec["ok"] = True
                        except (VmmError, QmpError, OSError, subprocess.SubprocessError,
                                ValueError, KeyError) as e:
                            rec.update(ok=False, error=str(e)[:400])
                        put(rec)
        put({"type": "end", "loadavg_end": os.getloadavg()[0]})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
