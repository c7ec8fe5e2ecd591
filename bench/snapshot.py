"""Snapshot files: save a guest into a file and restore it, measured and
verified, godwit's mapped-ram files against QEMU's stream file.

The guest is the boot-sector dirtier of the migration rows, booted once
per VMM and guest shape; each run saves it (stopped, or running: a live
save), lets it go on (`cont`), and restores the file into a fresh
process, whose memory is checked page by page as after a migration
(migration.check_pages).

What one run measures (CLOCK_REALTIME of this host):

  save_ms      `migrate file:...` (godwit) or `migrate exec:cat > FILE`
               (QEMU 7.2 has no mapped-ram) -> the source's "completed".
               godwit's mapped-ram save includes its fdatasyncs; QEMU's
               `cat` returns once the data is in the page cache
  file_bytes   the file's size; alloc_bytes its st_blocks x 512
  restore_ms   `migrate-incoming` -> the destination's "completed" (the
               guest may run from there), with the file dropped from the
               page cache first (posix_fadvise DONTNEED after fsync), so
               the restore reads the disk
  data_bytes   the guest's touched RAM: the bytes a save has to write

The disk limits (bench/src/disk.c, O_DIRECT, 1 and 4 threads) are
measured in the same run by run.py; report.py sets the save and restore
throughput (data_bytes / time) against them.
"""
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from migration import check_pages
from qmp import QmpError, VmmError
from vmms import BOOTSECTOR_START, Vm, write_bootsector

MIB = 1 << 20


@dataclass(frozen=True)
class SnapVariant:
    name: str
    vmm: str
    mapped: bool = False
    direct_io: bool = False
    writers: int = 1
    background: bool = False  # capability background-snapshot: the guest at the command


SNAP_VARIANTS = {v.name: v for v in (
    SnapVariant("godwit-mapped-1", "godwit", mapped=True, writers=1),
    SnapVariant("godwit-mapped-2", "godwit", mapped=True, writers=2),
    SnapVariant("godwit-mapped-4", "godwit", mapped=True, writers=4),
    SnapVariant("godwit-mapped-dio-1", "godwit", mapped=True, direct_io=True, writers=1),
    SnapVariant("godwit-mapped-dio-4", "godwit", mapped=True, direct_io=True, writers=4),
    SnapVariant("godwit-stream", "godwit"),
    SnapVariant("qemu-stream", "qemu"),
    SnapVariant("godwit-live-stream", "godwit", background=True),
    SnapVariant("godwit-live-mapped-2", "godwit", mapped=True, writers=2, background=True),
    SnapVariant("godwit-live-mapped-dio-4", "godwit", mapped=True, direct_io=True, writers=4,
                background=True),
    SnapVariant("qemu-live", "qemu", background=True),
)}
LIVE_VARIANTS = [n for n, v in SNAP_VARIANTS.items() if v.background]


@dataclass(frozen=True)
class SnapRow:
    memory_mib: int
    touched_mib: int
    running: bool
    variant: str

    @property
    def scenario(self):
        return (f"snapshot-{self.memory_mib // 1024}G-{self.touched_mib}M-"
                f"{'running' if self.running else 'stopped'}")


def plan_live(quick):
    """Background snapshots of a running guest against the stopped save of
    the same guest and QEMU's background-snapshot, in one run."""
    shapes = [(1024, 100)] if quick else [(1024, 100), (4096, 100), (4096, 1024)]
    stopped = ["godwit-stream", "godwit-mapped-dio-4", "qemu-stream"]
    return [SnapRow(m, t, False, v) for m, t in shapes for v in stopped] + \
        [SnapRow(m, t, True, v) for m, t in shapes for v in LIVE_VARIANTS]


def plan(quick):
    if quick:
        shapes = [(1024, 100)]
        variants = ["godwit-mapped-1", "godwit-mapped-dio-4", "godwit-stream", "qemu-stream"]
    else:
        shapes = [(4096, 100), (4096, 1024)]
        variants = list(SNAP_VARIANTS)
    return [SnapRow(m, t, running, v) for m, t in shapes for running in (False, True)
            for v in variants]


def _drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _wait_final(vm, timeout):
    deadline = time.monotonic() + timeout
    while True:
        r = vm.qmp.cmd("query-migrate")
        if r.get("status") in ("completed", "failed", "cancelled"):
            return r
        if time.monotonic() > deadline:
            raise VmmError(f"{vm.label}: no final migration status in {timeout} s: {r}")
        time.sleep(0.002)


