#!/usr/bin/env python3
"""docs/benchmarks.md and its plots, from one results file.

    bench/report.py bench/results/<date>.jsonl [MORE.jsonl...] [--docs docs]   regenerate
    bench/report.py --compare OLD.jsonl NEW.jsonl                 compare two runs

run.py calls write() at the end of a run. Everything here reads only the
JSONL file, so any past run can be redrawn, and two runs compared; but
only figures from one file are ever put side by side in a table, since
figures from different runs are not comparable.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
TOUCHED = 100 * MIB   # what the dirtying and paused guests write (run.py)
MAIN = ("godwit", "qemu")   # the variants the ratio columns compare
VARIANT_MULTIFD = {"godwit-multifd2": 2, "qemu-multifd2": 2, "godwit-multifd4": 4,
                   "qemu-multifd4": 4}
COLOR = {"godwit": "#1b7837", "godwit-multifd2": "#7fbf7b", "godwit-multifd4": "#a6dba0",
         "qemu": "#762a83", "qemu-multifd2": "#c2a5cf", "qemu-multifd4": "#e7d4e8",
         "qemu-default-bw": "#e08214", "godwit-postcopy": "#00441b", "qemu-postcopy": "#40004b",
         "godwit-postcopy-fetch4m": "#5aae61"}
VARIANT_LABEL = {
    "godwit": "godwit", "qemu": "QEMU",
    "qemu-default-bw": "QEMU, default max-bandwidth",
    "godwit-multifd2": "godwit, 2 channels", "qemu-multifd2": "QEMU, multifd 2 channels",
    "godwit-multifd4": "godwit, 4 channels", "qemu-multifd4": "QEMU, multifd 4 channels",
    "godwit-postcopy": "godwit, post-copy", "qemu-postcopy": "QEMU, post-copy",
    "godwit-postcopy-fetch4m": "godwit, post-copy, fetch 4 MiB/s",
}
WORKLOAD_TEXT = {
    "idle": "rewrites a 64-page (256 KiB) working set and never touches the rest of its RAM",
    "dirtying": "rewrites 100 MiB, one byte per page, as fast as it runs",
    "paused": "wrote 100 MiB and was stopped (`stop`) before the migration",
}
WORD = {"unavailable": "unavailable", "timeout": "did not converge", "failed": "FAILED",
        "error": "ERROR"}
NOTES_ANCHOR = "#runs-without-a-figure"
LINK_TEXT = {
    "local": "loopback TCP inside one network namespace",
    "1gbit-1ms": "1 Gbit/s, 1 ms round trip, between two network namespaces",
    "10gbit-0.2ms": "10 Gbit/s, 0.2 ms round trip, between two network namespaces",
}


def records(path):
    """The records of a results file (one JSON object per line)."""
    return [json.loads(line) for line in open(path) if line.strip()]


def load(path):
    recs = records(path)
    by_type = {}
    for r in recs:
        by_type.setdefault(r["type"], []).append(r)
    machine = (by_type.get("machine") or [{}])[0]
    end = (by_type.get("end") or [{}])[0]
    return machine, by_type.get("limit", []), by_type.get("run", []), end


# ---- numbers ---------------------------------------------------------------

def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def limit_values(records):
    """name -> {field: median over the repetitions}."""
    grouped = {}
    for r in records:
        grouped.setdefault(r["name"], []).append(r)
    out = {}
    for name, recs in grouped.items():
        out[name] = {k: statistics.median(r[k] for r in recs)
                     for k, v in recs[0].items() if isinstance(v, (int, float))
                     and not isinstance(v, bool)}
    return out


def limit_summary(records):
    lv = limit_values(records)
    parts = []
    for name in ("memcpy", "tcp-1", "tcp-2", "unix-1"):
        if name in lv:
            parts.append(f"{name} {lv[name]['gbps']:.2f} GB/s")
    if "disk-1" in lv:
        parts.append(f"disk write {lv['disk-1']['write_gbps']:.2f} / read "
                     f"{lv['disk-1']['read_gbps']:.2f} GB/s")
    if "fault" in lv:
        parts.append(f"memfd first touch {lv['fault']['memfd_first_touch_us']:.2f} us/page")
    for name, v in lv.items():
        if name.endswith("-tcp-1"):
            parts.append(f"{name} {v['gbps']:.3f} GB/s")
    return parts


def bound(lv, r, variant):
    """The machine limit that bounds a row (one of its runs: r), as
    (label, GB/s), or None."""
    streams = max(1, VARIANT_MULTIFD.get(variant, 0))
    name = f"tcp-{streams}" if r["link"] == "local" else f"{r['link']}-tcp-{streams}"
    if r["workload"] == "idle":
        if "memcpy" not in lv:
            return None
        return "reading all guest RAM at memcpy speed", lv["memcpy"]["gbps"]
    if name not in lv:
        return None
    where = "loopback TCP" if r["link"] == "local" else f"the {r['link']} link, TCP"
    return f"{where}, {streams} stream{'s' if streams > 1 else ''}", lv[name]["gbps"]



class Row:
    """All runs of one variant in one scenario."""

    def __init__(self, runs):
        self.runs = runs
        self.ok = [r for r in runs if r["status"] == "ok"]
        self.bad = [r for r in runs if r["status"] != "ok"]

    def s(self, key, scale=1.0):
        return stats([r[key] * scale for r in self.ok if r.get(key) is not None])

    def throughput(self):
        """GB/s: bytes sent over the whole migration time."""
        return stats([r["transferred"] / (r["total_ms"] / 1e3) / 1e9 for r in self.ok])

    def reasons(self):
        """The runs without a figure, grouped: [(status, error, [run numbers])],
        in the order they happened."""
        out = {}
        for r in self.bad:
            key = (r["status"], r.get("error") or "(no reason recorded)")
            out.setdefault(key, []).append(r.get("rep", 0) + 1)
        return [(st, err, reps) for (st, err), reps in out.items()]

    def status(self, limit=300):
        """None when every run is a figure; else what to print instead:
        every distinct reason, with how many runs it stopped."""
        if not self.bad:
            return None
        return "; ".join(f"{WORD.get(st, st)} ({len(reps)} of {len(self.runs)}): "
                         f"{cell(err, limit)}" for st, err, reps in self.reasons())


def cell(text, limit=None):
    """Text that cannot break a Markdown table: one line, no bare '|'."""
    t = " ".join(str(text).split()).replace("|", "\\|")
    if limit and len(t) > limit:
        t = t[:limit - 1].rstrip("\\") + "…"
    return t


def fmt(st, digits=0):
    if not st:
        return "–"
    med, lo, hi = st
    f = f"{{:.{digits}f}}"
    if f.format(lo) == f.format(hi):
        return f.format(med)
    return f"{f.format(med)} ({f.format(lo)}–{f.format(hi)})"


def ratio(a, b, digits=2):
    if not a or not b or not b[0]:
        return "–"
    return f"{a[0] / b[0]:.{digits}f}×"


def group(runs):
    """scenario -> variant -> Row, in the order the runs were made."""
    out = {}
    for r in runs:
        out.setdefault(r["scenario"], {}).setdefault(r["variant"], []).append(r)
    return {s: {v: Row(rs) for v, rs in vs.items()} for s, vs in out.items()}


# ---- plots -----------------------------------------------------------------

def gnuplot(script, cwd):
    subprocess.run(["gnuplot"], input=script, text=True, check=True, cwd=cwd,
                   capture_output=True)


def plot_summary(groups, docs, tmp):
    """Total time and downtime per scenario, godwit beside QEMU; a panel
    with no figure at all (e.g. only paused guests: no downtime) is left
    out. Returns the file name, or None when there is nothing to draw."""
    panels = [(key, label) for key, label in (("total_ms", "total time (ms, log)"),
                                              ("downtime_ms", "guest-visible downtime (ms, log)"))
              if any(rows[v].s(key) for rows in groups.values() for v in MAIN if v in rows)]
    if not panels:
        return None
    data = os.path.join(tmp, "summary.dat")
    with open(data, "w") as f:
        for scen, rows in groups.items():
            cols = [scen]
            for key, _ in panels:
                for v in MAIN:
                    st = rows[v].s(key) if v in rows else None
                    cols += [f"{x:.3f}" for x in st] if st else ["?", "?", "?"]
            f.write(" ".join(cols) + "\n")
    plots = []
    for i, (_, label) in enumerate(panels):
        c = 2 + 6 * i  # three columns (median, min, max) per VMM
        plots.append(f'set ylabel "{label}"\n'
                     f'plot "{data}" using {c}:{c + 1}:{c + 2}:xtic(1) title "godwit" '
                     f'lc rgb "{COLOR["godwit"]}", "" using {c + 3}:{c + 4}:{c + 5} '
                     f'title "QEMU" lc rgb "{COLOR["qemu"]}"')
    out = os.path.join(docs, "bench-summary.png")
    n = len(groups)
    title = "godwit against QEMU 7.2, same guest, same host (median, bars: min–max)"
    if not any(rows.get("godwit") and rows["godwit"].ok for rows in groups.values()):
        title += "\\ngodwit: no figures in this run (see the tables)"
    newline = "\n"
    gnuplot(f"""
