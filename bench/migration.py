"""Live migrations of the boot-sector guest, measured and verified.

The same code runs every row of every table, for QEMU and for godwit-vmm:
only the process command lines differ (vmms.py).

A guest is booted once per chain and then migrated again and again: each
migration goes from the process running the guest to a fresh destination
process, which runs it from then on. Booting costs QEMU's firmware ~15 s
under the emulation here; a chain pays it once instead of once per run,
and a guest that arrives intact after many hops is a check in itself.

What one migration measures, all on this host's CLOCK_REALTIME:

  total      `migrate` sent -> the later of the source's MIGRATION
             "completed" event and the guest running on the destination
             (its RESUME; for a paused guest, the destination's
             "completed")
  downtime   the source's STOP event -> the destination's RESUME event:
             what the guest sees, whatever either VMM reports about itself
  bytes      query-migrate ram.transferred on the source at the end
  rounds     ram.dirty-sync-count (dirty bitmap syncs, as each VMM counts)
  CPU        utime+stime of each process over the migration, minus its
             vCPU threads (the guest spins all the time on both VMMs)

A run counts only if the destination holds the guest's memory as it was:
the destination is stopped, [1 MiB, END) is saved with pmemsave, and every
page's first byte must agree with the number of passes the guest reported
on COM1 (check_pages). The check is the same for both VMMs. godwit's
x-godwit-verify-hash (the tests' whole-RAM hash comparison) stays off here:
the destination hashes all of its RAM before it resumes, which would be
counted as downtime. A run that fails a check is FAILED, never a time.

Failures: a hop that goes wrong in any way the VMMs can cause -- an error
reply, a command the VMM does not have, a migration that neither
converges nor can be cancelled, a VMM that dies or stops answering --
raises VmmError (tools/qmp.py). The hop kills every process of the chain
on its way out, so the next hop boots the guest afresh, and run.py
records the run as FAILED with the reason and goes on. Only set-up
refusals of what a row asks for (a capability or parameter the VMM does
not accept) make the row *unavailable* instead: those are features still
to come, not failures.
"""
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from qmp import QmpError, QmpTimeout, VmmError, event_time
from vmms import BOOTSECTOR_START, Vm, write_bootsector

MIB = 1 << 20
PAGE = 4096
FINAL = ("completed", "failed", "cancelled")
DOWNTIME_LIMIT_MS = 300
UNLIMITED = 100 * 10**9  # bytes/s: "no limit" spelled the same for both VMMs


@dataclass(frozen=True)
class Workload:
    name: str
    end: int                # the boot sector's END: it dirties [1 MiB, END)
    paused: bool = False    # `stop` the guest before migrating it


@dataclass(frozen=True)
class Variant:
    """How one VMM is configured for a row of a table."""
    name: str
    vmm: str                           # "godwit" or "qemu"
    max_bandwidth: int | None = UNLIMITED  # bytes/s; None: the VMM's default
    multifd: int = 0                   # channels; 0: one stream
    # Capability postcopy-ram on both sides and migrate-start-postcopy
    # once the first pass is over (libvirt's --postcopy-after-precopy).
    postcopy: bool = False
    # bytes/s of godwit's background fetch after the switch (its
    # destination's max-postcopy-bandwidth), so that the guest's faults
    # bring most pages and the fault path is what gets measured; 0: no
    # limit. QEMU's parameter of that name limits its source's stream,
    # requested pages included, so it has no variant with it.
    postcopy_fetch_rate: int = 0

    @property
    def downtime_limit_ms(self):
        # Post-copy variants: 1 ms, which pre-copy cannot meet, so that it
        # never switches over by itself before migrate-start-postcopy (at
        # 300 ms both VMMs finish the 100 MiB guest in pre-copy within
        # 2-3 rounds, before a poll sees the first pass end).
        return 1 if self.postcopy else DOWNTIME_LIMIT_MS


@dataclass(frozen=True)
class Link:
    name: str
    rate_bps: float = 0     # 0: the loopback device, no wire
    rtt_ms: float = 0

    @property
    def local(self):
        return self.rate_bps == 0


class Unavailable(Exception):
    """The VMM does not accept a capability or parameter the row asks for
    (e.g. multifd): the row says so instead of showing a time."""


class CancelFailed(VmmError):
    """A migration that did not converge in time could not be cancelled:
    the scenario fails (and is not repeated: it would fail again, after
    the same wait)."""