class Guest:
    """One booted guest of one VMM kind, saved and restored again and again."""

    def __init__(self, vmm, memory_mib, touched_mib, tools):
        self.vmm, self.memory_mib, self.tools = vmm, memory_mib, tools
        self.end = BOOTSECTOR_START + touched_mib * MIB
        self.workdir = tempfile.mkdtemp(prefix=f"gw-bench-snap-{vmm}-",
                                        dir=os.path.join(tools.build_dir, "bench"))
        self.image = os.path.join(self.workdir, "guest.img")
        write_bootsector(tools.bootsector, self.image, self.end)
        self.n = 0
        self.background_set = False
        self.live = self._start(False)
        self.live.wait_passes(2, timeout=180)
        self.retired = 0

    def _start(self, incoming):
        self.n += 1
        return Vm(self.vmm, self.tools, self.workdir, f"snap{self.n}", self.image,
                  self.memory_mib, incoming=incoming)

    def close(self):
        if self.live:
            self.live.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, v, running, timeout=120):
        src = self.live
        path = os.path.join(self.workdir, "snapshot.bin")
        if os.path.exists(path):
            os.unlink(path)
        if not running:
            src.qmp.cmd("stop")
        caps = [{"capability": "mapped-ram", "state": v.mapped}] if v.vmm == "godwit" else []
        if v.background or v.vmm == "godwit" or self.background_set:
            caps.append({"capability": "background-snapshot", "state": v.background})
            self.background_set = v.background
        if caps:
            src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        params = {"max-bandwidth": 100 * 10**9}
        if v.mapped:
            params.update({"direct-io": v.direct_io, "multifd-channels": v.writers})
        src.qmp.cmd("migrate-set-parameters", **params)
        uri = f"file:{path}" if v.vmm == "godwit" else f"exec:cat > {path}"
        lo = src.passes()
        t0 = time.time()
        src.qmp.cmd("migrate", uri=uri)
        if v.background:
            # The instant lies between the command and the first poll that
            # sees the save past its set-up: the passes the guest had done
            # by then bound what the file may hold.
            while src.qmp.cmd("query-migrate").get("status") == "setup":
                time.sleep(0.001)
            hi = src.passes()
        info = _wait_final(src, timeout)
        save_ms = (time.time() - t0) * 1e3
        if info["status"] != "completed":
            return {"status": "failed", "error": f"save: {info.get('error-desc', info)}"}
        st = os.stat(path)
        res = {"save_ms": save_ms, "file_bytes": st.st_size, "alloc_bytes": st.st_blocks * 512,
               "data_bytes": self.end - BOOTSECTOR_START,
               "rounds": (info.get("ram") or {}).get("dirty-sync-count"),
               "downtime_ms": info.get("downtime")}
        for k in ("x-godwit-pause-us", "x-godwit-wp-faults", "x-godwit-wp-max-wait-us"):
            if k in info:
                res[k[len("x-godwit-"):].replace("-", "_")] = info[k]
        passes = src.passes()
        # The source goes on; the file holds it as it was at the save (a
        # background snapshot: at the command, and the guest never stopped).
        if v.background:
            res["running_after"] = src.qmp.cmd("query-status")["status"] == "running"
            candidates = range(lo, hi + 2)
        else:
            candidates = [passes]
            src.qmp.cmd("cont")
        _drop_cache(path)
        dst = self._start(True)
        try:
            if v.mapped:
                dst.qmp.cmd("migrate-set-parameters", **{"direct-io": v.direct_io,
                                                         "multifd-channels": v.writers})
            t0 = time.time()
            dst.qmp.cmd("migrate-incoming",
                        uri=f"file:{path}" if v.vmm == "godwit" else f"exec:cat {path}")
            d = _wait_final(dst, timeout)
            res["restore_ms"] = (time.time() - t0) * 1e3
            if d["status"] != "completed":
                return {**res, "status": "failed",
                        "error": f"restore: {d.get('error-desc', d)}"}
            dst.qmp.cmd("stop")
            dump = os.path.join(self.workdir, "restored.mem")
            dst.qmp.cmd("pmemsave", {"val": BOOTSECTOR_START, "size": self.end - BOOTSECTOR_START,
                                     "filename": dump})
            # A restored running guest goes on at once: the passes it made
            # on the destination before the stop count too.
            done_here = dst.passes()
            problems = [check_pages(dump, self.end, p + done_here) for p in candidates]
            problem = None if None in problems else problems[0]
            if problem and v.background:
                problem = (f"not the guest at the command (passes {lo}..{hi + 1} then): "
                           + problem)
            os.unlink(dump)
        finally:
            dst.close()
        os.unlink(path)
        if problem:
            return {**res, "status": "failed", "error": "memory check: " + problem}
        return {**res, "status": "ok"}


def run_rows(rows, reps, tools, results, log):
    by_guest = {}
    for r in rows:
        by_guest.setdefault((SNAP_VARIANTS[r.variant].vmm, r.memory_mib, r.touched_mib),
                            []).append(r)
    for (vmm, mem, touched), group in sorted(by_guest.items(), key=lambda kv: kv[0][1:]):
        guest = None
        try:
            guest = Guest(vmm, mem, touched, tools)
            for rep in range(reps):
                for row in group:
                    v = SNAP_VARIANTS[row.variant]
                    base = {"type": "snapshot", "rep": rep, "scenario": row.scenario,
                            "variant": row.variant, "vmm": vmm, "memory_mib": mem,
                            "touched_mib": touched, "running": row.running,
                            "mapped": v.mapped, "direct_io": v.direct_io, "writers": v.writers}
                    t = time.monotonic()
                    try:
                        res = guest.run(v, row.running)
                    except (VmmError, QmpError, OSError) as e:
                        res = {"status": "failed", "error": str(e) or type(e).__name__}
                        guest.close()
                        guest = Guest(vmm, mem, touched, tools)
                    res["wall_s"] = round(time.monotonic() - t, 2)
                    results.add({**base, **res})
                    if res["status"] == "ok":
                        log(f"  {row.scenario:32} {row.variant:20} run {rep + 1}: save "
                            f"{res['save_ms']:.0f} ms, restore {res['restore_ms']:.0f} ms, "
                            f"file {res['alloc_bytes'] / MIB:.0f} MiB allocated")
                    else:
                        log(f"  {row.scenario:32} {row.variant:20} run {rep + 1}: FAILED: "
                            f"{res['error']}")
        except (VmmError, QmpError, OSError) as e:
            for row in group:
                results.add({"type": "snapshot", "rep": 0, "scenario": row.scenario,
                             "variant": row.variant, "vmm": vmm, "status": "failed",
                             "error": f"cannot boot the guest: {e}"})
            log(f"  snapshot guest {vmm} {mem} MiB: FAILED: {e}")
        finally:
            if guest:
                guest.close()