set terminal pngcairo size {max(900, 110 * n + 200)},{400 * len(panels)} font "sans,10"
set output "{out}"
set datafile missing "?"
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y
set grid ytics
set key top left
set xtics rotate by -30 scale 0 noenhanced
set xrange [-0.6:{n - 0.4}]
set yrange [1:*]
set multiplot layout {len(panels)},1 title "{title}"
{newline.join(plots)}
unset multiplot
""", tmp)
    return os.path.basename(out)


def rounds_of(samples):
    """MiB sent in each round, from the ~10 ms query-migrate samples:
    what `transferred` grew by from the first sample that showed
    dirty-sync-count n to the first that showed more. The last sample is
    the completed migration: what arrived since the one before it (the
    stop-and-copy round, and the tail of the round before) goes to the
    final count."""
    *running, last = samples
    first = {}
    for t, sent, sync, _ in running:
        first.setdefault(sync, sent)
    first.setdefault(last[2], running[-1][1] if running else 0)
    syncs = sorted(first)
    ends = [first[s] for s in syncs[1:]] + [last[1]]
    return [(s, (e - first[s]) / MIB) for s, e in zip(syncs, ends)]


def plot_progress(scen, rows, docs, tmp):
    """Bytes over time, and bytes per round, for the sampled run of each
    variant of one scenario."""
    series = []
    max_rounds = 0
    for v, row in rows.items():
        sampled = [r for r in row.ok if r.get("samples")]
        if not sampled:
            continue
        s = sampled[0]["samples"]
        d1 = os.path.join(tmp, f"{scen}-{v}.time")
        d2 = os.path.join(tmp, f"{scen}-{v}.rounds")
        with open(d1, "w") as f:
            for t, sent, sync, _ in s:
                f.write(f"{t * 1e3:.1f} {sent / MIB:.3f} {sync}\n")
        with open(d2, "w") as f:
            for sync, mib in rounds_of(s):
                f.write(f"{sync} {mib:.3f}\n")
        series.append((v, d1, d2, sampled[0].get("stop_at_ms")))
        max_rounds = max(max_rounds, s[-1][2])
    if not series:
        return None
    out = os.path.join(docs, f"bench-progress-{scen}.png")
    style = 'lc rgb "{c}" title "{t}"'
    p1 = ", ".join(f'"{d1}" using 1:2 with linespoints pt 7 ps 0.4 '
                   + style.format(c=COLOR.get(v, "black"), t=VARIANT_LABEL.get(v, v))
                   for v, d1, _, _ in series)
    p2 = ", ".join(f'"{d2}" using 1:2 with linespoints pt 7 ps 0.8 '
                   + style.format(c=COLOR.get(v, "black"), t=VARIANT_LABEL.get(v, v))
                   for v, _, d2, _ in series)
    # Where each guest stopped on its source (the downtime starts).
    stops = "\n".join(f'set arrow from {at:.1f}, graph 0 to {at:.1f}, graph 1 nohead dt 2 '
                       f'lc rgb "{COLOR.get(v, "black")}"'
                       for v, _, _, at in series if at is not None)
    gnuplot(f"""
