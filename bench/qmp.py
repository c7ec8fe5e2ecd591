"""A small QMP client for the benchmark: the same code drives QEMU and
godwit-vmm, so any difference in the figures comes from the VMMs, not from
how they were asked.

Events are kept with their own timestamps (the VMM stamps them from the
host's CLOCK_REALTIME when it emits them), because the guest-visible
downtime is the source's STOP to the destination's RESUME, and both
processes run on this host's clock.

Command names: QEMU spells some commands with an underscore and some with
a dash, and has renamed a few over the years (QEMU 7.2 knows only
`migrate_cancel`; later releases add `migrate-cancel`). The harness always
writes the dashed name; each connection asks its VMM once which commands
it has (`query-commands`) and sends each command under the spelling that
VMM offers. A VMM without `query-commands` (godwit-vmm) gets the names as
written, and answers for itself.

Failures: everything a VMM can do wrong to the harness -- an error reply,
no reply in time, a closed socket, a reply that is not JSON -- raises
VmmError (QmpError for error replies), so the harness can fail the one
scenario and go on with the next.
"""
import json
import socket
import time

REPLY_TIMEOUT = 30.0


class VmmError(Exception):
    """The VMM failed the harness: the scenario fails, the run goes on."""


class QmpTimeout(VmmError):
    """No answer from the VMM in time."""


class QmpError(VmmError):
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
    """One QMP connection. `vmm` names the VMM in error messages ("QEMU",
    "godwit-vmm"); `refuse` is a set of command names this connection
    treats as absent from the VMM (see refused())."""

    def __init__(self, path, vmm="VMM", name="", timeout=REPLY_TIMEOUT):
        self.vmm, self.name = vmm, name
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.refuse = set()
        self.commands = None   # key -> the spelling this VMM offers; None: not known
        self.offered = set()   # every name query-commands listed
        try:
            self.greeting = self._recv("the QMP greeting")
            self.version = vmm_version(self.greeting)
            self._send("qmp_capabilities")
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
            listed = self._send("query-commands")
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
        if self.commands is None:
            return name
        if name in self.offered:
            return name
        if key in self.commands:
            return self.commands[key]
        raise self.not_found(name)

    def _recv(self, waiting_for):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise QmpTimeout(f"{self.who}: no answer to {waiting_for} within "
                                 f"{self.sock.gettimeout():.1f} s") from None
            except OSError as e:
                raise VmmError(f"{self.who}: QMP socket failed waiting for {waiting_for}: "
                               f"{e}") from e
            if not chunk:
                raise VmmError(f"{self.who} closed its QMP socket (waiting for "
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

    def _send(self, wire_name, args=None, asked=None):
        msg = {"execute": wire_name}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise VmmError(f"{self.who}: cannot send {wire_name}: {e}") from e
        while True:
            m = self._recv(f"'{wire_name}'")
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                err = m["error"] if isinstance(m["error"], dict) else {}
                cls, desc = err.get("class", "?"), err.get("desc", "")
                if cls == "CommandNotFound":
                    raise self.not_found(asked or wire_name)
                raise QmpError(cls, desc)
            elif "return" in m:
                return m["return"]
            # anything else (a stray greeting?) is not our reply

    def cmd(self, name, args=None):
        """Run a command; return its "return" value or raise QmpError.
        Events that arrive meanwhile are kept for wait_event()."""
        return self._send(self.spelling(name), args, asked=name)

    def find_event(self, name, pred=None):
        for ev in self.events:
            if ev.get("event") == name and (pred is None or pred(ev)):
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
                m = self._recv(f"event {name}")
            except QmpTimeout:
                continue
            finally:
                self.sock.settimeout(self.timeout)
            if "event" in m:
                self.events.append(m)