def _status(ev):
    """The status of a MIGRATION event; None if it has none."""
    data = ev.get("data")
    return data.get("status") if isinstance(data, dict) else None


def _event(qmp, name, pred=None, timeout=30.0):
    """The event, or None if it does not come in time: a missing event is a
    measurement the run records as failed (or does without), not a VMM
    failure that ends the hop."""
    try:
        return qmp.wait_event(name, pred, timeout)
    except QmpTimeout:
        return None


def check_pages(path, end, passes):
    """The guest increments the first byte of every page of [1 MiB, END)
    in order, pass after pass, and writes 'B' after each pass. After
    `passes` 'B's, somewhere in the next pass, the pages before its
    position hold passes+1 and the rest hold passes (mod 256); either part
    may be empty. A page that arrived stale, or not at all, breaks that
    picture. Returns None, or what is wrong."""
    with open(path, "rb") as f:
        data = f.read()
    firsts = data[::PAGE]
    npages = (end - BOOTSECTOR_START) // PAGE
    if len(firsts) != npages:
        return f"pmemsave gave {len(data)} bytes, expected {npages} pages"
    ahead, behind = (passes + 1) & 0xFF, passes & 0xFF
    k = len(firsts) - len(firsts.lstrip(bytes([ahead])))
    for i in range(k, len(firsts)):
        if firsts[i] != behind:
            addr = BOOTSECTOR_START + i * PAGE
            return (f"page 0x{addr:x} holds {firsts[i]}, expected {behind} "
                    f"(the guest reported {passes} passes; {k} pages already at {ahead})")
    return None