set terminal pngcairo size 900,700 font "sans,10"
set output "{out}"
set grid
set key top left noenhanced
set multiplot layout 2,1 title "{scen}: query-migrate every 10 ms, one run of each" noenhanced
set xlabel "time since migrate (ms); dashed: the guest stops on the source"
set ylabel "ram.transferred (MiB)"
{stops}
plot {p1}
unset arrow
set xlabel "dirty-sync-count during which it was sent"
set ylabel "MiB sent in that round"
set xtics {1 if max_rounds <= 20 else 5}
set yrange [0:*]
plot {p2}
unset multiplot
""", tmp)
    return os.path.basename(out)


# ---- the document ------------------------------------------------------------

def limits_table(lv):
    rows = []

    def add(label, value, bounds):
        rows.append(f"| {label} | {value} | {bounds} |")

    if "memcpy" in lv:
        add(f"memcpy, {lv['memcpy']['buffer_bytes'] / MIB:.0f} MiB buffers",
            f"{lv['memcpy']['gbps']:.2f} GB/s",
            "any copy of guest RAM; reading all of it (idle scenarios)")
    for kind, what in (("tcp", "loopback TCP"), ("unix", "unix socket")):
        for n in (1, 2):
            if f"{kind}-{n}" in lv:
                add(f"{what}, {n} stream{'s' if n > 1 else ''} (writev 256 KiB)",
                    f"{lv[f'{kind}-{n}']['gbps']:.2f} GB/s",
                    "local migrations" + (" with 2 channels" if n > 1 else "")
                    if kind == "tcp" else "unix: migrations, local update")
    if "tcp-rtt" in lv:
        add("loopback TCP round trip", f"{lv['tcp-rtt']['median_us']:.0f} µs", "–")
    for n in (1, 4):
        if f"disk-{n}" in lv:
            d = lv[f"disk-{n}"]
            add(f"O_DIRECT 1 MiB blocks, {n} thread{'s' if n > 1 else ''}, write / read",
                f"{d['write_gbps']:.2f} / {d['read_gbps']:.2f} GB/s",
                "snapshot files (build directory's disk)")
    if "fault" in lv:
        f = lv["fault"]
        us = f["memfd_first_touch_us"]
        add("memfd first touch", f"{us:.2f} µs/page ({4096 / us / 1e3:.2f} GB/s)",
            "a destination filling fresh RAM page by page")
        add("memfd after fallocate: fallocate + touch",
            f"{f['memfd_fallocate_us']:.2f} + {f['memfd_after_fallocate_touch_us']:.2f} µs/page",
            "populating ahead of the data")
        add("memfd MADV_POPULATE_WRITE: populate + touch",
            f"{f['memfd_populate_write_us']:.2f} + {f['memfd_after_populate_touch_us']:.2f} µs/page",
            "populating in bulk")
        add("anonymous memory first touch", f"{f['anon_first_touch_us']:.2f} µs/page",
            "QEMU's destination RAM")
    for name, v in lv.items():
        if name.endswith("-tcp-1") or name.endswith("-tcp-2"):
            link, n = name.rsplit("-tcp-", 1)
            add(f"{link} link, TCP, {n} stream{'s' if n != '1' else ''}",
                f"{v['gbps']:.3f} GB/s", f"migrations over {link}")
        elif name.endswith("-rtt") and name != "tcp-rtt":
            add(f"{name[:-4]} link, TCP round trip", f"{v['median_us']:.0f} µs", "–")
    return ["| limit | measured | what it bounds |", "|---|---|---|", *rows]


def scenario_section(scen, rows, lv, progress_png):
    any_run = next(iter(rows.values())).runs[0]
    mem_gib = any_run["memory_mib"] / 1024
    lines = [f"### {scen}", ""]
    params = (f"downtime-limit 300 ms; max-bandwidth unlimited (100 GB/s) unless the row says "
              f"otherwise; auto-converge {'on (both VMMs)' if any_run['auto_converge'] else 'off'}")
    lines.append(f"{mem_gib:g} GiB guest that {WORKLOAD_TEXT[any_run['workload']]}; "
                 f"{LINK_TEXT[any_run['link']]}; {params}.")
    lines.append("")
    b = bound(lv, any_run, "qemu")
    if b:
        label, gbps = b
        if any_run["workload"] == "idle":
            floor = any_run["memory_mib"] * MIB / (gbps * 1e9) * 1e3
            lines.append(f"Bound: {label} ({gbps:.2f} GB/s) takes {floor:.0f} ms for "
                         f"{mem_gib:g} GiB: a VMM that reads untouched memory cannot beat "
                         f"that; one that asks the kernel where the data is does not pay it.")
        else:
            floor = TOUCHED / (gbps * 1e9) * 1e3
            lines.append(f"Bound: {label}, {gbps:.3f} GB/s: the 100 MiB the guest wrote "
                         f"take at least {floor:.0f} ms to cross it.")
        lines.append("")
    head = ("| variant | runs ok | total ms | downtime ms | sent MiB | rounds | "
            "CPU src s | CPU dst s | GB/s sent | of bound | guest pages/s |")
    lines += [head, "|" + "---|" * 11]
    for v, row in rows.items():
        label = VARIANT_LABEL.get(v, v)
        st = row.status()
        if not row.ok:
            lines.append(f"| {label} | 0/{len(row.runs)} | {st} |" + " |" * 8)
            continue
        tp = row.throughput()
        vb = bound(lv, row.runs[0], v)
        if vb and any_run["workload"] != "idle" and tp:
            of = f"{tp[0] / vb[1] * 100:.0f}%"
        elif vb and tp:
            floor_ms = any_run["memory_mib"] * MIB / (vb[1] * 1e9) * 1e3
            of = f"{row.s('total_ms')[0] / floor_ms:.2f}× the scan"
        else:
            of = "–"
        lines.append(
            f"| {label} | {len(row.ok)}/{len(row.runs)} | {fmt(row.s('total_ms'))} | "
            f"{fmt(row.s('downtime_ms'))} | {fmt(row.s('transferred', 1 / MIB))} | "
            f"{fmt(row.s('rounds'))} | {fmt(row.s('cpu_src_s'), 2)} | "
            f"{fmt(row.s('cpu_dst_s'), 2)} | {fmt(tp, 3)} | {of} | "
            f"{fmt(row.s('guest_dirty_pages_per_s'))} |")
        if st:
            lines.append(f"| ↳ {label} | {st} |" + " |" * 9)
    g, q = rows.get("godwit"), rows.get("qemu")
    if g and q and g.ok and q.ok:
        lines += ["", "godwit / QEMU (medians): total "
                  f"{ratio(g.s('total_ms'), q.s('total_ms'))}, downtime "
                  f"{ratio(g.s('downtime_ms'), q.s('downtime_ms'))}, bytes "
                  f"{ratio(g.s('transferred'), q.s('transferred'))}, source CPU "
                  f"{ratio(g.s('cpu_src_s'), q.s('cpu_src_s'))}, destination CPU "
                  f"{ratio(g.s('cpu_dst_s'), q.s('cpu_dst_s'))}."]
    if progress_png:
        lines += ["", f"![bytes over time and per round, {scen}]({progress_png})"]
    lines.append("")
    return lines


def notes(groups):
    """(scenario, variant) -> note number, for every row with a run that
    gave no figure, in page order."""
    out = {}
    for scen, rows in groups.items():
        for v, row in rows.items():
            if row.bad:
                out[(scen, v)] = len(out) + 1
    return out


def notes_section(groups, numbers):
    """Every run without a figure and why, numbered as the summary table
    refers to them."""
    if not numbers:
        return []
    lines = ["### Runs without a figure", "",
             "Every run of this page that gave no figure, and why (the summary refers to "
             "these by number; the scenario tables below repeat them; the results file "
             "has the full text).", ""]
    for (scen, v), n in numbers.items():
        row = groups[scen][v]
        reasons = [f"**{WORD.get(st, st)}**, run{'s' if len(reps) > 1 else ''} "
                   f"{', '.join(map(str, reps))} of {len(row.runs)}: {cell(err, 1000)}"
                   for st, err, reps in row.reasons()]
        where = f"{n}. `{scen}`, {VARIANT_LABEL.get(v, v)}:"
        if len(reasons) == 1:
            lines.append(f"{where} {reasons[0]}")
        else:
            lines += [where, *(f"    - {r}" for r in reasons)]
    lines.append("")
    return lines


def note_ref(n):
    return f"[[{n}]]({NOTES_ANCHOR})"


def summary_table(groups, lv, numbers=None):
    numbers = numbers or {}
    lines = ["| scenario | godwit total ms | QEMU total ms | godwit/QEMU | "
             "godwit downtime ms | QEMU downtime ms | godwit/QEMU | bound | "
             "godwit vs bound | QEMU vs bound |", "|" + "---|" * 10]
    for scen, rows in groups.items():
        cells = [scen]
        g, q = rows.get("godwit"), rows.get("qemu")
        for key in ("total_ms", "downtime_ms"):
            gs = g.s(key) if g and g.ok else None
            qs = q.s(key) if q and q.ok else None
            pair = []
            for v, row, st in (("godwit", g, gs), ("qemu", q, qs)):
                text = fmt(st) if st else short_status(row)
                n = numbers.get((scen, v))
                if n and key == "total_ms":
                    if row.ok:  # figures from some runs: say how many did not give one
                        text += f", {len(row.bad)} of {len(row.runs)} {short_status(row, True)}"
                    text += " " + note_ref(n)
                pair.append(text)
            cells += [*pair, ratio(gs, qs)]
        any_run = next(iter(rows.values())).runs[0]
        b = bound(lv, any_run, "qemu")
        cells.append(f"{b[0]}: {b[1]:.3f} GB/s" if b else "–")
        for row in (g, q):
            cells.append(vs_bound(row, any_run, b))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def short_status(row, bad=False):
    """What a summary cell says for a row without figures (or, with bad,
    for the runs of a row that gave none)."""
    if row is None or (row.ok and not bad) or not row.bad:
        return "–"
    words = {"unavailable": "unavailable", "timeout": "no convergence", "failed": "FAILED",
             "error": "ERROR"}
    return " / ".join(sorted({words.get(r["status"], r["status"]) for r in row.bad}))


def vs_bound(row, any_run, b):
    if not row or not row.ok or not b:
        return "–"
    if any_run["workload"] == "idle":
        floor_ms = any_run["memory_mib"] * MIB / (b[1] * 1e9) * 1e3
        return f"{row.s('total_ms')[0] / floor_ms:.2f}× the scan time"
    return f"{row.throughput()[0] / b[1] * 100:.0f}% of it"


def drawn(plot, *args):
    """A plot that gnuplot refuses costs the page that picture, not the
    figures: say why on stderr and go on."""
    try:
        return plot(*args)
    except subprocess.CalledProcessError as e:
        print(f"report: gnuplot failed for {plot.__name__}: {e.stderr.strip()[-300:]}",
              file=sys.stderr)
        return None


def snapshot_section(path, lv):
    """The snapshot rows (bench/snapshot.py): save and restore times, the
    file's allocation, and the throughput against the disk's O_DIRECT
    limits of the same run."""
    snaps = [json.loads(line) for line in open(path) if line.strip()]
    snaps = [r for r in snaps if r.get("type") == "snapshot"]
    if not snaps:
        return []
    # The better of 1 and 4 threads in each direction: the disk's limit.
    disks = [lv[k] for k in ("disk-1", "disk-4") if k in lv]
    wlim = max((d["write_gbps"] for d in disks), default=None)
    rlim = max((d["read_gbps"] for d in disks), default=None)
    out = ["## Snapshot files", "",
           "Save a guest into a file and restore it into a fresh process (bench/snapshot.py). "
           "godwit-mapped-N: a mapped-ram file written by N threads (dio: with O_DIRECT); "
           "godwit-stream: godwit's stream file; qemu-stream: QEMU 7.2's `migrate exec:cat > "
           "FILE` and `migrate-incoming exec:cat FILE` (it has no mapped-ram). A restore "
           "reads the file from disk (dropped from the page cache first) and counts until the "
           "guest can run; its memory is then checked page by page. Save and restore rates are "
           "the guest's touched RAM over the time, set against the disk's O_DIRECT limits "
           f"measured in this run ({wlim or '?'} GB/s write, {rlim or '?'} GB/s read: the better "
           "of 1 and 4 threads). godwit's mapped-ram save includes its fdatasyncs; its stream "
           "file and QEMU's `cat` end with the data in the page cache, so their save rates may "
           "pass the disk's.", "",
           "| scenario | variant | save ms | restore ms | allocated | save rate (vs disk write) "
           "| restore rate (vs disk read) | restore vs QEMU |",
           "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in snaps:
        groups.setdefault((r["scenario"], r["variant"]), []).append(r)
    qemu_restore = {}
    for (scen, var), rows in groups.items():
        ok = [r for r in rows if r.get("status") == "ok"]
        if var == "qemu-stream" and ok:
            qemu_restore[scen] = stats([r["restore_ms"] for r in ok])[0]
    for (scen, var), rows in sorted(groups.items()):
        ok = [r for r in rows if r.get("status") == "ok"]
        if not ok:
            out.append(f"| {scen} | {var} | **failed** | | | | | {cell(rows[0].get('error', ''), 120)} |")
            continue
        bad = [r for r in rows if r.get("status") != "ok"]
        if bad:
            var = f"{var} ({len(ok)} of {len(rows)} ok; failed: {cell(bad[0].get('error', ''), 160)})"
        sv, rs = stats([r["save_ms"] for r in ok]), stats([r["restore_ms"] for r in ok])
        alloc = stats([r["alloc_bytes"] for r in ok])[0] / (1 << 20)
        data = ok[0]["data_bytes"]
        srate, rrate = data / sv[0] / 1e6, data / rs[0] / 1e6
        sv_txt = f"{sv[0]:.0f} ({sv[1]:.0f}–{sv[2]:.0f})"
        rs_txt = f"{rs[0]:.0f} ({rs[1]:.0f}–{rs[2]:.0f})"
        s_vs = f"{srate:.2f} GB/s ({srate / wlim:.2f}×)" if wlim else f"{srate:.2f} GB/s"
        r_vs = f"{rrate:.2f} GB/s ({rrate / rlim:.2f}×)" if rlim else f"{rrate:.2f} GB/s"
        q = qemu_restore.get(scen)
        vs_q = f"{rs[0] / q:.2f}×" if q and var != "qemu-stream" else "–"
        out.append(f"| {scen} | {var} | {sv_txt} | {rs_txt} | {alloc:.0f} MiB | {s_vs} | "
                   f"{r_vs} | {vs_q} |")
    out.append("")
    return out


LIVE = ("godwit-live-stream", "godwit-live-mapped-2", "godwit-live-mapped-dio-4", "qemu-live")
# The stopped save into the same kind of file, for each live variant.
SAME_FILE = {"godwit-live-stream": "godwit-stream", "godwit-live-mapped-dio-4": "godwit-mapped-dio-4",
             "qemu-live": "qemu-stream"}


def run_source(path, machine):
    """The line that says which run a table's figures come from."""
    rel = os.path.relpath(path, os.path.dirname(HERE))
    return (f"From [`{rel}`](../{rel}) ({machine.get('date', '?')}, godwit "
            f"{machine.get('godwit_commit', '?')}, `{machine.get('command', '?')}`).")


