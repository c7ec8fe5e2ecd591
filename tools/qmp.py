"""The QMP client of godwit's Python: the end-to-end tests
(tests/e2e/gwtest.py) and the benchmark (bench/) drive godwit-vmm, and the
benchmark QEMU as well, through this one class, so a figure or a test
result never depends on which of two clients asked. Python standard
library only.

Messages: replies and events arrive on one socket. Events that come while
a command waits for its reply are queued; wait_event() takes the first one
that matches from the queue, or waits for it, and find_event() looks
without taking. Each event keeps its own timestamp (the VMM stamps it
from the host's CLOCK_REALTIME when it emits it; event_time()), which is
how the benchmark measures the source's STOP to the destination's RESUME.

Command names: QEMU spells some commands with an underscore and some with
a dash, and has renamed a few over the years (QEMU 7.2 knows only
`migrate_cancel`; later releases add `migrate-cancel`). A connection made
with probe=True asks its VMM once which commands it has (`query-commands`)
and sends each command under the spelling that VMM offers; the caller
writes the dashed name. A VMM without `query-commands` gets the names as
written, and answers for itself. `refuse` makes a connection
treat commands as absent, to exercise that failure on purpose.

Failures: everything a VMM can do wrong to its client -- an error reply,
no reply in time, a closed socket, a message that is not JSON -- raises
VmmError: QmpError for error replies, QmpTimeout (also a TimeoutError) for
silence, QmpDisconnected (also a ConnectionError) for a socket that failed
or closed. A benchmark can fail the one scenario and go on; a test fails.
"""
import json
import socket
import struct
import time

REPLY_TIMEOUT = 30.0
EVENT_TIMEOUT = 30.0


class VmmError(Exception):
    """The VMM failed its client."""


class QmpTimeout(VmmError, TimeoutError):
    """No answer from the VMM in time."""


class QmpDisconnected(VmmError, ConnectionError):
    """The QMP socket failed or was closed by the VMM."""


class QmpError(VmmError):
    """An error reply: its class and desc as the VMM sent them."""

    def __init__(self, cls, desc):
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


def event_time(ev):
    """An event's timestamp in seconds since the epoch (as time.time())."""
    try:
        ts = ev["timestamp"]
        return ts["seconds"] + ts["microseconds"] / 1e6
    except (KeyError, TypeError):
        raise VmmError(f"an event without a usable timestamp: {str(ev)[:200]}") from None


def _key(name):
    """Both spellings of a command name compare equal under this."""
    return name.replace("_", "-")


def vmm_version(greeting):
    """'7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)' from a QMP greeting."""
    try:
        v = greeting["QMP"]["version"]
        q = v["qemu"]
        number = f"{q['major']}.{q['minor']}.{q['micro']}"
    except (KeyError, TypeError):
        return "(version unknown)"
    package = str(v.get("package") or "").strip()
    return f"{number} ({package})" if package and package != number else number