class Chain:
    """One guest on one VMM kind, hopping from process to process.

    hosts: the two-namespace setup (netns.Hosts) or None, in which case
    every process runs in the current namespace and only local links work.
    """

    def __init__(self, vmm, memory_mib, end, tools, hosts, refuse=None):
        self.vmm, self.memory_mib, self.end = vmm, memory_mib, end
        self.tools, self.hosts = tools, hosts
        # variant name -> commands its hops treat as absent from the VMM
        # (run.py --refuse): for proving that a failure fails one scenario.
        self.refuse = refuse or {}
        self.workdir = tempfile.mkdtemp(prefix=f"gw-bench-{vmm}-")
        self.image = os.path.join(self.workdir, "guest.img")
        write_bootsector(tools.bootsector, self.image, end)
        self.live = None        # the Vm running the guest
        self.side = 0           # which namespace it is in
        self.retired_passes = 0  # passes made by processes already gone
        self.hops = 0
        self.started = 0        # processes started: each gets its own files
        self.caps = {}          # capabilities the live process has on
        self.default_bandwidth = None

    def close(self):
        if self.live:
            self.live.close()
            self.live = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def abandon(self):
        """After a failure: kill the process running the guest, whatever
        state it is in; the next hop boots afresh."""
        if self.live:
            self.live.kill()
            self.live = None

    def _ns(self, side):
        return self.hosts.ns[side] if self.hosts else None

    def _start(self, name, side, incoming):
        return Vm(self.vmm, self.tools, self.workdir, name, self.image, self.memory_mib,
                  incoming=incoming, netns=self._ns(side))

    def _boot(self):
        if self.vmm == "godwit" and not self.tools.godwit_vmm_ok:
            raise Unavailable(self.tools.godwit_vmm_why)
        self.started += 1
        self.live = self._start(f"vm{self.started}", 0, incoming=False)
        self.side, self.retired_passes, self.hops, self.caps = 0, 0, 0, {}
        # The first pass takes the page faults of the whole range.
        self.live.wait_passes(2, timeout=120)
        try:
            params = self.live.qmp.cmd("query-migrate-parameters")
            self.default_bandwidth = (params.get("max-bandwidth")
                                      if isinstance(params, dict) else None)
        except QmpError:
            self.default_bandwidth = None

    def _reset(self):
        if self.live:
            self.live.close()
            self.live = None

    def passes(self, *vms):
        return self.retired_passes + sum(vm.passes() for vm in vms)

    def _set_caps(self, vm, want, current):
        """Turn on `want`, turn off what `current` has on and `want` does
        not (a source that failed a migration keeps its settings)."""
        changes = {c: True for c in want if not current.get(c)}
        changes.update({c: False for c, on in current.items() if on and c not in want})
        if changes:
            vm.qmp.cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": s} for c, s in changes.items()]})
            current.update(changes)

    def migrate(self, variant, link, paused, auto_converge, converge_timeout, sample):
        """One hop. Returns a result dict whose "status" is "ok",
        "failed" or "timeout"; raises Unavailable, or VmmError (or OSError)
        after killing every process of the chain."""
        try:
            return self._migrate(variant, link, paused, auto_converge, converge_timeout,
                                 sample)
        except Unavailable:
            raise  # refused at set-up: the guest's process is as it was
        except BaseException:
            self.abandon()
            raise

    def _migrate(self, variant, link, paused, auto_converge, converge_timeout, sample):
        if not self.live:
            self._boot()
        src = self.live
        to_side = self.side if link.local else 1 - self.side
        if not link.local:
            self.hosts.set_link(link.rate_bps, link.rtt_ms)
        host = "127.0.0.1" if link.local else self.hosts.addr[to_side]
        res = {"hop": self.hops}

        # Steady state first (the previous hop paused the guest), then how
        # fast this VMM lets the guest dirty memory.
        src.wait_passes(src.passes() + 2)
        t_a, p_a = time.monotonic(), src.passes()
        src.wait_passes(p_a + 2)
        res["guest_passes_per_s"] = (src.passes() - p_a) / (time.monotonic() - t_a)
        res["guest_dirty_pages_per_s"] = \
            res["guest_passes_per_s"] * (self.end - BOOTSECTOR_START) // PAGE

        self.started += 1
        dst = self._start(f"vm{self.started}", to_side, incoming=True)
        dst_caps = {}
        refused = set(self.refuse.get(variant.name, ()))
        src.qmp.refuse = dst.qmp.refuse = refused
        try:
            ok = self._hop(src, dst, dst_caps, variant, host, paused, auto_converge,
                           converge_timeout, sample, res)
            if ok:
                # The guest lives on the destination from now on.
                self.retired_passes += src.passes()
                src.close()
                # What was set on it as a destination stays set as a source.
                self.live, self.side, self.caps = dst, to_side, dst_caps
                self.hops += 1
                dst.qmp.cmd("cont")
            else:
                dst.close()
                if res.get("broken"):
                    # The guest's memory is wrong somewhere, or it is on a
                    # destination that failed: start afresh.
                    self._reset()
                elif src.proc.poll() is not None:
                    self._reset()
                elif paused:
                    src.qmp.cmd("cont")
        except Unavailable:
            dst.close()
            raise
        except BaseException:
            # Whatever state either process is in, neither is used again.
            dst.kill()
            raise
        finally:
            if self.live and self.live.qmp:
                self.live.qmp.refuse = set()
        res.pop("broken", None)
        return res

    def _hop(self, src, dst, dst_caps, variant, host, paused, auto_converge, timeout, sample,
             res):
        caps = ["events"] + (["multifd"] if variant.multifd else []) \
            + (["postcopy-ram"] if variant.postcopy else [])
        # QEMU times its vCPUs' waits for pages only when asked to; godwit's
        # destination always reports its fault latency.
        dst_only = ["postcopy-blocktime"] if variant.postcopy and self.vmm == "qemu" else []
        params = {"multifd-channels": variant.multifd} if variant.multifd else {}
        dst_params = dict(params)
        if variant.postcopy_fetch_rate:
            dst_params["max-postcopy-bandwidth"] = variant.postcopy_fetch_rate
        src_params = dict(params, **{"downtime-limit": variant.downtime_limit_ms})
        bw = variant.max_bandwidth
        if bw is None:
            bw = self.default_bandwidth
        if bw is not None:
            src_params["max-bandwidth"] = bw
        try:
            self._set_caps(dst, caps + dst_only, dst_caps)
            if dst_params:
                dst.qmp.cmd("migrate-set-parameters", dst_params)
            self._set_caps(src, caps + (["auto-converge"] if auto_converge else []),
                           self.caps)
            src.qmp.cmd("migrate-set-parameters", src_params)
        except QmpError as e:
            if e.cls == "CommandNotFound":
                raise  # not a feature to come: this VMM cannot be driven
            raise Unavailable(f"{self.vmm}: {e.desc or e.cls}") from e
        uri = f"tcp:{host}:{self.tools.next_port()}"
        dst.qmp.cmd("migrate-incoming", {"uri": uri})

        if paused:
            src.qmp.cmd("stop")
        src.qmp.events.clear()
        cpu0 = {"src": src.cpu(), "dst": dst.cpu()}
        passes0 = src.passes()
        t0 = time.time()
        src.qmp.cmd("migrate", {"uri": uri})

        # Poll the source as a management tool would; one run per row
        # keeps the samples for the "bytes over time" plot.
        samples = []
        deadline = time.monotonic() + timeout
        cancelled = None  # why, once migrate-cancel was sent
        switched = None   # time.time() when migrate-start-postcopy was sent
        while True:
            info = src.qmp.cmd("query-migrate")
            if not isinstance(info, dict):
                raise VmmError(f"{src.qmp.who}: query-migrate returned {str(info)[:200]}")
            ram = info.get("ram") or {}
            if sample:
                samples.append([round(time.time() - t0, 4), ram.get("transferred", 0),
                                ram.get("dirty-sync-count", 0), ram.get("remaining", 0)])
            status = info.get("status")
            if status in FINAL:
                break
            if (variant.postcopy and switched is None and status == "active"
                    and ram.get("dirty-sync-count", 0) >= 2):
                # The first pass is over (each VMM counts its end as a
                # sync of the dirty bitmap).
                switched = time.time()
                src.qmp.cmd("migrate-start-postcopy")
            now = time.monotonic()
            if switched and now > deadline:
                # No cancel after the switch: neither side holds the whole
                # guest, so the run fails (and the chain starts afresh).
                raise VmmError(f"{src.qmp.who}: post-copy did not finish in {timeout:.0f} s "
                               f"(source '{status}', destination "
                               f"{self._dst_state(dst)}): {dst.log_tail()}")
            if cancelled is None and now > deadline:
                cancelled = (f"did not converge in {timeout:.0f} s ({status}): "
                             f"{ram.get('dirty-sync-count', '?')} rounds, "
                             f"{(ram.get('remaining') or 0) / MIB:.0f} MiB still dirty")
                try:
                    src.qmp.cmd("migrate-cancel")
                except VmmError as e:
                    raise CancelFailed(f"{cancelled}; cancelling it failed: {e}") from e
                cancel_deadline = now + 30
            elif cancelled and now > cancel_deadline:
                raise CancelFailed(f"{cancelled}; 30 s after migrate-cancel the source's "
                                   f"migration is still '{status}'")
            time.sleep(0.01)
        if cancelled and status != "completed":
            # (One that completed just as it was cancelled is measured.)
            res["status"] = "timeout"
            res["error"] = cancelled + ("" if status == "cancelled" else
                                        f"; it ended '{status}': {info.get('error-desc', '?')}")
            return False
        if samples:
            res["samples"] = samples
        if status != "completed":
            res["status"] = "failed"
            res["error"] = f"migration {status}: {info.get('error-desc', '?')}"
            return False

        src_done = _event(src.qmp, "MIGRATION", lambda e: _status(e) == "completed",
                          timeout=10)
        if variant.postcopy:
            switch_ev = src.qmp.find_event("MIGRATION", lambda e: _status(e) == "postcopy-active")
            if not switch_ev:
                # Pre-copy finished first: a figure, but not of post-copy.
                res["status"] = "failed"
                res["error"] = ("the migration completed in pre-copy: no 'postcopy-active' "
                                f"on the source (migrate-start-postcopy "
                                f"{'sent' if switched else 'never sent'})")
                res["broken"] = True
                return False
            res["postcopy_start_ms"] = (switched - t0) * 1e3
            res["postcopy_active_ms"] = (event_time(switch_ev) - t0) * 1e3
        if paused:
            # The guest was not running: it does not resume anywhere.
            dst_ev = _event(dst.qmp, "MIGRATION", lambda e: _status(e) in FINAL,
                            timeout=30)
            if not dst_ev or _status(dst_ev) != "completed":
                res["status"] = "failed"
                res["error"] = ("the destination did not complete the incoming migration"
                                + (f" ({_status(dst_ev)})" if dst_ev else " within 30 s")
                                + (f": {dst.log_tail()}" if dst.log_tail() else ""))
                res["broken"] = True  # the source has handed the guest over
                return False
        else:
            dst_ev = _event(dst.qmp, "RESUME", timeout=30)
            stop_ev = src.qmp.find_event("STOP")
            if not dst_ev or not stop_ev:
                res["status"] = "failed"
                res["error"] = (f"the guest never resumed on the destination: {dst.log_tail()}"
                                if not dst_ev else "no STOP event on the source")
                res["broken"] = True
                return False
            res["downtime_ms"] = (event_time(dst_ev) - event_time(stop_ev)) * 1e3
            res["stop_at_ms"] = (event_time(stop_ev) - t0) * 1e3
        t_end = max(event_time(dst_ev), event_time(src_done) if src_done else time.time())
        if variant.postcopy:
            # The guest is whole on the destination only once its last page
            # is in, which its own 'completed' says.
            dst_done = _event(dst.qmp, "MIGRATION", lambda e: _status(e) in FINAL, timeout=60)
            if not dst_done or _status(dst_done) != "completed":
                res["status"] = "failed"
                res["error"] = (f"the post-copy destination did not complete "
                                f"({self._dst_state(dst)}): {dst.log_tail()}")
                res["broken"] = True
                return False
            t_end = max(t_end, event_time(dst_done))
            self._postcopy_figures(src, dst, info, res)
        res["total_ms"] = (t_end - t0) * 1e3
        cpu1 = {"src": src.cpu(), "dst": dst.cpu()}
        for side in ("src", "dst"):
            (p0, v0), (p1, v1) = cpu0[side], cpu1[side]
            res[f"cpu_{side}_s"] = round((p1 - p0) - (v1 - v0), 3)
        ram = info.get("ram") or {}
        if not isinstance(ram.get("transferred"), (int, float)):
            raise VmmError(f"{src.qmp.who}: the completed migration's query-migrate has no "
                           f"ram.transferred: {str(info)[:200]}")
        res["transferred"] = ram.get("transferred")
        res["rounds"] = ram.get("dirty-sync-count")
        res["vmm_downtime_ms"] = info.get("downtime")
        res["vmm_total_ms"] = info.get("total-time")
        res["guest_passes_during"] = src.passes() - passes0
        return self._verify(src, dst, res)

    @staticmethod
    def _dst_state(dst):
        """The destination's status and error, for a failure's reason."""
        try:
            d = dst.qmp.cmd("query-migrate")
        except VmmError as e:
            return f"query-migrate failed: {e}"
        return f"'{d.get('status')}'" + (f": {d['error-desc']}" if d.get("error-desc") else "")

    def _postcopy_figures(self, src, dst, info, res):
        """What each VMM says about the pages its guest waited for: the
        source's ram.postcopy-requests (both), godwit's x-godwit-postcopy
        and QEMU's postcopy-blocktime (destinations). vcpu_blocked_ms is
        the time the guest's vCPUs spent waiting for pages, summed: QEMU's
        postcopy-vcpu-blocktime, godwit's faults x their mean latency."""
        res["postcopy_requests"] = (info.get("ram") or {}).get("postcopy-requests")
        d = dst.qmp.cmd("query-migrate")
        # All of it: each VMM's own timings of the switch (godwit's
        # x-godwit-go-wait-us, ...) are there for whoever asks why.
        res["dst_query_migrate"] = d
        pc = d.get("x-godwit-postcopy")
        if pc:
            res["godwit_postcopy"] = pc
            res["vcpu_blocked_ms"] = pc["pages-faulted"] * pc["fault-latency-mean-us"] / 1e3
        if "postcopy-blocktime" in d:
            res["postcopy_blocktime_ms"] = d["postcopy-blocktime"]
            res["postcopy_vcpu_blocktime_ms"] = d.get("postcopy-vcpu-blocktime")
            res["vcpu_blocked_ms"] = sum(d.get("postcopy-vcpu-blocktime") or [])

    def _verify(self, src, dst, res):
        dst.qmp.cmd("stop")
        dump = os.path.join(self.workdir, "dst.mem")
        dst.qmp.cmd("pmemsave", {"val": BOOTSECTOR_START, "size": self.end - BOOTSECTOR_START,
                                 "filename": dump})
        # Both VMMs write the file before pmemsave returns. The 'B's of
        # every process that ran the guest are the passes it completed.
        passes = self.passes(src, dst)
        problem = check_pages(dump, self.end, passes)
        os.unlink(dump)
        res["guest_passes"] = passes
        if problem:
            res["status"] = "failed"
            res["error"] = "memory check: " + problem
            res["broken"] = True
            return False
        res["status"] = "ok"
        return True