def live_snapshot_section(paths):
    """Background snapshots (bench/snapshot.py, variants *-live): the time
    to save a running guest as it was at the command, against the stopped
    save of the same guest and QEMU's background-snapshot in the same run,
    with the guest's pause, its write faults and whether every restore
    was the guest at the command."""
    out = []
    for path in paths:
        recs = records(path)
        snaps = [r for r in recs if r.get("type") == "snapshot"]
        if not any(r["variant"] in LIVE for r in snaps):
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        if not out:
            out += ["## Background snapshots", "",
                    "A running guest saved as it was at the command while it runs on "
                    "(capability background-snapshot), by godwit into a stream file "
                    "(live-stream) or a mapped-ram file with 2 writers (live-mapped-2) or 4 "
                    "O_DIRECT writers (live-mapped-dio-4), and by QEMU 7.2 (`migrate "
                    "exec:cat > FILE`), set against the stopped save of the same guest in the "
                    "same run (the better of godwit-stream and godwit-mapped-dio-4, the guest "
                    "stopped throughout; and the stopped save into the same kind of file: a "
                    "stream file, which ends in the page cache, or an O_DIRECT mapped-ram file, "
                    "which ends on disk) and against QEMU's. *pause*: how long the guest was "
                    "paused (godwit: x-godwit-pause-us; QEMU: its downtime); *faults* and *max "
                    "wait*: write faults taken and the longest one write waited "
                    "(x-godwit-wp-faults, x-godwit-wp-max-wait-us). *restored*: runs whose "
                    "restore was the guest at the command, checked page by page against the "
                    "pass counter the guest had between the command and the end of the "
                    "snapshot's set-up.", ""]
        out += [run_source(path, machine), "",
                "| guest | variant | save ms | vs stopped save | vs stopped, same file | vs QEMU "
                "live | pause ms | faults | max wait ms | restored |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        by = {}
        for r in snaps:
            shape = r["scenario"].rsplit("-", 1)[0]
            by.setdefault(shape, {}).setdefault(r["variant"] + (":live" if r.get("running")
                                                                else ":stopped"), []).append(r)
        for shape in sorted(by, key=lambda k: (len(k), k)):
            vs = by[shape]

            def med(key, field="save_ms"):
                ok = [r[field] for r in vs.get(key, []) if r.get("status") == "ok"
                      and r.get(field) is not None]
                return stats(ok) if ok else None

            stopped = [med(k) for k in ("godwit-stream:stopped", "godwit-mapped-dio-4:stopped")]
            stopped = min((x[0] for x in stopped if x), default=None)
            qlive = med("qemu-live:live")
            for var in LIVE:
                rows = vs.get(var + ":live", [])
                if not rows:
                    continue
                ok = [r for r in rows if r.get("status") == "ok"]
                sv = med(var + ":live")
                if not sv:
                    out.append(f"| {shape} | {var} | **failed** | | | | | | 0 of {len(rows)}: "
                               f"{cell(rows[0].get('error', ''), 160)} |")
                    continue
                if var.startswith("qemu"):
                    pause = med(var + ":live", "downtime_ms")
                    faults = wait = None
                else:
                    pause = med(var + ":live", "pause_us")
                    pause = tuple(x / 1000 for x in pause) if pause else None
                    faults, wait = med(var + ":live", "wp_faults"), med(var + ":live",
                                                                         "wp_max_wait_us")
                    wait = tuple(x / 1000 for x in wait) if wait else None
                bad = [r for r in rows if r.get("status") != "ok"]
                restored = f"{len(ok)} of {len(rows)}"
                if bad:
                    restored += f" (failed: {cell(bad[0].get('error', ''), 160)})"
                out.append(
                    f"| {shape} | {var} | {sv[0]:.0f} ({sv[1]:.0f}–{sv[2]:.0f}) | "
                    f"{sv[0] / stopped:.2f}× | " if stopped else
                    f"| {shape} | {var} | {sv[0]:.0f} ({sv[1]:.0f}–{sv[2]:.0f}) | – | ")
                same = med(SAME_FILE.get(var, "") + ":stopped")
                out[-1] += f"{sv[0] / same[0]:.2f}× | " if same else "– | "
                out[-1] += (f"{sv[0] / qlive[0]:.3f}× | " if qlive and not var.startswith("qemu")
                            else "– | ")
                out[-1] += (f"{pause[0]:.1f} ({pause[1]:.1f}–{pause[2]:.1f}) | " if pause
                            else "– | ")
                out[-1] += f"{faults[0]:.0f} | " if faults else "– | "
                out[-1] += f"{wait[0]:.1f} | " if wait else "– | "
                out[-1] += f"{restored} |"
        out.append("")
    return out


UPDATE_VARIANTS = ("godwit-cpr-transfer", "godwit-cpr-exec", "qemu-ignore-shared")


def local_update_section(paths):
    """Local live update (bench/update.py): the guest's blackout when a new
    VMM process takes it over on the same host, RAM handed over, against
    QEMU 7.2's x-ignore-shared and the host's own cost of handing memfds
    over, with the host memory it took."""
    out = []
    for path in paths:
        recs = records(path)
        ups = [r for r in recs if r.get("type") == "update"]
        if not ups:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        limits = {(r["memory_mib"], r["touched_mib"]): r for r in recs
                  if r.get("type") == "update-limit"}
        if not out:
            out += ["## Local live update", "",
                    "A running guest moved onto a new VMM process on the same host without a "
                    "copy of its RAM: godwit's cpr-transfer (the memfds over a unix socket to a "
                    "process already started) and cpr-exec (the process execs itself; the guest "
                    "waits in a stand-in, two cpr-transfers with a pause each), and "
                    "QEMU 7.2 with its RAM in a shared file (memory-backend-file share=on, "
                    "capability x-ignore-shared) migrating to a second QEMU over a unix socket. "
                    "The guest is the boot-sector dirtier, idle (rewriting 64 KiB) or dirtying "
                    "(rewriting all of a touched part). *blackout*: the source's STOP event to "
                    "the destination's RESUME event (QMP timestamps, one host clock; the same "
                    "measure for both VMMs); for cpr-exec, whose new image resumes before a "
                    "client can be back, godwit's own x-godwit-downtime-us (pause call to "
                    "resume call, one monotonic clock; both pauses summed); *VMM says*: what "
                    "each VMM reports (QEMU in whole milliseconds; for cpr-exec, the longer of "
                    "its two pauses in parentheses: the guest's longest blackout). *limit*: this host sending the memfd over a "
                    "unix socket and receiving it (SCM_RIGHTS), and mapping it with "
                    "MADV_POPULATE_WRITE of the touched part, measured in the same run. "
                    "*memory*: the host's MemAvailable, lowest drop during the update and "
                    "change after, and the change in the VMM processes' PSS: a second copy of "
                    "the RAM would show in all three.", ""]
        out += [run_source(path, machine), "",
                "| guest | variant | blackout ms | vs QEMU | VMM says ms | RAM copied | state "
                "bytes | adopt ms (limit: send µs, map ms) | memory: lowest, after, PSS MiB |",
                "|---|---|---|---|---|---|---|---|---|"]
        by = {}
        for r in ups:
            by.setdefault((r["memory_mib"], r["workload"], r["touched_mib"]), {}) \
              .setdefault(r["variant"], []).append(r)
        for (mem, work, touched), vs in sorted(by.items()):
            shape = (f"{mem // 1024} GiB" if mem >= 1024 else f"{mem} MiB") + \
                f" {work}" + (f" ({touched} MiB)" if touched else "")

            def seen(r):
                return r.get("events_us") or r["blackout_us"]

            q = [seen(r) for r in vs.get("qemu-ignore-shared", []) if r.get("ok")]
            qmed = statistics.median(q) if q else None
            lim = limits.get((mem, touched), {})
            for var in UPDATE_VARIANTS:
                rows = vs.get(var, [])
                ok = [r for r in rows if r.get("ok")]
                if not ok:
                    if rows:
                        out.append(f"| {shape} | {var} | FAILED: "
                                   f"{cell(rows[0].get('error', ''), 160)} | | | | | | |")
                    continue
                b = stats([seen(r) / 1000 for r in ok])
                says = stats([r["blackout_us"] / 1000 for r in ok])
                ram = max(r["ram_bytes"] for r in ok)
                # Not for QEMU, which does not report its device state apart
                # (an older run recorded its ram.transferred here).
                state = ("–" if var.startswith("qemu") else
                         f"{statistics.median(r['state_bytes'] for r in ok):.0f}")
                adopt = [r["adopt_us"] / 1000 for r in ok if r.get("adopt_us") is not None]
                drop = max(r["mem_before"] - r["mem_lowest"] for r in ok) / (1 << 20)
                after = statistics.median(r["mem_before"] - r["mem_after"] for r in ok) / (1 << 20)
                dpss = statistics.median(r["pss_after"] - r["pss_before"] for r in ok) / (1 << 20)
                vs_q = f"{b[0] * 1000 / qmed:.2f}×" if qmed and not var.startswith("qemu") else "–"
                ad = (f"{statistics.median(adopt):.1f} ({lim.get('send_us', 0):.0f} µs, "
                      f"{lim.get('map_us', 0) / 1000:.1f} ms)" if adopt else "–")
                n = f" ({len(ok)} of {len(rows)} ok)" if len(ok) < len(rows) else ""
                longest = [max(r["pauses_us"]) / 1000 for r in ok if r.get("pauses_us")]
                says_s = f"{says[0]:.2f}" + (
                    f" ({statistics.median(longest):.2f})" if longest else "")
                out.append(f"| {shape} | {var}{n} | {b[0]:.2f} ({b[1]:.2f}–{b[2]:.2f}) | {vs_q} | "
                           f"{says_s} | {ram} | {state} | {ad} | "
                           f"{drop:.0f}, {after:.0f}, {dpss:+.0f} |")
        out.append("")
    return out


def disk_section(paths):
    """Disks (bench/disk.py): block migration of an image against QEMU 7.2
    and the machine's own copy, and the flush in a shared-storage pause."""
    out = []
    for path in paths:
        recs = records(path)
        disks = [r for r in recs if r.get("type") == "disk"]
        if not disks:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        limits = {}
        for r in recs:
            if r.get("type") == "disk-limit":
                limits.setdefault(r["image_mib"], []).append(r["copy_ms"])
        if not out:
            out += ["## Disks", "",
                    "**Block migration**: an idle guest (the boot-sector dirtier) with an image "
                    "half random data, half hole, migrated over a unix socket to a VMM with an "
                    "empty image of the same size, and the images compared byte for byte "
                    "after: godwit-vmm (`--drive ...,shared=off`, `migrate` with `blk`) and "
                    "QEMU 7.2 (virtio-blk, capability `block`). *total*: the source's "
                    "total-time; *blackout*: STOP to RESUME events (QMP timestamps, one host "
                    "clock); *limit*: this machine reading the image and writing it into "
                    "another file with fdatasync, in the same run. **Shared storage**: the "
                    "diskcheck guest writing a 16 MiB range of its image, 8 requests in "
                    "flight; both sides open the one image, which is only flushed at the "
                    "switchover: the downtime and the fdatasync's part of it.", ""]
        out += [run_source(path, machine), "",
                "| image | variant | total ms | vs QEMU | vs limit | blackout ms | disk bytes sent |",
                "|---|---|---|---|---|---|---|"]
        by = {}
        for r in disks:
            if r["kind"] == "block":
                by.setdefault(r["image_mib"], {}).setdefault(r["variant"], []).append(r)
        for mib, vs in sorted(by.items()):
            q = [r["total_ms"] for r in vs.get("qemu-block", []) if r.get("ok")]
            lim = statistics.median(limits[mib]) if limits.get(mib) else None
            for var in ("godwit-block", "qemu-block"):
                rows = vs.get(var, [])
                ok = [r for r in rows if r.get("ok")]
                if not ok:
                    if rows:
                        out.append(f"| {mib} MiB | {var} | FAILED: "
                                   f"{cell(rows[0].get('error', ''), 160)} | | | | |")
                    continue
                t = stats([r["total_ms"] for r in ok])
                bl = [r["downtime_ms"] for r in ok if r.get("downtime_ms") is not None]
                vq = f"{t[0] / statistics.median(q):.2f}×" if q and var != "qemu-block" else "–"
                vl = f"{t[0] / lim:.2f}×" if lim else "–"
                sent = [r["disk_bytes"] for r in ok if r.get("disk_bytes")]
                out.append(f"| {mib} MiB | {var} | {t[0]:.0f} ({t[1]:.0f}–{t[2]:.0f}) | {vq} | "
                           f"{vl} | {statistics.median(bl) if bl else float('nan'):.2f} | "
                           f"{statistics.median(sent) if sent else '–'} |")
        shared = [r for r in disks if r["kind"] == "shared" and r.get("ok")]
        if shared:
            out += ["", "| shared storage | blackout ms | fdatasync in the pause ms | share |",
                    "|---|---|---|---|"]
            for cache in ("writeback", "none"):
                rows = [r for r in shared if r["cache"] == cache]
                if not rows:
                    continue
                bl = statistics.median(r["vmm_downtime_us"] for r in rows) / 1000
                sy = statistics.median(r["sync_us"] for r in rows) / 1000
                out.append(f"| cache={cache} | {bl:.2f} | {sy:.2f} | {sy / bl:.0%} |")
        out.append("")
    return out


def diskio_section(paths):
    """Disk throughput (bench/diskio.py): fio, the device driven from a
    host thread, and the guest, per I/O engine, at depth 1 and 32."""
    out = []
    for path in paths:
        recs = records(path)
        rows = [r for r in recs if r.get("type") == "diskio"]
        if not rows:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})

        def med(who, aio, rw, bs, depth, key="iops"):
            v = [r[key] for r in rows if r["who"] == who and r["aio"] == aio and r["rw"] == rw
                 and r["bs"] == bs and r["depth"] == depth and r.get("ok") and key in r]
            return statistics.median(v) if v else None

        def vs(x, limit, cpu=None):
            if x is None:
                return "–"
            text = f"{x:,.0f} ({x / limit:.2f}×)" if limit else f"{x:,.0f}"
            return text + (f", {cpu:.1f} µs" if cpu is not None else "")

        if not out:
            out += ["## Disk throughput", "",
                    "A virtio-blk drive with cache=none (O_DIRECT) on a 256 MiB image of "
                    "random data, random requests for 2 s, median of the runs. *fio*: "
                    "`fio --ioengine=io_uring --direct=1` on the same image, the disk's limit "
                    "at that depth; the ratios are to it. *device*: godwit-vmm's virtio-blk "
                    "device and its I/O engine driven from a host thread through the MMIO "
                    "registers and the virtqueue a guest uses (bench/blkdev/), with the "
                    "device's CPU time per request (the process's less the driving thread's); "
                    "*guest*: the diskcheck guest in load mode, timed over its passes from "
                    "the host. This machine's vCPUs are emulated, so the guest's own driver "
                    "bounds the guest rows, whichever engine serves it.", ""]
        out += [run_source(path, machine), ""]
        for bs, unit, key in ((4096, "IOPS", "iops"), (65536, "MB/s", "mbps")):
            guest = bs == 4096
            out += [f"| {bs // 1024} KiB {unit} | depth | fio | device threads (CPU/req) | "
                    f"device io_uring (CPU/req) |" + (" guest threads | guest io_uring |"
                                                      if guest else ""),
                    "|---|---|---|---|---|" + ("---|---|" if guest else "")]
            for rw in ("randread", "randwrite"):
                for depth in (1, 32):
                    lim = med("fio", None, rw, bs, depth, key)
                    cells = [vs(lim, None)]
                    for aio in ("threads", "io_uring"):
                        cells.append(vs(med("device", aio, rw, bs, depth, key), lim,
                                        med("device", aio, rw, bs, depth, "cpu_us")))
                    if guest:
                        cells += [vs(med("guest", aio, rw, bs, depth, key), lim)
                                  for aio in ("threads", "io_uring")]
                    out.append(f"| {rw} | {depth} | " + " | ".join(cells) + " |")
            out.append("")
    return out


