"""Hostile input on the QMP socket must cost one error reply, never the VMM.

One real godwit-vmm runs the dirtier guest while batches of malformed and
hostile messages arrive over many connections: truncated and split JSON,
megabyte strings, 100,000-deep nesting, wrong argument types for every
command, binary garbage, unknown commands, pipelined floods, connections
that close mid-message or stop reading. (SocketSafety, at the end: who
can connect at all.) Every error reply is checked for
QEMU's exact shape and text; after every batch a fresh client must get a
correct query-status and the guest must still be making progress. At the
end, quit must answer and the VMM must exit with status 0.

Uses the shared helpers in gwtest.py (Vmm launcher, Qmp client).
"""
import json
import os
import random
import socket
import stat
import subprocess
import time
import unittest

import gwtest
from gwtest import Qmp, Vmm, wait_until

RUNNING = {"running": True, "singlestep": False, "status": "running"}
MAX_MESSAGE = 1 << 20
# Resynchronises the server's framer from any state: a control byte is
# invalid both inside and outside strings, and the newline ends the skip.
RESYNC = b"\x01\n"



def string_positions(data):
    """Offsets i such that data[:i] ends inside a JSON string."""
    inside, escape, out = False, False, []
    for i, ch in enumerate(data):
        if inside:
            if escape:
                escape = False
            elif ch == ord("\\"):
                escape = True
            elif ch == ord('"'):
                inside = False
        elif ch == ord('"'):
            inside = True
        if inside:
            out.append(i + 1)
    return out


# Every command and its arguments, for the wrong-type batch.
NO_ARG_COMMANDS = ["query-status", "stop", "cont", "quit", "query-version",
                   "query-cpus-fast", "x-godwit-ram-hash", "x-godwit-query-guest"]
PMEMSAVE_ARGS = {"val": "integer", "size": "integer", "filename": "string"}
WRONG_VALUES = {
    "integer": ["0", 1.5, True, None, [], {}],
    "string": [1, 1.5, False, None, ["x"], {"x": 1}],
}


