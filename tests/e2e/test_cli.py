"""The godwit command line: migrations driven and followed with
`godwit migrate --wait`, the other migration commands, and
`godwit analyze` on streams that real godwit-vmm processes wrote."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import unittest

import gwtest
from gwtest import destination, dirtier, free_port, wait_migration, wait_until

# A line of `migrate --wait` when stdout is not a terminal:
# "[1.93 s] active, round 2: 55%, 31.8 MiB sent, ..."
PROGRESS = re.compile(r"^\[(?P<time>[0-9.]+ m?s|\d+ min \d+ s)\] (?P<status>\w+)"
                      r"(, round (?P<round>\d+): (?P<pct>\d+)%)?")


def cli(*args, stdin=None, timeout=120):
    return subprocess.run([gwtest.CLI, *args], capture_output=True, text=True, stdin=stdin,
                          timeout=timeout)


def ms(text):
    """Milliseconds of a progress line's "[...]" time."""
    m = re.fullmatch(r"(\d+) min (\d+) s", text)
    if m:
        return int(m[1]) * 60000 + int(m[2]) * 1000
    value, unit = text.split()
    return float(value) * (1 if unit == "ms" else 1000)


class Migrate(unittest.TestCase):
    def test_wait_shows_progress_and_summary(self):
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        with dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                # Slow enough for several rounds, then unlimited to converge.
                r = cli("-s", src.sock, "migrate-set", "max-bandwidth=16M")
                self.assertEqual(r.returncode, 0, r.stderr)
                p = subprocess.Popen([gwtest.CLI, "-s", src.sock, "migrate", "--wait", uri],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    wait_until(lambda: src.qmp.cmd("query-migrate").get("ram", {})
                               .get("dirty-sync-count", 0) >= 3, 60, "three rounds")
                    r = cli("-s", src.sock, "migrate-set", "max-bandwidth=0")
                    self.assertEqual(r.returncode, 0, r.stderr)
                    out, err = p.communicate(timeout=120)
                finally:
                    p.kill()
                self.assertEqual(p.returncode, 0, out + err)
                self.assertEqual(err, "")

                lines = out.splitlines()
                progress = [PROGRESS.match(l) for l in lines if PROGRESS.match(l)]
                self.assertGreaterEqual(len(progress), 2, out)
                active = [m.string for m in progress if m["status"] == "active"]
                self.assertTrue(active, out)
                for line in active:
                    self.assertRegex(line, r"round \d+: \d+%, .* sent, .* left, .*B/s, "
                                           r"dirtying .*B/s, expected downtime ", line)
                # No more than one line per round and per second.
                for a, b in zip(progress, progress[1:]):
                    self.assertTrue(a["round"] != b["round"] or a["status"] != b["status"], out)
                    self.assertGreaterEqual(ms(b["time"]) - ms(a["time"]), 800, out)

                summary = lines[lines.index("migration completed"):]
                for field in ("total time", "downtime", "transferred", "rounds",
                              "throughput", "zero pages"):
                    self.assertTrue(any(l.strip().startswith(field) for l in summary),
                                    f"no {field} in {summary}")
                rounds = int(next(l for l in summary if "rounds" in l).split()[-1])
                self.assertGreaterEqual(rounds, 3)

                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"])

    def test_json_prints_the_final_reply(self):
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        with dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                r = cli("-s", src.sock, "--json", "migrate", "--wait", uri)
                self.assertEqual(r.returncode, 0, r.stderr)
                reply = json.loads(r.stdout)  # one document, nothing else
                self.assertEqual(reply["status"], "completed")
                self.assertGreater(reply["ram"]["transferred"], 0)
                self.assertIn("downtime", reply)
                self.assertEqual(wait_migration(dst)["status"], "completed")
            r = cli("-s", src.sock, "--json", "migrate-status")
            self.assertEqual(json.loads(r.stdout)["status"], "completed")
            r = cli("-s", src.sock, "migrate-status")
            self.assertTrue(r.stdout.startswith("migration completed"), r.stdout)

    def test_closed_port_fails_with_the_error(self):
        with dirtier() as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            r = cli("-s", src.sock, "migrate", "--wait", uri)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("migration failed", r.stdout)
            self.assertRegex(r.stderr, "godwit: migration failed: .*Connection refused")
            r = cli("-s", src.sock, "--json", "migrate", "--wait", uri)
            self.assertEqual(r.returncode, 1)
            reply = json.loads(r.stdout)
            self.assertEqual(reply["status"], "failed")
            self.assertIn("Connection refused", reply["error-desc"])
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            # Without --wait the command only starts it: the VMM accepts, and
            # the failure shows in migrate-status.
            r = cli("-s", src.sock, "--json", "migrate", uri)
            self.assertEqual((r.returncode, json.loads(r.stdout)), (0, {}), r.stderr)
            self.assertEqual(wait_migration(src)["status"], "failed")
            r = cli("-s", src.sock, "migrate-status")
            self.assertRegex(r.stdout, "migration failed\n(.*\n)*  error .*Connection refused")
            src.wait_passes(1)

    def test_interrupt_cancels(self):
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        with dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri):
                # It cannot converge at this rate: only the interrupt ends it.
                self.assertEqual(cli("-s", src.sock, "migrate-set",
                                     "max-bandwidth=1M").returncode, 0)
                p = subprocess.Popen([gwtest.CLI, "-s", src.sock, "migrate", "--wait", uri],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    wait_until(lambda: src.qmp.cmd("query-migrate").get("status") == "active",
                               30, "an active migration")
                    p.send_signal(signal.SIGINT)
                    out, err = p.communicate(timeout=60)
                finally:
                    p.kill()
                self.assertEqual(p.returncode, 1, out + err)
                self.assertIn("cancelling", err)
                self.assertIn("migration cancelled", out)
                self.assertEqual(src.qmp.cmd("query-migrate")["status"], "cancelled")
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(1)
                self.assertFalse(src.guest()["check-failed"])

    def test_parameters_and_capabilities(self):
        with dirtier(vcpus=1) as src:
            r = cli("-s", src.sock, "migrate-status")
            self.assertEqual(r.stdout, "no migration\n")
            self.assertEqual(json.loads(cli("-s", src.sock, "--json", "migrate-status").stdout),
                             {})
            r = cli("-s", src.sock, "migrate-set", "downtime-limit=123", "max-bandwidth=2M")
            self.assertEqual(r.returncode, 0, r.stderr)
            params = src.qmp.cmd("query-migrate-parameters")
            self.assertEqual(params["downtime-limit"], 123)
            self.assertEqual(params["max-bandwidth"], 2 << 20)
            r = cli("-s", src.sock, "migrate-set")
            self.assertRegex(r.stdout, r"max-bandwidth\s+2097152 \(2.00 MiB/s\)")
            self.assertEqual(json.loads(cli("-s", src.sock, "--json", "migrate-set").stdout),
                             params)

            r = cli("-s", src.sock, "migrate-cap", "auto-converge=on", "events=on")
            self.assertEqual(r.returncode, 0, r.stderr)
            caps = {c["capability"]: c["state"]
                    for c in src.qmp.cmd("query-migrate-capabilities")}
            self.assertTrue(caps["auto-converge"] and caps["events"])
            self.assertRegex(cli("-s", src.sock, "migrate-cap").stdout, r"auto-converge\s+on")

            # Refused before connecting, or by the VMM with its reason.
            for args in (["migrate-set", "max-bandwidth=lots"], ["migrate-set", "=1"],
                         ["migrate-cap", "events=maybe"]):
                r = cli("-s", src.sock, *args)
                self.assertEqual(r.returncode, 2, args)
            r = cli("-s", src.sock, "migrate-set", "downtime-limit=-1")
            self.assertEqual(r.returncode, 1)
            self.assertIn("downtime_limit", r.stderr)
            r = cli("-s", src.sock, "migrate-cap", "no-such-cap=on")
            self.assertEqual(r.returncode, 1)
            self.assertIn("no-such-cap", r.stderr)


MIB = 1 << 20


def caps_of(vm):
    return {c["capability"]: c["state"] for c in vm.qmp.cmd("query-migrate-capabilities")}


def small_dirtier():
    """6 MiB rewritten over and over: at 1 MiB/s and a 1 ms limit the
    migration never converges while the guest runs."""
    return dirtier(memory="32M", append="end=8M")


class MigratePolicy(unittest.TestCase):
    """virsh migrate's options, each as the QMP it stands for."""

    def test_bandwidth_downtime_auto_converge(self):
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                # A wrong value is the VMM's to refuse, and all-or-nothing:
                # nothing is set and nothing starts.
                r = cli("-s", src.sock, "migrate", "--bandwidth", "5", "--downtime", "2000001",
                        uri)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("downtime_limit", r.stderr)
                self.assertEqual(src.qmp.cmd("query-migrate-parameters")["max-bandwidth"],
                                 128 * MIB)
                self.assertEqual(src.qmp.cmd("query-migrate"), {})
                for bad in (["--bandwidth", "-1"], ["--bandwidth", "1.5"], ["--downtime", "x"],
                            ["--timeout", "0", "--wait"], ["--timeout", "5"],
                            ["--timeout-suspend", "--wait"]):
                    r = cli("-s", src.sock, "migrate", *bad, uri)
                    self.assertEqual(r.returncode, 2, (bad, r.stderr))
                self.assertEqual(src.qmp.cmd("query-migrate"), {})

                r = cli("-s", src.sock, "migrate", "--bandwidth", "1", "--downtime", "250",
                        "--auto-converge", uri)
                self.assertEqual(r.returncode, 0, r.stderr)
                p = src.qmp.cmd("query-migrate-parameters")
                self.assertEqual((p["max-bandwidth"], p["downtime-limit"]), (MIB, 250))
                self.assertTrue(caps_of(src)["auto-converge"])
                # At 1 MiB/s the guest outruns the link: the throttle shows.
                wait_until(lambda: src.qmp.cmd("query-migrate").get(
                    "cpu-throttle-percentage", 0) > 0, 120, "the throttle")
                self.assertEqual(cli("-s", src.sock, "migrate-set",
                                     "max-bandwidth=0").returncode, 0)
                self.assertEqual(wait_migration(src, timeout=120)["status"], "completed")
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())

    def timeout_suspend(self, with_dest):
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                args = ["--dest-socket", "unix:" + dst.sock] if with_dest else []
                r = cli("-s", src.sock, "migrate", "--wait", "--bandwidth", "1", "--downtime",
                        "1", "--timeout", "1", "--timeout-suspend", *args, uri)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("migration completed", r.stdout)
                self.assertIn("--timeout: the migration is still running after 1 s: "
                              "suspending the guest", r.stderr)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
                # The one STOP was the suspend: the switchover found the
                # guest paused already.
                self.assertTrue(src.qmp.wait_event("STOP"))
                self.assertIsNone(src.qmp.find_event("STOP"))
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                if with_dest:
                    # virsh's meaning: the guest runs on at the destination.
                    self.assertEqual(dst.qmp.cmd("query-status")["status"], "running")
                    self.assertNotIn("arrives paused", r.stderr)
                else:
                    # QEMU's rule for a guest stopped on the source.
                    self.assertEqual(dst.qmp.cmd("query-status")["status"], "paused")
                    self.assertIn("arrives paused", r.stderr)
                    dst.qmp.cmd("cont")
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())

    def test_timeout_suspend_resumes_at_the_destination(self):
        self.timeout_suspend(with_dest=True)

    def test_timeout_suspend_without_the_destination(self):
        self.timeout_suspend(with_dest=False)

    def test_timeout_then_cancel_resumes_the_source(self):
        """The migration did not complete after the suspend (here the
        manager cancels it in pre-switchover): the source guest runs on."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri):
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "pause-before-switchover", "state": True}])
                p = subprocess.Popen([gwtest.CLI, "-s", src.sock, "migrate", "--wait",
                                      "--bandwidth", "1", "--downtime", "1", "--timeout", "1",
                                      uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                try:
                    wait_until(lambda: src.qmp.cmd("query-migrate").get("status") ==
                               "pre-switchover", 120, "pre-switchover after the suspend")
                    src.qmp.cmd("migrate-cancel")
                    out, err = p.communicate(timeout=60)
                finally:
                    p.kill()
                self.assertEqual(p.returncode, 1, out + err)
                self.assertIn("suspending the guest", err)
                self.assertIn("resuming the guest suspended by --timeout", err)
                self.assertIn("migration cancelled", out)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(1)
                self.assertFalse(src.guest()["check-failed"])

    def test_parallel(self):
        """--parallel N: multifd with N channels; --dest-socket turns the
        capability on at the destination too. Without it a destination
        that lacks it refuses, and says what to do."""
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                r = cli("-s", src.sock, "--json", "migrate", "--wait", "--parallel", "3", uri)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("turn on the multifd capability on this side too",
                              json.loads(r.stdout)["error-desc"])
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                self.assertFalse(caps_of(dst)["multifd"])
            uri = f"tcp:127.0.0.1:{free_port()}"
            with destination(src, uri) as dst:
                r = cli("-s", src.sock, "migrate", "--wait", "--parallel", "3",
                        "--dest-socket", dst.sock, uri)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(src.qmp.cmd("query-migrate-parameters")["multifd-channels"], 3)
                self.assertTrue(caps_of(src)["multifd"] and caps_of(dst)["multifd"])
                d = wait_migration(dst)
                self.assertEqual(d["status"], "completed", d)
                self.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
                dst.wait_passes(2)
                self.assertFalse(dst.guest()["check-failed"], dst.serial_text())


    def postcopy_after_precopy(self, src, dst, uri, *args):
        """At 16 MiB/s and 1 ms the dirtier never converges by itself: the switch
        after the first pass is what completes the migration."""
        r = cli("-s", src.sock, "migrate", "--wait", "--bandwidth", "16", "--downtime", "1",
                "--postcopy-after-precopy", "--dest-socket", dst.sock, *args, uri,
                timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("switching to post-copy", r.stderr)
        self.assertTrue(caps_of(src)["postcopy-ram"] and caps_of(dst)["postcopy-ram"])
        d = wait_migration(dst, timeout=300)
        self.assertEqual(d["status"], "completed", d)
        self.assertIn("postcopy-active", [e["data"]["status"] for e in dst.qmp.events
                                          if e["event"] == "MIGRATION"])
        self.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
        dst.wait_passes(2)
        self.assertFalse(dst.guest()["check-failed"], dst.serial_text())
        return d

    def test_postcopy_after_precopy(self):
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            with destination(src, uri) as dst:
                self.postcopy_after_precopy(src, dst, uri)

    def test_postcopy_after_precopy_needs_wait(self):
        r = cli("-s", "/nonexistent", "migrate", "--postcopy-after-precopy", "tcp:h:1")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("--postcopy-after-precopy needs --wait", r.stderr)

    def test_tls(self):
        """--tls without credentials refuses before anything starts;
        --tls-creds and --tls-hostname set the parameters, and post-copy's
        page requests travel through TLS too."""
        from test_tls import Pki, tls_destination
        pki = Pki()
        self.addCleanup(pki.close)
        uri = f"tcp:127.0.0.1:{free_port()}"
        with small_dirtier() as src:
            src.wait_passes(1)
            r = cli("-s", src.sock, "migrate", "--wait", "--tls", uri)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("--tls: the VMM has no TLS credentials", r.stderr)
            self.assertEqual(src.qmp.cmd("query-migrate"), {})
            src.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "mig",
                                         "dir": pki.endpoint_dir("src"),
                                         "endpoint": "client"})
            with tls_destination(src, uri, pki.endpoint_dir("dst", server="server")) as dst:
                d = self.postcopy_after_precopy(src, dst, uri, "--tls-creds", "mig",
                                                "--tls-hostname", "localhost")
                self.assertEqual(d["x-godwit-tls"], "gnutls", d)
            p = src.qmp.cmd("query-migrate-parameters")
            self.assertEqual((p["tls-creds"], p["tls-hostname"]), ("mig", "localhost"))


class Analyze(unittest.TestCase):
    """One stream written by `migrate file:` of a stopped dirtier guest,
    analyzed whole, corrupted, truncated and through a pipe."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="gw-cli-")
        cls.path = os.path.join(cls.dir, "guest.gw")
        with dirtier() as src:
            src.wait_passes(1)
            src.qmp.cmd("stop")
            cls.guest = src.guest()
            r = cli("-s", src.sock, "migrate", "--wait", "file:" + cls.path)
            assert r.returncode == 0, r.stdout + r.stderr
        with open(cls.path, "rb") as f:
            cls.stream = f.read()
        r = cli("--json", "--records", "analyze", cls.path)
        assert r.returncode == 0, r.stderr
        cls.doc = json.loads(r.stdout)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def copy(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def record_at(self, offset):
        """The record that holds byte offset of the stream."""
        return next(r for r in self.doc["records"]
                    if r["offset"] <= offset < r["offset"] + 24 + r["length"])

    def test_report(self):
        r = cli("analyze", self.path)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout
        self.assertIn("godwit stream, format version 1", out)
        self.assertIn("CONFIG: godwit-vmm", out)
        self.assertRegex(out, r"ram-low\s+64.0 MiB \(67108864 bytes\)")
        for section in ("cpu 0", "cpu 1", "kvm-vm 0", "uart 0", "testdev 0"):
            self.assertRegex(out, rf"\n  {section} \(version 1, \d+ bytes\):\n", section)
        self.assertRegex(out, r"regs\.rip\s+u64\s+\d+")
        self.assertRegex(out, r"lcr\s+u8\s+\d+")
        self.assertRegex(out, r"ready\s+u8\s+1\n")
        self.assertIn("RAM_PAGES", out)
        self.assertTrue(out.rstrip().endswith("ending with its EOF record"), out[-300:])
        self.assertEqual(r.stderr, "")
        # Runs of RAM_PAGES are one line by default, one line each with --records.
        pages_records = [x for x in self.doc["records"] if x["type"] == "RAM_PAGES"]
        self.assertGreater(len(pages_records), 1)
        self.assertLess(out.count("RAM_PAGES"), len(pages_records))
        full = cli("--records", "analyze", self.path).stdout
        self.assertEqual(full.count(" RAM_PAGES "), len(pages_records))
        bare = cli("--no-decode", "analyze", self.path).stdout
        self.assertRegex(bare, r"\n    regs\.rip\s+u64\n")

    def test_json_matches_the_guest(self):
        doc = self.doc
        self.assertEqual(doc["format_version"], 1)
        self.assertTrue(doc["result"]["intact"], doc["result"])
        self.assertEqual(doc["result"]["bytes"], len(self.stream))
        cfg = doc["config"]
        self.assertEqual((cfg["vmm_name"], cfg["machine"], cfg["vcpus"]),
                         ("godwit-vmm", "godwit-x86", 2))
        self.assertEqual([(b["name"], b["size"]) for b in cfg["ram"]], [("ram-low", 64 << 20)])
        sections = {(s["name"], s["instance"]): s for s in doc["sections"]}
        self.assertEqual(set(sections), {("cpu", 0), ("cpu", 1), ("kvm-vm", 0), ("uart", 0), ("run-state", 0),
                                         ("testdev", 0)})
        self.assertTrue(all(s["records"]["full"] == 1 for s in sections.values()))
        self.assertIn("regs.rip", sections["cpu", 0]["fields"])
        self.assertIn("lcr", sections["uart", 0]["fields"])
        self.assertIn("clock.clock", sections["kvm-vm", 0]["fields"])
        testdev = sections["testdev", 0]["fields"]
        self.assertEqual((testdev["ready"], testdev["check_failed"]), (1, 0))
        per_pass = [v["pages-per-pass"] for v in self.guest["vcpus"]]
        self.assertEqual(testdev["pages_per_pass"][:2], per_pass)
        self.assertEqual(testdev["passes"][:2], [v["pass"] for v in self.guest["vcpus"]])
        self.assertEqual([s["name"] for s in doc["vmdesc"]["sections"]],
                         ["cpu", "cpu", "kvm-vm", "uart", "testdev", "run-state"])

        # The guest wrote pages-per-pass pages on each vCPU inside [start, 32M);
        # the rest of its 64 MiB it never touched, and it was stopped: no page
        # was sent twice and none failed its hash.
        (ram,) = doc["ram"]
        self.assertEqual(ram["block"], "ram-low")
        self.assertGreaterEqual(ram["unique"], sum(per_pass))
        self.assertLessEqual(ram["unique"], (32 << 20) // 4096)
        self.assertEqual(ram["pages"], ram["unique"] + ram["resent"])
        self.assertEqual(ram["resent"], 0)
        self.assertEqual(ram["torn"], 0)
        self.assertEqual(ram["pages"], sum(x["pages"] for x in doc["records"]
                                           if x["type"] == "RAM_PAGES"))

    def test_corrupted_byte(self):
        middle = len(self.stream) // 2
        bad = bytearray(self.stream)
        bad[middle] ^= 0x10
        path = self.copy("corrupted.gw", bad)
        victim = self.record_at(middle)
        r = cli("analyze", path)
        self.assertEqual(r.returncode, 1, r.stdout[-500:])
        self.assertIn("stream corrupted", r.stdout)
        self.assertIn(f"offset {victim['offset']}", r.stderr)
        d = json.loads(cli("--json", "analyze", path).stdout)
        self.assertEqual((d["result"]["verdict"], d["result"]["offset"]),
                         ("corrupted", victim["offset"]))

    def test_corrupted_header(self):
        victim = self.record_at(len(self.stream) // 3)
        bad = bytearray(self.stream)
        bad[victim["offset"] + 8] ^= 0x01  # the length: caught by the header CRC
        r = cli("analyze", self.copy("header.gw", bad))
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"corrupted record header at offset {victim['offset']}", r.stderr)

    def test_truncated(self):
        cut = len(self.stream) * 2 // 3
        victim = self.record_at(cut)
        inside = "the record header" if cut < victim["offset"] + 24 else \
            f"the {victim['type']} record"
        r = cli("analyze", self.copy("truncated.gw", self.stream[:cut]))
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"truncated at offset {cut} inside {inside} at offset {victim['offset']}",
                      r.stderr)
        self.assertIn("stream truncated", r.stdout)
        r = cli("analyze", self.copy("no-eof.gw", self.stream[:-24]))
        self.assertEqual(r.returncode, 1)
        self.assertIn("without an EOF record", r.stderr)

    def test_stdin_pipe(self):
        # A real pipe, fed in pieces: nothing may seek.
        with subprocess.Popen([gwtest.CLI, "--json", "--records", "analyze", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
            out = []
            reader = threading.Thread(target=lambda: out.append(p.stdout.read()))
            reader.start()
            for i in range(0, len(self.stream), 1 << 20):
                p.stdin.write(self.stream[i:i + (1 << 20)])
            p.stdin.close()
            reader.join(120)
            self.assertEqual(p.wait(60), 0)
        doc = json.loads(out[0])
        self.assertEqual(doc["file"], "-")
        doc["file"] = self.doc["file"]
        self.assertEqual(doc, self.doc)

    def test_not_a_stream(self):
        r = cli("analyze", self.copy("text.txt", b"hello, this is not a godwit stream\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("godwit: analyze:", r.stderr)
        r = cli("analyze", os.path.join(self.dir, "missing.gw"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("No such file", r.stderr)
        self.assertEqual(cli("analyze").returncode, 2)


class Help(unittest.TestCase):
    def test_every_command_has_help(self):
        r = cli("--help")
        self.assertEqual(r.returncode, 0)
        commands = re.findall(r"^  (\S+)  ", r.stdout.split("commands:")[1].split("options:")[0],
                              re.M)
        for name in ("migrate", "migrate-cancel", "migrate-status", "migrate-set",
                     "migrate-cap", "analyze"):
            self.assertIn(name, commands)
        for name in commands:
            r = cli(name, "--help")
            self.assertEqual(r.returncode, 0, name)
            self.assertTrue(r.stdout.startswith("usage: godwit "), name)
            self.assertIn(name, r.stdout.splitlines()[0])

    def test_options_belong_to_their_command(self):
        r = cli("status", "--wait")
        self.assertEqual(r.returncode, 2)
        self.assertIn("status does not take --wait", r.stderr)


if __name__ == "__main__":
    gwtest.main()