def multifd_section(paths):
    """multifd (bench/run.py --only ...): one stream against 2 and 4
    channels of the same VMM, and against QEMU's, from runs made after
    the main one (whose godwit multifd rows predate the capability)."""
    out = []
    for path in paths:
        recs = records(path)
        runs = [r for r in recs if r.get("type") == "run"]
        if not any(r.get("multifd") for r in runs):
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        lv = limit_values([r for r in recs if r.get("type") == "limit"])
        if not out:
            out += ["## multifd", "",
                    "Pages on 2 or 4 connections beside the main one (capability `multifd`, "
                    "`multifd-channels`), against one stream of the same VMM and against QEMU "
                    "7.2's multifd, same guest, same run; median (min–max) of the runs. "
                    "*total*: the source's total-time; *blackout*: STOP to RESUME events. "
                    "This machine has 2 cores, which the guest's vCPUs, the sending threads "
                    "and the receiving threads share, so more channels can only add "
                    "threads to the same two cores: the figures say whether that helps here, "
                    "not what it does on a host with a core per channel.", ""]
        lim = ", ".join(f"{n} {lv[n]['gbps']:.2f} GB/s" for n in ("unix-1", "unix-2", "tcp-1",
                                                                  "tcp-2") if n in lv)
        out += [run_source(path, machine), "",
                f"Loopback limits measured in the same run: {lim}." if lim else "", "",
                "| scenario | variant | total ms | vs one stream | blackout ms | vs one stream |",
                "|---|---|---|---|---|---|"]
        for scen, rows in group(runs).items():
            for v, row in rows.items():
                if row.runs[0].get("postcopy"):
                    continue  # they have their own section
                t, d = row.s("total_ms"), row.s("downtime_ms")
                if not t:
                    out.append(f"| {scen} | {VARIANT_LABEL.get(v, v)} | "
                               f"{cell(row.status() or 'no figure', 160)} | | | |")
                    continue
                base = rows.get("godwit" if v.startswith("godwit") else "qemu")
                bt = base.s("total_ms") if base else None
                bd = base.s("downtime_ms") if base else None
                same = base is row
                out.append(f"| {scen} | {VARIANT_LABEL.get(v, v)} | {fmt(t)} | "
                           f"{'–' if same else ratio(t, bt)} | {fmt(d, 1)} | "
                           f"{'–' if same else ratio(d, bd)} |")
        out.append("")
    return out


