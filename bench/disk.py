#!/usr/bin/env python3
"""Disks that migrate: godwit-vmm's virtio-blk against QEMU 7.2 and the
machine's own disk copy, in one run.

    bench/disk.py [--quick] [--reps N] [--build build-release] [--results DIR]

Rows:

  block (copying the image: QEMU's old block migration)
    max-bandwidth 10 GiB/s on both (their default, 128 MiB/s, would time
    the limit, not the copy); an idle guest (the boot-sector dirtier
    rewriting 64 KiB) with an image
    of 256 MiB or 1 GiB (--quick: 256 MiB) whose first half is random
    data and second half a hole, migrated over a unix socket to a VMM
    with an empty image of the same size:
      godwit-block   --drive ...,shared=off, migrate with blk
      qemu-block     -drive if=virtio, capability block
    and the machine's limit: reading the image and writing it into another
    file of the same file system with fdatasync, 4 MiB at a time.

  shared (both sides open the same image; only flushed at the switchover)
    the diskcheck guest writing a 16 MiB range of a 64 MiB image, 8
    requests in flight, through cache=writeback and cache=none: the
    downtime, and the part of it the fdatasync of the image took
    (x-godwit-disk-sync-us).

What one run records: total_ms (the source's total-time), downtime_ms
(the source's STOP event to the destination's RESUME event, QMP
timestamps, one host clock), the bytes of disk the stream carried, and
for shared rows the sync time. Results go to
bench/results/<date>-disk.jsonl; bench/report.py puts them in
docs/benchmarks.md ("Disks"). Python standard library only; needs root.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from qmp import QmpError, VmmError  # noqa: E402
from update import Tools, event_blackout_us, machine, start  # noqa: E402
from vmms import BOOTSECTOR_START, write_bootsector  # noqa: E402

MIB = 1 << 20
# Both VMMs default to QEMU's 128 MiB/s: the copy is timed at full speed.
UNLIMITED = 10 << 30


def make_image(path, size, data_bytes):
    """size bytes: data_bytes of random data, then a hole."""
    with open(path, "wb") as f:
        left = data_bytes
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
        f.truncate(size)


def empty_image(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def copy_limit(src, dst, size):
    """The machine's own copy: read the image, write another file, sync."""
    t0 = time.monotonic()
    with open(src, "rb", buffering=0) as a, open(dst, "wb", buffering=0) as b:
        while True:
            chunk = a.read(4 * MIB)
            if not chunk:
                break
            b.write(chunk)
        os.fdatasync(b.fileno())
    return (time.monotonic() - t0) * 1000


