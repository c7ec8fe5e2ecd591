"""The machine's limits: what no VMM can beat on this machine, measured
in the same run as the migrations so the ratios mean something.

The probes are small C programs in bench/src/, compiled here with the
system compiler into <build>/bench/ (no meson wiring needed: they are
not part of the product). Each prints one JSON line.
"""
import json
import os
import subprocess

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = ("memcpy", "net", "disk", "fault", "wire")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-pthread"]


def build(build_dir, names=PROGRAMS):
    """Compile the probes when their sources are newer; returns name -> path."""
    out_dir = os.path.join(build_dir, "bench")
    os.makedirs(out_dir, exist_ok=True)
    common = os.path.join(SRC, "common.h")
    paths = {}
    for name in names:
        src = os.path.join(SRC, name + ".c")
        exe = os.path.join(out_dir, "gw-bench-" + name)
        newest = max(os.path.getmtime(src), os.path.getmtime(common))
        if not os.path.exists(exe) or os.path.getmtime(exe) < newest:
            subprocess.run(["gcc", *CFLAGS, "-o", exe, src], check=True)
        paths[name] = exe
    return paths


def _json(argv):
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _in_ns(ns, argv):
    return (["ip", "netns", "exec", ns] if ns else []) + argv


def _net(net, uri, streams, seconds, region, server_ns=None, client_ns=None, rtt=0):
    """One throughput (or round-trip) measurement between two processes."""
    serve = [net, "--serve", uri, "--streams", str(streams)] + (["--rtt"] if rtt else [])
    server = subprocess.Popen(_in_ns(server_ns, serve))
    try:
        args = [net, "--connect", uri, "--streams", str(streams), "--seconds", str(seconds),
                "--region", region]
        if rtt:
            args.append(f"--rtt={rtt}")
        return _json(_in_ns(client_ns, args))
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Limits:
    """Runs the probes; every record carries a "name" the report uses."""

    def __init__(self, progs, tools, quick):
        self.p, self.tools, self.quick = progs, tools, quick
        self.records = []
        # Far larger than any cache either way; quick mode spends less
        # time populating buffers (page faults are slow here).
        self.region = "256M" if quick else "1G"

    def _add(self, name, rec):
        rec["name"] = name
        self.records.append(rec)
        return rec

    def machine(self, build_dir, ns=None):
        """memcpy, loopback sockets, disk, page faults. `ns` is where the
        local migrations run (the loopback of a namespace is the same
        code as the host's, but measure where the VMMs are)."""
        secs = 1 if self.quick else 2
        self._add("memcpy", _json([self.p["memcpy"], "--seconds", str(secs),
                                   "--size", "256M" if self.quick else "512M"]))
        sock = os.path.join(build_dir, "bench", "net.sock")
        for kind in ("tcp", "unix"):
            for streams in (1, 2):
                uri = (f"tcp:127.0.0.1:{self.tools.next_port()}" if kind == "tcp"
                       else "unix:" + sock)
                self._add(f"{kind}-{streams}",
                          _net(self.p["net"], uri, streams, secs, self.region, ns, ns))
        self._add("tcp-rtt", _net(self.p["net"], f"tcp:127.0.0.1:{self.tools.next_port()}",
                                  1, 0, "1M", ns, ns, rtt=1000))
        size = "512M" if self.quick else "1G"
        for threads in (1, 4):
            rec = _json([self.p["disk"], "--dir", build_dir, "--size", size,
                         "--threads", str(threads)])
            # Results are kept in the repository: name the disk by where it
            # is in the checkout, not by this machine's paths.
            rec["dir"] = os.path.relpath(build_dir, REPO)
            self._add(f"disk-{threads}", rec)
        self._add("fault", _json([self.p["fault"], "--size", self.region]))

    def link(self, hosts, link):
        """What the shaped link between the two namespaces carries: the
        bound for the migrations that cross it."""
        hosts.set_link(link.rate_bps, link.rtt_ms)
        secs = 2 if self.quick else 3
        for streams in (1, 2):
            uri = f"tcp:{hosts.addr[1]}:{self.tools.next_port()}"
            self._add(f"{link.name}-tcp-{streams}",
                      _net(self.p["net"], uri, streams, secs, self.region, hosts.ns[1],
                           hosts.ns[0]))
        uri = f"tcp:{hosts.addr[1]}:{self.tools.next_port()}"
        self._add(f"{link.name}-rtt", _net(self.p["net"], uri, 1, 0, "1M", hosts.ns[1],
                                           hosts.ns[0], rtt=200))