def postcopy_section(paths):
    """Post-copy (bench/run.py --postcopy): blackout, total time and the
    guest's waits for pages, against pre-copy and multifd of the same run,
    and issue 14's goals checked against the medians."""
    out = []
    for path in paths:
        recs = records(path)
        runs = [r for r in recs if r.get("type") == "run"]
        if not any(r.get("postcopy") for r in runs):
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        end = next((r for r in recs if r.get("type") == "end"), {})
        if not out:
            with open(os.path.join(HERE, "postcopy.md")) as f:
                out += [f.read().rstrip(), ""]
        out += [run_source(path, machine), "",
                f"Load average (1 min) at the start {machine.get('loadavg_start', 0):.2f}, at "
                f"the end {end.get('loadavg_end', 0):.2f}.", "",
                "| scenario | variant | runs ok | auto-converge | total ms | vs pre-copy | "
                "blackout ms | vs QEMU pre-copy | VMM's downtime ms | switch ms | pages faulted | "
                "vCPU blocked ms | fault latency mean / max µs |",
                "|" + "---|" * 13]
        groups = group(runs)
        goals, failed = [], []
        for scen, rows in groups.items():
            qemu_pre = rows.get("qemu").s("downtime_ms") if rows.get("qemu") else None
            for v, row in rows.items():
                label = VARIANT_LABEL.get(v, v)
                if row.bad:
                    failed.append((scen, label, row))
                if not row.ok:
                    out.append(f"| {scen} | {label} | 0/{len(row.runs)} | | "
                               f"{cell(row.status() or 'no figure', 160)} |" + " |" * 8)
                    continue
                pre = rows.get("godwit" if v.startswith("godwit") else "qemu")
                t, d = row.s("total_ms"), row.s("downtime_ms")
                vs_pre = "–" if pre is row or not pre else ratio(t, pre.s("total_ms"))
                ac = "on" if row.runs[0].get("auto_converge") else "off"
                out.append(f"| {scen} | {label} | {len(row.ok)}/{len(row.runs)} | {ac} | "
                           f"{fmt(t)} | {vs_pre} | {fmt(d, 1)} | {ratio(d, qemu_pre)} | "
                           f"{fmt(row.s('vmm_downtime_ms'))} | {fmt(switch_wait(row))} | "
                           f"{faulted(row)} | "
                           f"{fmt(row.s('vcpu_blocked_ms'), 1)} | {latency(row)} |")
            g, gp = rows.get("godwit"), rows.get("godwit-postcopy")
            if gp and gp.ok:
                d, t = gp.s("downtime_ms"), gp.s("total_ms")
                goals.append(
                    f"| {scen} | {fmt(d, 1)} {'✓' if d[0] <= 5 else '✗'} | "
                    f"{ratio(d, qemu_pre)}{verdict(d, qemu_pre, 0.2)} | "
                    f"{ratio(t, g.s('total_ms') if g else None)}"
                    f"{verdict(t, g.s('total_ms') if g and g.ok else None, 1.5)} |")
        out.append("")
        if goals:
            out += ["Issue 14's goals for godwit's post-copy (medians; ✓ met, ✗ not met):", "",
                    "| scenario | blackout ≤ 5 ms | ≤ 0.2× QEMU's pre-copy blackout | "
                    "total ≤ 1.5× godwit's pre-copy |", "|---|---|---|---|", *goals, ""]
        if failed:
            out += ["Runs without a figure:", ""]
            for scen, label, row in failed:
                out += [f"- `{scen}`, {label}: " + "; ".join(
                    f"**{WORD.get(st, st)}**, run{'s' if len(reps) > 1 else ''} "
                    f"{', '.join(map(str, reps))} of {len(row.runs)}: {cell(err, 1000)}"
                    for st, err, reps in row.reasons())]
            out.append("")
    return out