class Conn:
    """A raw QMP connection: bytes in, parsed replies out, nothing hidden."""

    def __init__(self, path, negotiate=True):
        self.q = Qmp(path, timeout=10.0, negotiate=False)
        assert set(self.q.greeting) == {"QMP"}, self.q.greeting
        if negotiate:
            self.send(b'{"execute": "qmp_capabilities"}\n')
            assert self.recv() == {"return": {}}

    def send(self, data):
        self.q.send_raw(data)

    def send_json(self, obj):
        self.send(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    def recv(self):
        """The next reply; events are kept for wait_event()."""
        while True:
            m = self.q.recv()
            if "event" not in m:
                return m
            self.q.events.append(m)

    def close(self):
        self.q.close()


class QmpRobustness(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.vm = Vmm(kernel=gwtest.DIRTIER, memory="32M", vcpus=2)
        cls.vm.wait_passes(1)
        cls.sent = 0
        cls.rng = random.Random(20240611)

    @classmethod
    def tearDownClass(cls):
        cls.vm.__exit__(None, None, None)

    # -- helpers --------------------------------------------------------

    def conn(self, negotiate=True):
        return Conn(self.vm.sock, negotiate)

    def count(self, n=1):
        type(self).sent += n

    def assert_error(self, reply, cls, desc, id_=None, has_id=False):
        want = {"error": {"class": cls, "desc": desc}}
        if has_id or id_ is not None:
            want["id"] = id_
        self.assertEqual(reply, want)

    def assert_generic(self, reply, desc_prefix=""):
        """An error of QEMU's shape whose text is not known exactly."""
        self.assertEqual(set(reply), {"error"}, reply)
        self.assertEqual(set(reply["error"]), {"class", "desc"}, reply)
        self.assertEqual(reply["error"]["class"], "GenericError", reply)
        self.assertTrue(reply["error"]["desc"].startswith(desc_prefix), reply)

    def expect(self, c, request, cls, desc, has_id=True):
        """Send one request (a dict, with a fresh id) and check the error."""
        id_ = self.sent
        request = dict(request, id=id_) if has_id else request
        c.send_json(request)
        self.count()
        self.assert_error(c.recv(), cls, desc, id_ if has_id else None, has_id)

    def check_alive(self):
        """A fresh client works and the guest is still running."""
        before = self.vm.passes()
        q = Qmp(self.vm.sock, timeout=10.0)
        try:
            self.assertEqual(q.cmd("query-status"), RUNNING)
        finally:
            q.close()
        self.assertIsNone(self.vm.proc.poll(), "godwit-vmm exited")
        gwtest.wait_until(lambda: all(p > b for p, b in zip(self.vm.passes(), before)),
                          10, "the guest to make progress")
        self.assertFalse(self.vm.guest()["check-failed"])

    def query_status_after(self, c, id_):
        """Check the replies that garbage caused, however many, until the
        query-status sent now answers."""
        c.send_json({"execute": "query-status", "id": id_})
        while True:
            r = c.recv()
            if r.get("id") == id_:
                self.assertEqual(r, {"return": RUNNING, "id": id_})
                return
            if "return" in r:  # garbage that happened to be a valid request
                self.assertLessEqual(set(r), {"return", "id"}, r)
                continue
            self.assertLessEqual(set(r), {"error", "id"}, r)
            self.assertEqual(set(r["error"]), {"class", "desc"}, r)
            self.assertIn(r["error"]["class"], ("GenericError", "CommandNotFound"), r)
            self.assertIsInstance(r["error"]["desc"], str)

    # -- batches (run in name order) -------------------------------------

    def test_01_before_negotiation(self):
        c = self.conn(negotiate=False)
        for name in NO_ARG_COMMANDS + ["pmemsave", "no-such-command"]:
            self.expect(c, {"execute": name}, "CommandNotFound",
                        "Expecting capabilities negotiation with 'qmp_capabilities'")
        # Malformed requests are malformed whatever the state.
        self.expect(c, {"execute": 1}, "GenericError",
                    "QMP input member 'execute' must be a string")
        self.expect(c, {"execute": "qmp_capabilities", "arguments": {"enable": "oob"}},
                    "GenericError", "Invalid parameter type for 'enable', expected: array")
        self.expect(c, {"execute": "qmp_capabilities", "arguments": {"enable": [1]}},
                    "GenericError", "Invalid parameter type for 'enable[0]', expected: string")
        self.expect(c, {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}},
                    "GenericError", "Capability oob not available")
        self.expect(c, {"execute": "qmp_capabilities", "arguments": {"bogus": 1}},
                    "GenericError", "Parameter 'bogus' is unexpected")
        # Events go only to negotiated clients: stop/cont elsewhere must not
        # reach this one, so its next message is the reply below.
        other = self.conn()
        other.send_json({"execute": "stop"})
        self.assertEqual(other.recv(), {"return": {}})
        other.send_json({"execute": "cont"})
        self.assertEqual(other.recv(), {"return": {}})
        self.assertEqual(other.q.wait_event("STOP")["event"], "STOP")
        self.assertEqual(other.q.wait_event("RESUME")["event"], "RESUME")
        other.close()
        self.count(2)
        c.send_json({"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": "n"})
        self.assertEqual(c.q.recv(), {"return": {}, "id": "n"})
        self.expect(c, {"execute": "qmp_capabilities"}, "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored")
        c.close()
        self.check_alive()

    def test_02_request_shape(self):
        c = self.conn()
        for value in (b"[1, 2]", b"123 ", b'"execute"', b"null ", b"true ", b"-1.5e3 ", b"[]"):
            c.send(value + b"\n")
            self.count()
            self.assert_error(c.recv(), "GenericError", "QMP input must be a JSON object")
        for word in (b"foo", b"nul", b"True", b"0x10", b"--1", b"1.2.3"):
            c.send(word + b"\n")
            self.count()
            self.assert_generic(c.recv(), "JSON parse error, ")
        self.expect(c, {}, "GenericError", "QMP input lacks member 'execute'", has_id=False)
        self.expect(c, {"arguments": {}}, "GenericError", "QMP input lacks member 'execute'")
        for bad in (1, None, [], {}, True, 1.5):
            self.expect(c, {"execute": bad}, "GenericError",
                        "QMP input member 'execute' must be a string")
        for bad in ([], "x", 1, None, True):
            self.expect(c, {"execute": "query-status", "arguments": bad}, "GenericError",
                        "QMP input member 'arguments' must be an object")
        for member in ("exec-oob", "control", "Execute", "", "é", "x" * 300):
            self.expect(c, {"execute": "query-status", member: 1}, "GenericError",
                        f"QMP input member '{member}' is unexpected")
        for name in ("no-such-command", "", "query_status", "QUERY-STATUS", "stop ",
                     "\u00e9\u00e8", "x" * 400, "a\nb", "x-no-such-command", "human-monitor-command"):
            self.expect(c, {"execute": name}, "CommandNotFound",
                        f"The command {name} has not been found")
        # Every JSON type is a valid id and comes back unchanged.
        for id_ in (0, -1, 2**62, 1.25, "s", "", "é\u2603", [1, [2]], {"a": {"b": None}},
                    True, False, None):
            c.send_json({"execute": "query-status", "id": id_})
            self.count()
            self.assertEqual(c.recv(), {"return": RUNNING, "id": id_})
        c.send(b'{"execute": "query-status", "id": 1, "id": 2}\n')
        self.count()
        self.assert_generic(c.recv(), "JSON parse error, duplicate object key")
        c.close()
        self.check_alive()

    def test_03_wrong_argument_types(self):
        c = self.conn()
        for name in NO_ARG_COMMANDS:
            for key, value in (("x", 1), ("val", 0), ("", None), ("é", "é")):
                self.expect(c, {"execute": name, "arguments": {key: value}},
                            "GenericError", f"Parameter '{key}' is unexpected")
        good = {"val": 0, "size": 4096, "filename": os.path.join(self.vm.dir, "pm.bin")}
        for arg, typ in PMEMSAVE_ARGS.items():
            for value in WRONG_VALUES[typ]:
                self.expect(c, {"execute": "pmemsave", "arguments": dict(good, **{arg: value})},
                            "GenericError",
                            f"Invalid parameter type for '{arg}', expected: {typ}")
            missing = {k: v for k, v in good.items() if k != arg}
            self.expect(c, {"execute": "pmemsave", "arguments": missing},
                        "GenericError", f"Parameter '{arg}' is missing")
        self.expect(c, {"execute": "pmemsave"}, "GenericError", "Parameter 'val' is missing")
        # QEMU reports types and missing members before unexpected ones.
        self.expect(c, {"execute": "pmemsave", "arguments": {"zzz": 1, "val": "0"}},
                    "GenericError", "Invalid parameter type for 'val', expected: integer")
        self.expect(c, {"execute": "pmemsave", "arguments": dict(good, zzz=1)},
                    "GenericError", "Parameter 'zzz' is unexpected")
        self.expect(c, {"execute": "pmemsave", "arguments": dict(good, val=-1)},
                    "GenericError", "Parameter 'val' expects a non-negative value")
        self.expect(c, {"execute": "pmemsave", "arguments": dict(good, size=-4096)},
                    "GenericError", "Parameter 'size' expects a non-negative value")
        ram = 32 << 20
        for val, size in ((ram, 1), (ram - 4096, 8192), (2**62, 4096), (4096, 2**63 - 1)):
            self.expect(c, {"execute": "pmemsave",
                            "arguments": dict(good, val=val, size=size)},
                        "GenericError",
                        f"pmemsave: 0x{size:x} bytes at 0x{val:x} are not all guest RAM "
                        f"(guest RAM is 0x{ram:x} bytes from 0)")
        for path in ("/nonexistent-dir/x.bin", self.vm.dir, ""):
            c.send_json({"execute": "pmemsave", "arguments": dict(good, filename=path)})
            self.count()
            self.assert_generic(c.recv(), f"pmemsave: cannot open '{path}': ")
        # A valid one still works, with the range it was asked for.
        c.send_json({"execute": "pmemsave", "arguments": dict(good, val=ram - 8192, size=8192)})
        self.count()
        self.assertEqual(c.recv(), {"return": {}})
        self.assertEqual(os.path.getsize(good["filename"]), 8192)
        c.close()
        self.check_alive()

    def test_04_truncated_json(self):
        whole = (b'{"execute": "pmemsave", "arguments": {"val": -12, "size": 1.5e3, '
                 b'"filename": "a\\"\\u00e9\\\\b"}, "id": [true, false, null, "\xc3\xa9"]}')
        # Cut anywhere, then the connection closes: nothing to answer.
        for cut in range(1, len(whole), 3):
            c = self.conn()
            c.send(whole[:cut])
            c.close()
            self.count()
        # Cut inside a string (after a backslash too), then a newline: a raw
        # newline is invalid there, so the message is refused at once and
        # the next one is served.
        c = self.conn()
        in_string = string_positions(whole)
        for cut in in_string:
            c.send(whole[:cut] + b"\n")
            self.count()
            self.assert_error(c.recv(), "GenericError",
                              "JSON parse error, stray byte 0x0a in string")
        # Cut outside a string: a newline is whitespace there, so only a
        # byte that is invalid everywhere ends it.
        for cut in range(1, len(whole)):
            if cut not in in_string:
                c.send(whole[:cut] + RESYNC)
                self.count()
                self.assert_error(c.recv(), "GenericError", "JSON parse error, stray byte 0x01")
        c.send_json({"execute": "query-status", "id": "after"})
        self.assertEqual(c.recv(), {"return": RUNNING, "id": "after"})
        c.close()
        self.check_alive()

    def test_05_huge_strings(self):
        c = self.conn()
        for size in (MAX_MESSAGE, 2 * MAX_MESSAGE, 4 * MAX_MESSAGE + 17):
            c.send(b'{"execute": "query-status", "arguments": {"s": "'
                   + b"A" * size + b'"}, "id": 1}\n')
            self.count()
            self.assert_error(c.recv(), "GenericError",
                              f"JSON parse error, message longer than {MAX_MESSAGE} bytes")
            # The oversized message is skipped exactly: the next one works.
            c.send_json({"execute": "query-status", "id": size})
            self.assertEqual(c.recv(), {"return": RUNNING, "id": size})
        # Just under the limit: parsed, and refused for what it says.
        c.send_json({"execute": "query-status", "arguments": {"s": "B" * (MAX_MESSAGE - 100)}})
        self.count()
        self.assert_error(c.recv(), "GenericError", "Parameter 's' is unexpected")
        # A long name is echoed cut to fit, on a character boundary.
        for name in ("C" * 500_000, "\u00e9" * 300_000, "\u2603" * 200_000):
            c.send_json({"execute": name})
            self.count()
            r = c.recv()
            self.assertEqual(r["error"]["class"], "CommandNotFound")
            desc = r["error"]["desc"]
            self.assertTrue(desc.startswith("The command " + name[0] * 100), desc[:40])
            self.assertLess(len(desc.encode()), 512)
        # A huge top-level string and a huge bare word.
        c.send(b'"' + b"D" * (3 * MAX_MESSAGE) + b'"\n')
        self.count()
        self.assert_error(c.recv(), "GenericError",
                          f"JSON parse error, message longer than {MAX_MESSAGE} bytes")
        c.send(b"E" * (2 * MAX_MESSAGE) + b"\n")
        self.count()
        self.assert_error(c.recv(), "GenericError",
                          f"JSON parse error, message longer than {MAX_MESSAGE} bytes")
        c.send_json({"execute": "query-status", "id": "after"})
        self.assertEqual(c.recv(), {"return": RUNNING, "id": "after"})
        c.close()
        self.check_alive()

    def test_06_deep_nesting(self):
        c = self.conn()
        for opener, closer in ((b"[", b"]"), (b"{", b"}"), (b'{"a":', b"}")):
            c.send(opener * 100_000 + closer * 100_000 + b"\n")
            self.count()
            self.assert_error(c.recv(), "GenericError",
                              "JSON parse error, nesting deeper than 1024 levels")
        # Deep but allowed: jansson parses it, the command refuses it.
        deep = "[" * 1000 + "]" * 1000
        c.send(b'{"execute": "query-status", "arguments": {"x": ' + deep.encode() + b"}}\n")
        self.count()
        self.assert_error(c.recv(), "GenericError", "Parameter 'x' is unexpected")
        c.send_json({"execute": "query-status", "id": "after"})
        self.assertEqual(c.recv(), {"return": RUNNING, "id": "after"})
        # Opened and never closed, then gone.
        c.send(b"[" * 100_000)
        c.close()
        self.count()
        self.check_alive()

    def test_07_binary_garbage(self):
        for i in range(8):
            c = self.conn(negotiate=i % 2 == 0)
            garbage = self.rng.randbytes(4096 * (i + 1))
            c.send(garbage + RESYNC)
            self.count()
            if i % 2:
                c.send(b'{"execute": "qmp_capabilities"}\n')
                while c.recv() != {"return": {}}:
                    pass
            self.query_status_after(c, f"garbage-{i}")
            c.close()
        # Garbage that is nearly JSON: random tokens.
        tokens = [b"{", b"}", b"[", b"]", b":", b",", b'"x"', b"1", b"true", b"null", b" ",
                  b'"execute"', b'"query-status"', b'"\\u12"', b"\\", b"-", b"e5"]
        c = self.conn()
        for i in range(40):
            c.send(b"".join(self.rng.choice(tokens) for _ in range(60)) + RESYNC)
            self.count()
        self.query_status_after(c, "tokens")
        c.close()
        self.check_alive()

    def test_08_split_byte_by_byte(self):
        c = self.conn()
        messages = [
            (b'{"execute": "pmemsave", "arguments": {"val": -1, "size": 1.5e3, '
             b'"filename": "\\u00e9x\\"y"}, "id": [true, false, null, -0.5, "\xc3\xa9"]}',
             {"error": {"class": "GenericError",
                        "desc": "Invalid parameter type for 'size', expected: integer"},
              "id": [True, False, None, -0.5, "\u00e9"]}),
            (b'  {"execute":"query-status","id":"\\u2603\xe2\x98\x83"}\r\n',
             {"return": RUNNING, "id": "\u2603\u2603"}),
            (b'{"execute": "no-such", "id": -12345678901234}',
             {"error": {"class": "CommandNotFound",
                        "desc": "The command no-such has not been found"},
              "id": -12345678901234}),
            (b'[1, 2.5e-3, "\\\\", {}]', {"error": {"class": "GenericError",
                                                 "desc": "QMP input must be a JSON object"}}),
        ]
        for raw, want in messages * 3:
            for i in range(len(raw)):
                c.send(raw[i:i + 1])
                if i % 4 == 0:
                    time.sleep(0.0002)
            self.count()
            self.assertEqual(c.recv(), want)
        c.close()
        self.check_alive()

    def test_09_many_in_one_write(self):
        c = self.conn()
        batch, want = [], []
        for i in range(400):
            kind = i % 4
            if kind == 0:
                batch.append({"execute": "nope", "id": i})
                want.append({"error": {"class": "CommandNotFound",
                                       "desc": "The command nope has not been found"}, "id": i})
            elif kind == 1:
                batch.append({"execute": "pmemsave", "arguments": {"val": [i]}, "id": i})
                want.append({"error": {"class": "GenericError", "desc":
                                       "Invalid parameter type for 'val', expected: integer"},
                             "id": i})
            elif kind == 2:
                batch.append({"execute": "query-status", "arguments": {"i": i}, "id": i})
                want.append({"error": {"class": "GenericError",
                                       "desc": "Parameter 'i' is unexpected"}, "id": i})
            else:
                batch.append({"execute": "query-status", "id": i})
                want.append({"return": RUNNING, "id": i})
        # No separators at all, as QEMU accepts them.
        c.send(b"".join(json.dumps(m).encode() for m in batch))
        self.count(300)
        self.assertEqual([c.recv() for _ in want], want)
        c.close()
        self.check_alive()

    def test_10_closed_mid_message_and_not_reading(self):
        partials = [b'{"execute": "query-st', b'{"execute": "query-status", "argu',
                    b'{"a": "\\', b"123", b"[[[[", b'"abc', b"\xc3",
                    b'{"execute": "x", "s": "' + b"F" * (MAX_MESSAGE + 10)]
        for i in range(40):
            c = self.conn(negotiate=i % 2 == 0)
            c.send(partials[i % len(partials)])
            self.count()
            # Closing with a reset (unread data) as well as a clean close.
            if i % 3 == 0:
                c.q.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        # Requests whose replies nobody reads, then gone.
        for _ in range(5):
            c = self.conn()
            c.send(json.dumps({"execute": "query-version", "id": "x" * 1000}).encode() * 500)
            self.count()
            c.close()
        # A client that never reads: past 16 MiB of pending output the VMM
        # drops it instead of growing.
        c = self.conn()
        big_id = "G" * (MAX_MESSAGE - 200)
        request = json.dumps({"execute": "query-status", "id": big_id}).encode()
        try:
            for _ in range(30):
                c.send(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.count()
        replies = 0
        try:
            while True:
                c.recv()
                replies += 1
        except (ConnectionError, OSError):
            pass
        self.assertLess(replies, 20, "a client that does not read was not dropped")
        c.close()
        self.assertIn("stopped reading", self.vm.stderr_text())
        self.check_alive()

    def test_11_many_clients_and_events(self):
        clients = [self.conn() for _ in range(20)]
        hostile = [self.conn() for _ in range(5)]
        for h in hostile:
            h.send(b'{"execute": "query-status", "arguments": {"a": "half a mess')
        clients[0].send_json({"execute": "stop"})
        self.assertEqual(clients[0].recv(), {"return": {}})
        clients[0].send_json({"execute": "cont"})
        self.assertEqual(clients[0].recv(), {"return": {}})
        for c in clients:
            for name in ("STOP", "RESUME"):
                ev = c.q.wait_event(name)
                self.assertEqual(set(ev), {"event", "timestamp"}, ev)
                self.assertEqual(set(ev["timestamp"]), {"seconds", "microseconds"})
        for i, c in enumerate(clients):
            c.send_json({"execute": "query-status", "id": i})
        for i, c in enumerate(clients):
            self.assertEqual(c.recv(), {"return": RUNNING, "id": i})
            c.close()
        for h in hostile:
            h.send(b'age"}}\n')
            self.assert_error(h.recv(), "GenericError", "Parameter 'a' is unexpected")
            h.close()
        self.count(len(hostile))
        self.check_alive()

    def test_12_mutations(self):
        """Valid requests with random bytes deleted, changed, inserted or
        repeated: whatever they turn into, the replies keep QEMU's shape."""
        corpus = [json.dumps(m).encode() for m in (
            {"execute": "query-status", "id": 1},
            {"execute": "query-version", "arguments": {}, "id": "v"},
            {"execute": "x-godwit-query-guest", "id": [1, {"a": None}]},
            {"execute": "query-cpus-fast", "id": -2.5},
            # Into a missing directory inside the test's own: a mutation
            # that makes it valid writes nowhere else.
            {"execute": "pmemsave", "arguments": {
                "val": 4096, "size": 4096,
                "filename": os.path.join(self.vm.dir, "missing", "x.bin")}},
        )]
        specials = b'{}[]":,\\ \r\n\t\x00\x01\x7f\xc3\xa9\xff0-e.tfnu'
        c = self.conn()
        for i in range(500):
            m = bytearray(self.rng.choice(corpus))
            for _ in range(self.rng.randint(1, 3)):
                at = self.rng.randrange(len(m))
                op = self.rng.randrange(4)
                if op == 0:
                    del m[at]
                elif op == 1:
                    m[at] = self.rng.choice(specials)
                elif op == 2:
                    m.insert(at, self.rng.choice(specials))
                else:
                    m[at:at] = m[at:at + self.rng.randint(1, 20)]
            c.send(bytes(m) + RESYNC)
            self.count()
            if i % 100 == 99:
                self.query_status_after(c, f"mutations-{i}")
        c.close()
        self.check_alive()

    def test_99_quit(self):
        self.assertGreaterEqual(self.sent, 1000, "fewer hostile messages than promised")
        self.assertFalse(self.vm.guest()["check-failed"])
        q = Qmp(self.vm.sock, timeout=10.0)
        self.assertEqual(q.cmd("quit"), {})
        ev = q.wait_event("SHUTDOWN")
        self.assertEqual(ev["data"], {"guest": False, "reason": "host-qmp-quit"})
        q.close()
        self.assertEqual(self.vm.wait(), 0, self.vm.stderr_text())
        self.assertFalse(os.path.exists(self.vm.sock), "the QMP socket was left behind")
        # UBSan reports without failing the process.
        self.assertNotIn("runtime error", self.vm.stderr_text())
        print(f"{self.sent} hostile messages", end=" ... ", flush=True)


NOBODY = 65534


def connect_as_nobody(addr):
    """Connect to addr as user nobody (we are root): "connected", or the
    error's name. A forked child, so no program needs to be readable."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(addr)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 13: "PermissionError"}.get(os.waitstatus_to_exitcode(status),
                                                       "failed")


def abstract_listening(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect("\0" + name)
            return True
        except OSError:
            return False


class SocketSafety(unittest.TestCase):
    """Whoever can connect controls the VM: the socket file is 0600 and an
    abstract socket (no file, so no mode) is made only when asked for."""

    def test_socket_file_is_0600_whatever_the_umask(self):
        old = os.umask(0)
        try:
            vm = Vmm(kernel=gwtest.IDLE, memory="32M")
        finally:
            os.umask(old)
        with vm:
            st = os.lstat(vm.sock)
            self.assertTrue(stat.S_ISSOCK(st.st_mode), oct(st.st_mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, oct(st.st_mode))
            self.assertEqual(st.st_uid, os.geteuid())
            if os.geteuid() == 0:
                # Open the directory, so only the socket's own mode keeps
                # another user out.
                os.chmod(vm.dir, 0o755)
                self.assertEqual(connect_as_nobody(vm.sock), "PermissionError")
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")

    def test_refused_addresses(self):
        cases = {
            "unix:": "missing the socket path (an empty one would bind an abstract socket",
            "unix:@gw-e2e": "'@' names an abstract socket, which has no file mode: any local "
                            "user could connect and control the VM. Add ,abstract=on",
            "unix:,abstract=on": "missing the abstract socket's name",
            "unix:@,abstract=on": "missing the abstract socket's name",
            "tcp:127.0.0.1:4444": "only unix:PATH is supported",
            "unix:/tmp/" + "x" * 120: "the socket path is 125 bytes, a unix socket address "
                                      "holds at most 107",
        }
        for spec, why in cases.items():
            with self.subTest(spec=spec):
                r = subprocess.run([gwtest.VMM, "--kernel", gwtest.IDLE, "--qmp", spec],
                                   capture_output=True, text=True, timeout=10)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(f"godwit-vmm: --qmp '{spec}': {why}", r.stderr)

    def test_abstract_when_asked_for(self):
        name = f"gw-e2e-qmp-{os.getpid()}"
        with Vmm(kernel=gwtest.IDLE, memory="32M", qmp=False,
                 extra=["--qmp", f"unix:@{name},abstract=on"]) as vm:
            wait_until(lambda: abstract_listening(name) or vm.proc.poll() is not None, 10,
                       "the abstract QMP socket")
            self.assertIsNone(vm.proc.poll(), vm.stderr_text())
            q = Qmp("\0" + name, timeout=10.0)
            self.assertEqual(q.cmd("query-status")["status"], "running")
            if os.geteuid() == 0:
                # What docs/qmp.md warns about: no mode protects it.
                self.assertEqual(connect_as_nobody("\0" + name), "connected")
            self.assertEqual(q.cmd("quit"), {})
            q.close()
            self.assertEqual(vm.wait(), 0, vm.stderr_text())
            self.assertFalse(os.path.exists(name), "a file made for an abstract socket")


if __name__ == "__main__":
    gwtest.main()