class Qmp:
    """One QMP connection to the socket at path ("\\0NAME" for an abstract
    one). The greeting is read at once; negotiate=False leaves the session
    before qmp_capabilities, for a caller that sends its own bytes
    (send_raw(), recv()). `vmm` and `name` say who this is in messages
    ("QEMU", process "vm3"); `timeout` bounds every wait for a reply."""

    def __init__(self, path, timeout=REPLY_TIMEOUT, negotiate=True, probe=False,
                 vmm="godwit-vmm", name=""):
        self.vmm, self.name = vmm, name
        self.timeout = timeout
        self.buf = b""
        self.events = []
        self.next_id = 0
        self.refuse = set()    # command names this connection treats as absent
        self.commands = None   # key -> the spelling this VMM offers; None: not known
        self.offered = set()   # every name query-commands listed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.greeting = self.recv("the QMP greeting")
            self.version = vmm_version(self.greeting)
            if negotiate:
                self.cmd("qmp_capabilities")
                if probe:
                    self._probe()
        except BaseException:
            self.sock.close()
            raise

    @property
    def who(self):
        """'QEMU 7.2.22 (Debian ...), process vm3' for error messages."""
        return f"{self.vmm} {getattr(self, 'version', '')}".strip() + \
            (f", process {self.name}" if self.name else "")

    def close(self):
        self.sock.close()

    def _probe(self):
        """Which commands this VMM has, under which spelling."""
        try:
            listed = self.cmd("query-commands")
        except QmpError as e:
            if e.cls != "CommandNotFound":
                raise
            return  # no list: names go out as written
        self.commands = {}
        for c in listed or []:
            name = c.get("name") if isinstance(c, dict) else None
            if isinstance(name, str):
                self.offered.add(name)
                # Both spellings offered (godwit-vmm has both cancels):
                # keep the one as written, the dashed one.
                if _key(name) not in self.commands or name == _key(name):
                    self.commands[_key(name)] = name

    def not_found(self, name, injected=False):
        """The error for a command this VMM does not have, either spelling."""
        other = name.replace("-", "_") if "-" in name else name.replace("_", "-")
        spelled = f"'{name}'" + (f" (nor '{other}')" if other != name else "")
        desc = f"{self.who} has no QMP command {spelled}"
        if injected:
            desc += (f" [refused by the harness on purpose: GW_BENCH_REFUSE / --refuse "
                     f"{_key(name)}]")
        return QmpError("CommandNotFound", desc)

    def spelling(self, name):
        """The name to send for `name`, as this VMM spells it; raises the
        not-found QmpError when it has neither spelling. A refused command
        is one the VMM does not have, on every path: the same error, from
        here, before anything is sent."""
        key = _key(name)
        if key in self.refuse:
            raise self.not_found(name, injected=True)
        if self.commands is None or name in self.offered:
            return name
        if key in self.commands:
            return self.commands[key]
        raise self.not_found(name)

    def send_raw(self, data):
        """Bytes as they are, for a caller that speaks the protocol itself;
        the socket's own errors (BrokenPipeError, ...) pass through."""
        self.sock.sendall(data)

    def recv(self, waiting_for="a QMP message"):
        """The next message from the VMM, event or reply, as a dict."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise QmpTimeout(f"{self.who}: no answer to {waiting_for} within "
                                 f"{self.sock.gettimeout():.1f} s") from None
            except OSError as e:
                raise QmpDisconnected(f"{self.who}: QMP socket failed waiting for "
                                      f"{waiting_for}: {e}") from e
            if not chunk:
                raise QmpDisconnected(f"{self.who} closed its QMP socket (waiting for "
                                      f"{waiting_for})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            m = json.loads(line)
        except ValueError:
            raise VmmError(f"{self.who} sent a QMP line that is not JSON: "
                           f"{line[:200]!r}") from None
        if not isinstance(m, dict):
            raise VmmError(f"{self.who} sent a QMP message that is not an object: "
                           f"{line[:200]!r}")
        return m

    def cmd(self, name, args=None, fd=None, **members):
        """Run a command; return its "return" value or raise QmpError.
        Arguments come as a dict (args), as keywords with '_' for '-'
        (cmd("migrate", uri=...), max_bandwidth=...), or both. fd, if
        given, travels with the command in SCM_RIGHTS (getfd, add-fd).
        Events that arrive meanwhile are queued for wait_event()."""
        args = dict(args or {}, **{k.replace("_", "-"): v for k, v in members.items()})
        wire_name = self.spelling(name)
        self.next_id += 1
        msg = {"execute": wire_name, "id": self.next_id}
        if args:
            msg["arguments"] = args
        try:
            data = json.dumps(msg).encode() + b"\n"
            if fd is not None:
                # The fd rides on the first byte; the rest follows as usual.
                self.sock.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                struct.pack("i", fd))])
                data = data[1:]
            self.sock.sendall(data)
        except OSError as e:
            raise QmpDisconnected(f"{self.who}: cannot send {wire_name}: {e}") from e
        while True:
            m = self.recv(f"'{wire_name}'")
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                err = m["error"] if isinstance(m["error"], dict) else {}
                cls, desc = err.get("class", "?"), err.get("desc", "")
                if cls == "CommandNotFound":
                    raise self.not_found(name)
                raise QmpError(cls, desc)
            elif "return" in m:
                return m["return"]
            # anything else (a stray greeting?) is not our reply

    def _queued(self, name, pred):
        """Where in the queue the first event called name (matching pred) is."""
        for i, ev in enumerate(self.events):
            if ev.get("event") == name and (pred is None or pred(ev)):
                return i
        return None

    def find_event(self, name, pred=None):
        """The first queued event called name (matching pred), left in the
        queue; None if there is none."""
        i = self._queued(name, pred)
        return None if i is None else self.events[i]

    def wait_event(self, name, pred=None, timeout=EVENT_TIMEOUT):
        """Take the first event called name (matching pred) from the queue,
        waiting up to timeout seconds for it to arrive; QmpTimeout if it
        does not. Taken, so the next wait for the same name waits for the
        next such event."""
        deadline = time.monotonic() + timeout
        while True:
            i = self._queued(name, pred)
            if i is not None:
                return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpTimeout(f"{self.who}: no {name} event within {timeout:.1f} s")
            self.sock.settimeout(left)
            try:
                m = self.recv(f"event {name}")
            except QmpTimeout:
                continue
            finally:
                self.sock.settimeout(self.timeout)
            if "event" in m:
                self.events.append(m)