def switch_wait(row):
    """migrate-start-postcopy sent -> the source's STOP: how long the
    source took to begin the switch."""
    return stats([r["stop_at_ms"] - r["postcopy_start_ms"] for r in row.ok
                  if r.get("postcopy_start_ms") is not None])


def faulted(row):
    """Pages the guest faulted on: godwit's pages-faulted; QEMU's source's
    postcopy-requests (godwit's counts its background pulls as well)."""
    st = row.s("postcopy_requests") if row.runs[0]["vmm"] == "qemu" else stats(
        [r["godwit_postcopy"]["pages-faulted"] for r in row.ok if r.get("godwit_postcopy")])
    return fmt(st)


def latency(row):
    """godwit measures each fault; QEMU only the vCPU's blocked time, so
    its mean is that over the pages asked for (≈: one wait may cover more
    than one request)."""
    if row.runs[0]["vmm"] == "qemu":
        st = stats([r["vcpu_blocked_ms"] * 1e3 / r["postcopy_requests"] for r in row.ok
                    if r.get("postcopy_requests")])
        return f"≈ {fmt(st)} / –" if st else "–"
    pcs = [r["godwit_postcopy"] for r in row.ok if r.get("godwit_postcopy")]
    if not pcs:
        return "–"
    return (f"{fmt(stats([p['fault-latency-mean-us'] for p in pcs]))} / "
            f"{fmt(stats([p['fault-latency-max-us'] for p in pcs]))}")


def verdict(a, b, limit):
    if not a or not b or not b[0]:
        return ""
    return " ✓" if a[0] / b[0] <= limit else " ✗"


def lazy_section(paths):
    """Lazy restore (bench/lazy.py): how soon a guest restored from a
    mapped-ram file runs, lazily or after a full restore, and how fast
    the page server fills RAM in each of its modes."""
    out = []
    for path in paths:
        recs = records(path)
        rows = [r for r in recs if r.get("type") == "lazy" and r.get("ok")]
        if not rows:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        if not out:
            out += ["## Lazy restore", "",
                    "A dirtier guest that wrote half its RAM, saved stopped into a mapped-ram "
                    "file (read back from the page cache), restored into a fresh godwit-vmm. "
                    "*running*: `migrate-incoming` sent until the guest runs (`cont` returned); "
                    "*full*: RAM read whole first; *lazy*: `x-godwit-lazy-restore`, the guest "
                    "runs once its sections are in and its faults are served from the file "
                    "while a background thread reads the rest; *complete*: the restore's "
                    "total-time; *fill*: the file's pages over the time the background alone "
                    "took to fill them (guest held paused), with MINOR faults and "
                    "UFFDIO_CONTINUE or with UFFDIO_COPY. Median (min–max).", ""]
        out += [run_source(path, machine), "",
                "| guest | running, full ms | running, lazy ms | lazy vs full | lazy complete ms "
                "| faults (mean / max latency µs) | fill CONTINUE MiB/s | fill COPY MiB/s |",
                "|---|---|---|---|---|---|---|---|"]
        for mib in sorted({r["memory_mib"] for r in rows}):
            def pick(variant, key):
                return stats([r[key] for r in rows if r["memory_mib"] == mib and
                              r["variant"] == variant and r.get(key) is not None])
            full, lazy = pick("full", "running_ms"), pick("lazy", "running_ms")
            lz = [r["lazy"] for r in rows if r["memory_mib"] == mib and r["variant"] == "lazy"]
            faults = stats([z["pages-faulted"] for z in lz])
            mean = stats([z["fault-latency-mean-us"] for z in lz])
            mx = stats([z["fault-latency-max-us"] for z in lz])
            out.append(f"| {mib // 1024 if mib >= 1024 else mib} {'GiB' if mib >= 1024 else 'MiB'} "
                       f"| {fmt(full)} | {fmt(lazy, 1)} | {ratio(lazy, full, 3)} | "
                       f"{fmt(pick('lazy', 'completed_ms'))} | "
                       f"{fmt(faults)} ({fmt(mean)} / {fmt(mx)}) | "
                       f"{fmt(pick('fill-continue', 'fill_mib_s'))} | "
                       f"{fmt(pick('fill-copy', 'fill_mib_s'))} |")
        out.append("")
    return out


def tls_section(paths):
    """TLS (bench/tls.py): the same migrations with and without TLS in
    one run, over loopback and the shaped link, against the machine's
    AES-GCM and plaintext TCP throughput."""
    out = []
    for path in paths:
        recs = records(path)
        rows = [r for r in recs if r.get("type") == "tls"]
        if not rows:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        lim = {r["name"]: r for r in recs if r.get("type") == "tls-limit"}
        if not out:
            out += ["## TLS", "",
                    "The same migration without and with TLS (`tls-creds` on both sides, "
                    "mutual X.509 authentication, TLS 1.3 with AES-256-GCM, GnuTLS's default), "
                    "alternating in one run; median (min–max). *written*: a 1 GiB guest that "
                    "wrote all its RAM once, stopped: one pass of 1 GiB of real pages, bound "
                    "by the channel (*MiB/s*: ram.transferred over total-time). *dirtying*: "
                    "the 1 GiB guest rewriting 101 MiB while it migrates. *downtime*: the "
                    "source's `x-godwit-downtime-us`. The record layer is GnuTLS's in user "
                    "space behind a socket pair (docs/architecture.md, \"TLS\"): "
                    + ("this kernel offers kernel TLS, but no row used it."
                       if machine.get("ktls") else
                       "this kernel has no kernel TLS, so there is no kTLS row.")
                    + " The machine has 2 cores that the guest's vCPUs, both VMMs and the "
                    "record layer's threads share; other work ran on it too.", ""]
        out += [run_source(path, machine), ""]
        parts = []
        for name, label in (("aes-128-gcm", "AES-128-GCM"), ("aes-256-gcm", "AES-256-GCM")):
            if name in lim:
                parts.append(f"{label} {lim[name]['bytes_s'] / 1e9:.2f} GB/s")
        for name, label in (("local-tcp-1", "loopback TCP, one stream"),
                            ("10gbit-0.2ms-tcp-1", "TCP across the 10 Gbit/s link")):
            if name in lim:
                parts.append(f"{label} {lim[name]['gbps']:.2f} GB/s")
        if parts:
            out += ["Limits measured in the same run (AES-GCM: `openssl speed -evp`, one core, "
                    "16 KiB records, the TLS record size): " + "; ".join(parts) + ".", ""]
        if "aes-256-gcm" in lim:
            per_gib = (1 << 30) / lim["aes-256-gcm"]["bytes_s"]
            out += [f"At the AES-256-GCM rate above, a GiB costs {per_gib:.2f} s of one core to "
                    f"encrypt and as much to decrypt; the record layer adds a copy through its "
                    f"socket pair on each side and a thread hand-off per 256 KiB. On a host "
                    f"whose two cores already run both VMMs, that CPU time is what TLS adds "
                    f"(compare *TLS / plain* with the link's share of it: a slower link hides "
                    f"more of the work).", ""]
        out += ["| link | guest | total ms, plain | total ms, TLS | TLS / plain | MiB/s, plain "
                "| MiB/s, TLS | downtime ms, plain | downtime ms, TLS |",
                "|---|---|---|---|---|---|---|---|---|"]
        for link in dict.fromkeys(r["link"] for r in rows):
            for workload in dict.fromkeys(r["workload"] for r in rows if r["link"] == link):
                def pick(variant, key):
                    return stats([r.get(key) for r in rows if r["link"] == link and
                                  r["workload"] == workload and r["variant"] == variant and
                                  r.get("ok")])
                failed = [r for r in rows if r["link"] == link and r["workload"] == workload
                          and not r.get("ok")]
                tp, tt = pick("plain", "total_ms"), pick("tls", "total_ms")
                out.append(f"| {link} | {workload} | {fmt(tp)} | {fmt(tt)} | {ratio(tt, tp)} | "
                           f"{fmt(pick('plain', 'mib_s'))} | {fmt(pick('tls', 'mib_s'))} | "
                           f"{fmt(pick('plain', 'downtime_ms'), 1)} | "
                           f"{fmt(pick('tls', 'downtime_ms'), 1)} |"
                           + (f" {len(failed)} failed: {cell(failed[0].get('error'), 120)}"
                              if failed else ""))
        out.append("")
    return out


