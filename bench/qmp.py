"""A small QMP client for the benchmark: the same code drives QEMU and
godwit-vmm, so any difference in the figures comes from the VMMs, not from
how they were asked.

Events are kept with their own timestamps (the VMM stamps them from the
host's CLOCK_REALTIME when it emits them), because the guest-visible
downtime is the source's STOP to the destination's RESUME, and both
processes run on this host's clock.
"""
import json
import socket
import time


class QmpError(Exception):
    def __init__(self, cls, desc):
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


def event_time(ev):
    """An event's timestamp in seconds since the epoch (as time.time())."""
    ts = ev["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


class Qmp:
    def __init__(self, path, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.greeting = self._recv()
        self.cmd("qmp_capabilities")

    def close(self):
        self.sock.close()

    def _recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the VMM closed its QMP socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, args=None):
        """Run a command; return its "return" value or raise QmpError.
        Events that arrive meanwhile are kept for wait_event()."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self._recv()
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise QmpError(m["error"].get("class", "?"), m["error"].get("desc", ""))
            else:
                return m.get("return")

    def find_event(self, name, pred=None):
        for ev in self.events:
            if ev["event"] == name and (pred is None or pred(ev)):
                return ev
        return None

    def wait_event(self, name, pred=None, timeout=30.0):
        """The first event called name (matching pred) seen on this
        connection, waiting for it if need be; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.find_event(name, pred)
            if ev:
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                m = self._recv()
            except socket.timeout:
                continue
            finally:
                self.sock.settimeout(self.timeout)
            if "event" in m:
                self.events.append(m)
