"""Two "hosts" on one machine: two network namespaces joined by a shaped
link, so a migration crosses a network with a chosen rate and round trip.

The link is gw-bench-wire (bench/src/wire.c): two TUN devices, one in each
namespace, and a process in between that delays and rate-limits every
packet. tc's netem would do the same inside the kernel, but the kernels
this runs on may be built without netem (the CI machines are), and a
benchmark that silently measures an unshaped link is worse than none.
The wire's MTU is 64 KiB: a userspace hop per 1500-byte packet could not
keep up with 10 Gbit/s, and the kernel sends TSO-sized packets to a real
NIC too.

QMP sockets are unix sockets in the file system, which every namespace
shares, so the harness drives VMMs on both sides the same way. Every VMM
of a chain (see run.py) runs in one of the two namespaces: "local"
migrations use the loopback device of the namespace the guest is in,
"link" migrations cross the wire to the other namespace.
"""
import os
import subprocess


class LinkError(RuntimeError):
    """The shaped link cannot be set: the scenario that needs it fails."""


def _ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """Create on enter; delete on exit, always (namespaces outlive the
    process that made them)."""

    def __init__(self, wire_binary):
        tag = os.getpid()
        self.wire_binary = wire_binary
        self.ns = [f"gwbench{tag}a", f"gwbench{tag}b"]
        self.dev = [f"gwb{tag}a"[:15], f"gwb{tag}b"[:15]]
        self.addr = ["10.197.0.1", "10.197.0.2"]
        self.wire = None
        self.shape = None

    def __enter__(self):
        try:
            self.wire = subprocess.Popen([self.wire_binary, *self.dev],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
            if self.wire.stdout.readline().strip() != "ready":
                raise RuntimeError("gw-bench-wire did not start")
            for i, ns in enumerate(self.ns):
                peer = self.addr[1 - i]
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("link", "set", self.dev[i], "netns", ns)
                _ip("-n", ns, "addr", "add", self.addr[i], "peer", peer, "dev", self.dev[i])
                _ip("-n", ns, "link", "set", self.dev[i], "up")
        except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
            self.__exit__()
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else e
            raise RuntimeError(f"cannot set up the two-namespace link: {detail}") from e
        return self

    def __exit__(self, *exc):
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.wire:
            self.wire.stdin.close()
            try:
                self.wire.wait(5)
            except subprocess.TimeoutExpired:
                self.wire.kill()
                self.wire.wait()
            self.wire = None

    def set_link(self, rate_bps, rtt_ms):
        """Shape both directions: rate, and half the round trip each way."""
        if self.wire is None or self.wire.poll() is not None:
            raise LinkError(f"gw-bench-wire is not running (status "
                            f"{self.wire.returncode if self.wire else None})")
        try:
            self.wire.stdin.write(f"{int(rate_bps)} {int(rtt_ms * 1000 / 2)}\n")
            self.wire.stdin.flush()
            answer = self.wire.stdout.readline().strip()
        except OSError as e:
            raise LinkError(f"gw-bench-wire: {e}") from e
        if answer != "ok":
            raise LinkError(f"gw-bench-wire did not accept the link settings ({answer!r})")
        self.shape = (rate_bps, rtt_ms)