def same(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            p, q = x.read(4 * MIB), y.read(4 * MIB)
            if p != q:
                return False
            if not p:
                return True


def finish(src, dst, src_img, dst_img, who):
    """The migration ended: its figures, once the guest ran on at the
    destination and the two images proved equal."""
    r = src.wait_migration(timeout=600)
    if r["status"] != "completed":
        raise VmmError(f"{who}: {r.get('error-desc')}")
    blackout = event_blackout_us(src, dst)
    dst.wait_passes(dst.passes() + 1)
    dst.qmp.cmd("stop")
    src.kill()
    time.sleep(0.2)
    if not same(src_img, dst_img):
        raise VmmError(f"{who}: the images differ after the migration")
    return {"total_ms": r["total-time"], "downtime_ms": blackout / 1000 if blackout else None,
            "disk_bytes": r.get("disk", {}).get("transferred")}


def godwit_block(tools, boot, size, d):
    src_img, dst_img = f"{d}/src.img", f"{d}/dst.img"
    make_image(src_img, size, size // 2)
    empty_image(dst_img, size)
    sock = f"{d}/mig.sock"
    base = [tools.godwit_vmm, "--bootsector", boot, "--memory", "256M"]
    src = start(base + ["--qmp", f"unix:{d}/src.qmp", "--serial", f"file:{d}/src.serial",
                        "--drive", f"file={src_img},cache=none,shared=off"], d, "src", "godwit src")
    dst = None
    try:
        src.wait_passes(1)
        dst = start(base + ["--qmp", f"unix:{d}/dst.qmp", "--serial", f"file:{d}/dst.serial",
                            "--drive", f"file={dst_img},cache=none,shared=off",
                            "--incoming", "unix:" + sock], d, "dst", "godwit dst")
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": UNLIMITED})
        src.qmp.cmd("migrate", uri="unix:" + sock, blk=True)
        return finish(src, dst, src_img, dst_img, "godwit")
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_argv(qemu, boot, img, d, name, incoming=False):
    return [qemu, "-accel", "kvm", "-m", "256", "-display", "none", "-nodefaults",
            "-no-user-config", "-serial", f"file:{d}/{name}.serial",
            "-drive", f"file={boot},format=raw,if=ide",
            "-drive", f"file={img},format=raw,if=virtio,cache=none",
            "-qmp", f"unix:{d}/{name}.qmp,server=on,wait=off"] + \
        (["-incoming", "defer"] if incoming else [])


def qemu_block(tools, boot, size, d):
    src_img, dst_img = f"{d}/src.img", f"{d}/dst.img"
    # QEMU copies every writable drive: each side boots from a copy of its
    # own, in whole MiB (its block migration's chunk; a 512-byte image fails
    # the load on the destination).
    for side in ("src", "dst"):
        shutil.copy(boot, f"{d}/{side}-boot.bin")
        os.truncate(f"{d}/{side}-boot.bin", MIB)
    make_image(src_img, size, size // 2)
    empty_image(dst_img, size)
    sock = f"{d}/mig.sock"
    src = start(qemu_argv(tools.qemu, f"{d}/src-boot.bin", src_img, d, "src"), d, "src",
                "QEMU src")
    dst = None
    try:
        src.wait_passes(1)
        dst = start(qemu_argv(tools.qemu, f"{d}/dst-boot.bin", dst_img, d, "dst",
                              incoming=True), d, "dst", "QEMU dst")
        dst.qmp.cmd("migrate-incoming", uri="unix:" + sock)
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "block", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": UNLIMITED})
        time.sleep(0.1)
        src.qmp.cmd("migrate", uri="unix:" + sock)
        return finish(src, dst, src_img, dst_img, "QEMU")
    finally:
        src.kill()
        if dst:
            dst.kill()


def godwit_shared(tools, cache, d):
    img = f"{d}/shared.img"
    empty_image(img, 64 * MIB)
    sock = f"{d}/mig.sock"
    base = [tools.godwit_vmm, "--kernel", tools.diskcheck, "--memory", "64M",
            "--drive", f"file={img},cache={cache}"]
    src = start(base + ["--append", "blocks=4096 depth=8 flush=0", "--qmp",
                        f"unix:{d}/src.qmp", "--serial", f"file:{d}/src.serial"], d, "src",
                "godwit src")
    dst = None
    try:
        time.sleep(1.0)  # the guest writes its first blocks
        dst = start(base + ["--qmp", f"unix:{d}/dst.qmp", "--serial", f"file:{d}/dst.serial",
                            "--incoming", "unix:" + sock], d, "dst", "godwit dst")
        src.qmp.cmd("migrate", uri="unix:" + sock)
        r = src.wait_migration(timeout=120)
        if r["status"] != "completed":
            raise VmmError(f"godwit: {r.get('error-desc')}")
        blackout = event_blackout_us(src, dst)
        return {"total_ms": r["total-time"], "downtime_ms": blackout / 1000 if blackout else None,
                "vmm_downtime_us": r["x-godwit-downtime-us"],
                "sync_us": r["x-godwit-disk-sync-us"]}
    finally:
        src.kill()
        if dst:
            dst.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB only, 3 runs")
    ap.add_argument("--reps", type=int, help="runs per row (default: 3 quick, 5 full)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    tools = Tools(args.build)
    tools.diskcheck = os.path.join(args.build, "guests", "diskcheck.elf")
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = os.path.join(args.results, f"{stamp}-disk{'-quick' if args.quick else ''}.jsonl")
    sizes = [256] if args.quick else [256, 1024]
    with open(path, "w") as out:
        def put(rec):
            out.write(json.dumps(rec) + "\n")
            out.flush()
        put(machine(tools, "bench/disk.py" + " ".join([""] + sys.argv[1:])))
        with tempfile.TemporaryDirectory(prefix="gw-bench-disk-", dir="/var/tmp") as d:
            boot = f"{d}/boot.bin"
            write_bootsector(tools.bootsector, boot, BOOTSECTOR_START + (64 << 10))
            for mib in sizes:
                for rep in range(reps):
                    a, b = f"{d}/limit-a.img", f"{d}/limit-b.img"
                    make_image(a, mib * MIB, mib * MIB // 2)
                    put({"type": "disk-limit", "image_mib": mib, "rep": rep,
                         "copy_ms": copy_limit(a, b, mib * MIB)})
                    os.unlink(a)
                    os.unlink(b)
                    for variant, run in (("godwit-block", godwit_block),
                                         ("qemu-block", qemu_block)):
                        rd = tempfile.mkdtemp(dir=d)
                        rec = {"type": "disk", "kind": "block", "image_mib": mib,
                               "variant": variant, "rep": rep}
                        try:
                            rec.update(run(tools, boot, mib * MIB, rd), ok=True)
                        except (VmmError, QmpError, OSError) as e:
                            rec.update(ok=False, error=str(e)[:400])
                        shutil.rmtree(rd, ignore_errors=True)
                        put(rec)
                        print(rec, flush=True)
            for cache in ("writeback", "none"):
                for rep in range(reps):
                    rd = tempfile.mkdtemp(dir=d)
                    rec = {"type": "disk", "kind": "shared", "cache": cache,
                           "variant": "godwit-shared", "rep": rep}
                    try:
                        rec.update(godwit_shared(tools, cache, rd), ok=True)
                    except (VmmError, QmpError, OSError) as e:
                        rec.update(ok=False, error=str(e)[:400])
                    shutil.rmtree(rd, ignore_errors=True)
                    put(rec)
                    print(rec, flush=True)
        put({"type": "end", "loadavg_end": os.getloadavg()[0]})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