def write(results_path, docs, extra=()):
    machine, limit_recs, runs, end = load(results_path)
    lv = limit_values(limit_recs)
    groups = group(runs)
    os.makedirs(docs, exist_ok=True)
    # Plots of scenarios this run did not have would outlive their page.
    for name in os.listdir(docs):
        if name.startswith("bench-progress-") and name.endswith(".png"):
            os.unlink(os.path.join(docs, name))
    with tempfile.TemporaryDirectory(prefix="gw-bench-plot-") as tmp:
        summary_png = drawn(plot_summary, groups, docs, tmp) if groups else None
        progress = {s: drawn(plot_progress, s, rows, docs, tmp) for s, rows in groups.items()}

    numbers = notes(groups)
    rel = os.path.relpath(results_path, os.path.dirname(os.path.abspath(docs)))
    out = ["# Benchmarks", "",
           "<!-- Generated by bench/run.py (bench/report.py); edit bench/method.md, "
           "bench/profile.md or the generator, not this file. -->", "",
           "godwit-vmm against QEMU on the same guest, and both against the limits of the "
           "machine they ran on, all measured in one run. Figures from different runs "
           "(or machines) are not comparable; ratios within this page are.", "",
           "## This run", "",
           f"- command: `{machine.get('command', '?')}`",
           f"- {machine.get('plan_note', '')}",
           f"- date: {machine.get('date', '?')}, took {end.get('elapsed_s', '?')} s",
           f"- CPU: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs; "
           f"RAM {machine.get('memory_gib', '?')} GiB; kernel {machine.get('kernel', '?')}",
           f"- {machine.get('qemu', '?')}; {machine.get('gcc', '?')}",
           f"- godwit: {machine.get('godwit_commit', '?')}",
           f"- load average (1 min) at the start {machine.get('loadavg_start', 0):.2f}, "
           f"at the end {end.get('loadavg_end', 0):.2f}: other work on the machine "
           "slows both VMMs alike, but makes the spread wider",
           f"- raw results: [`{rel}`](../{rel})"]
    if machine.get("refuse"):
        out.append("- **commands refused on purpose** (`--refuse` / `GW_BENCH_REFUSE`, to "
                   "show that a failing scenario does not stop the run): " +
                   "; ".join(f"{v}: {', '.join(c)}" for v, c in sorted(machine["refuse"].items()))
                   + ". The rows these make fail are not figures of the VMM.")
    if end.get("aborted"):
        out.append(f"- **the run stopped early** (a failure of the harness, not of a VMM): "
                   f"{cell(end['aborted'], 600)}")
    elif not end:
        out.append("- **the run did not finish**: this page shows what it measured before "
                   "it stopped")
    out.append("")
    out += ["## The machine's limits", "", *limits_table(lv), ""]
    out += ["## Summary", "",
            "Median of the runs, (min–max). *godwit/QEMU* below 1 means godwit is faster. "
            "*vs bound*: for data-bound scenarios the share of the link's measured TCP "
            "throughput the migration achieved (bytes sent / total time); for idle guests "
            "the total time over the time it takes to read all guest RAM once.", "",
            *summary_table(groups, lv, numbers), ""]
    if summary_png:
        out += [f"![total time and downtime per scenario]({summary_png})", ""]
    out += notes_section(groups, numbers)
    out += snapshot_section(results_path, lv)
    out += live_snapshot_section([results_path, *extra])
    out += local_update_section([results_path, *extra])
    out += disk_section([results_path, *extra])
    out += diskio_section([results_path, *extra])
    out += multifd_section(list(extra))
    out += postcopy_section(list(extra))
    out += lazy_section(list(extra))
    out += tls_section(list(extra))
    out += pause_section(list(extra))
    out += ["## Scenarios", ""]
    for scen, rows in groups.items():
        out += scenario_section(scen, rows, lv, progress.get(scen))
    for part in ("method.md", "profile.md"):
        with open(os.path.join(HERE, part)) as f:
            out += [f.read().rstrip(), ""]
    with open(os.path.join(docs, "benchmarks.md"), "w") as f:
        f.write("\n".join(out))


def compare(old_path, new_path):
    """Median total time and downtime of every row present in both runs.
    The machines, or their load, may differ: compare ratios (godwit/QEMU
    of each run) before absolute figures."""
    old, new = group(load(old_path)[2]), group(load(new_path)[2])
    print("| scenario | variant | total ms old → new | downtime ms old → new |")
    print("|---|---|---|---|")
    for scen, rows in new.items():
        for v, row in rows.items():
            o = old.get(scen, {}).get(v)
            if not o:
                continue
            print(f"| {scen} | {v} | {fmt(o.s('total_ms'))} → {fmt(row.s('total_ms'))} | "
                  f"{fmt(o.s('downtime_ms'))} → {fmt(row.s('downtime_ms'))} |")


def pause_section(paths):
    """pause-before-switchover (bench/pause_switchover.py): the downtime a
    manager that answers pre-switchover at once adds, against migrations
    without the capability in the same run."""
    out = []
    for path in paths:
        recs = records(path)
        rows = [r for r in recs if r.get("type") == "pause"]
        if not rows:
            continue
        machine = next((r for r in recs if r.get("type") == "machine"), {})
        without = stats([r["downtime_us"] for r in rows if not r["pause"]])
        with_ = stats([r["downtime_us"] for r in rows if r["pause"]])
        manager = stats([r["manager_us"] for r in rows if r["pause"]])
        out += ["## pause-before-switchover", "",
                "The same 128 MiB guest, dirtying 32 MiB, migrated back and forth over loopback "
                "TCP, alternately without and with `pause-before-switchover`; with it the "
                "benchmark is the manager and answers the `pre-switchover` event with "
                "`migrate-continue` at once. Downtime: the source's `x-godwit-downtime-us`; "
                "median (min–max), µs.", "", run_source(path, machine), "",
                "| | downtime µs | |", "|---|---|---|",
                f"| without the capability | {fmt(without)} | |",
                f"| with it, the manager answering at once | {fmt(with_)} | "
                f"{ratio(with_, without)} of without |",
                f"| the manager's side: the event's timestamp to `migrate-continue`'s reply | "
                f"{fmt(manager)} | |", ""]
    return out


def main():
    ap = argparse.ArgumentParser(description="Regenerate docs/benchmarks.md or compare runs.")
    ap.add_argument("results", nargs="*",
                    help="a bench/results/*.jsonl file; more files add their background-"
                         "snapshot rows (bench/run.py --live-snapshots), each with its own run's "
                         "figures")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(HERE), "docs"))
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.results:
        write(args.results[0], args.docs, args.results[1:])
    else:
        ap.error("give a results file, or --compare OLD NEW")


if __name__ == "__main__":
    sys.exit(main())
