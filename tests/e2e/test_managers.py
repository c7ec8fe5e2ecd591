"""Driven by the managers people already run: libvirt, KubeVirt and Nova
reach godwit-vmm only through QMP, with QEMU's names, in the order their
own code sends them. These tests send what they send, and check what they
read back (docs/qmp.md names each use)."""
import os
import socket
import threading

import gwtest
from gwtest import (DIRTIER, QmpError, Vmm, assert_destination_refused, destination, dirtier,
                    free_port, wait_migration, wait_until)

# QEMU's MigrationStatus: libvirt maps each name and fails on any other.
QEMU_STATUSES = {"none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
                 "postcopy-paused", "postcopy-recover-setup", "postcopy-recover",
                 "completed", "failed", "colo", "pre-switchover", "device",
                 "wait-unplug"}


def check_reply_as_libvirt(test, r):
    """What libvirt's qemuMonitorJSONGetMigrationStatsReply requires of a
    query-migrate reply: a status QEMU could give, and with `ram` its
    transferred, remaining and total (libvirt fails the job without them);
    the times as integers; `disk` complete when present."""
    if "status" in r:   # none before the first migration, as QEMU
        test.assertIn(r["status"], QEMU_STATUSES, r)
    if "ram" in r:
        for k in ("transferred", "remaining", "total", "postcopy-requests"):
            test.assertIsInstance(r["ram"].get(k), int, (k, r))
        test.assertIsInstance(r["ram"]["mbps"], float, r)
    if r.get("status") in ("active", "completed"):
        test.assertIsInstance(r.get("total-time"), int, r)
    if r.get("status") == "completed":
        test.assertIsInstance(r.get("downtime"), int, r)
    if r.get("status") == "active":
        test.assertIsInstance(r.get("expected-downtime"), int, r)
    if "disk" in r:
        for k in ("transferred", "remaining", "total"):
            test.assertIsInstance(r["disk"][k], int, r)
    if "blocked-reasons" in r:
        test.assertTrue(r["blocked-reasons"], r)


def watch(test, vm, statuses=("completed", "failed", "cancelled")):
    """Poll query-migrate as libvirt's job monitor does, checking each
    reply; return (the final reply, every reply)."""
    seen = []

    def done():
        r = vm.qmp.cmd("query-migrate")
        check_reply_as_libvirt(test, r)
        seen.append(r)
        return r if r.get("status") in statuses else None
    return wait_until(done, 120, f"migration status in {statuses}", interval=0.01), seen


def assert_mbps_while_moving(test, seen):
    """Between two `active` replies whose ram.transferred grew, data moved:
    mbps must say so (KubeVirt shows it; 0 reads as a stalled link)."""
    moving = 0
    for a, b in zip(seen, seen[1:]):
        if a["status"] == b["status"] == "active" and \
                b["ram"]["transferred"] > a["ram"]["transferred"]:
            moving += 1
            test.assertGreater(b["ram"]["mbps"], 0.0, b)
    test.assertGreater(moving, 0, "no two samples caught data moving")


def deferred_destination(src):
    """Started as libvirt starts it: -incoming defer, events on."""
    dst = Vmm(kernel=DIRTIER, memory=src.memory, vcpus=src.vcpus,
              extra=["--incoming", "defer"])
    dst.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "x-godwit-verify-hash", "state": True},
        {"capability": "events", "state": True}])
    return dst


def assert_arrived(test, src, dst):
    d = wait_migration(dst)
    test.assertEqual(d["status"], "completed", d)
    test.assertEqual(src.qmp.cmd("query-status")["status"], "postmigrate")
    test.assertEqual(d["x-godwit-ram-hash"], src.ram_hash())
    dst.wait_passes(2)
    test.assertFalse(dst.guest()["check-failed"], dst.serial_text())


class LibvirtSequence(gwtest.unittest.TestCase):
    """libvirt's qemuMigrationSrcConnect + qemuMonitorMigrateToFd: the
    manager dials the destination, hands the socket over with getfd
    (fdname "migrate") and sends migrate fd:migrate, detached."""

    def test_socket_passed_with_getfd(self):
        with dirtier() as src:
            src.wait_passes(1)
            with deferred_destination(src) as dst:
                dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0", detach=True,
                            resume=False)
                port = int(dst.qmp.cmd("query-migrate")["x-godwit-listening"].rsplit(":", 1)[1])
                src.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "events", "state": True}])
                sock = socket.create_connection(("127.0.0.1", port))
                with sock:
                    src.qmp.cmd("getfd", fdname="migrate", fd=sock.fileno())
                # Our copy is closed: the VMM's is the only one now.
                src.qmp.cmd("migrate", {"uri": "fd:migrate", "detach": True,
                                        "resume": False})
                r, seen = watch(self, src)
                self.assertEqual(r["status"], "completed", r)
                self.assertGreater(r["ram"]["mbps"], 0.0, r)
                assert_mbps_while_moving(self, seen)
                # The migration took the name, as QEMU's does.
                with self.assertRaises(QmpError):
                    src.qmp.cmd("closefd", fdname="migrate")
                assert_arrived(self, src, dst)
                ev = src.qmp.wait_event("MIGRATION", lambda e: e["data"]["status"] ==
                                        "completed")
                self.assertTrue(ev)

    def test_tunnelled_through_pipes(self):
        """VIR_MIGRATE_TUNNELLED: the source writes into a pipe that
        libvirtd reads and forwards; the destination reads another pipe
        libvirtd fills. No return path: the source completes once the
        stream has left whole."""
        with dirtier() as src:
            src.wait_passes(1)
            with deferred_destination(src) as dst:
                src_r, src_w = os.pipe()
                dst_r, dst_w = os.pipe()
                dst.qmp.cmd("getfd", fdname="migrate", fd=dst_r)
                os.close(dst_r)
                dst.qmp.cmd("migrate-incoming", uri="fd:migrate")
                src.qmp.cmd("getfd", fdname="migrate", fd=src_w)
                os.close(src_w)
                moved = []

                def tunnel():
                    total = 0
                    while True:
                        data = os.read(src_r, 1 << 20)
                        if not data:
                            break
                        os.write(dst_w, data)
                        total += len(data)
                    os.close(dst_w)
                    moved.append(total)
                t = threading.Thread(target=tunnel, daemon=True)
                t.start()
                # At the default 128 MiB/s this dirtier converges only when
                # the machine is busy enough to slow it (one CI run sat
                # 120 s in active); the tunnel's bytes are what is checked.
                src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 10 << 30})
                try:
                    src.qmp.cmd("migrate", {"uri": "fd:migrate", "detach": True,
                                            "resume": False})
                    r, _ = watch(self, src)
                    self.assertEqual(r["status"], "completed", r)
                    t.join(60)
                    self.assertFalse(t.is_alive(), "the tunnel did not see the stream end")
                    # Every byte the source counted went through the tunnel.
                    self.assertEqual(moved[0], r["ram"]["transferred"])
                    assert_arrived(self, src, dst)
                finally:
                    os.close(src_r)

    def test_resume_refused_nothing_starts(self):
        with dirtier() as src:
            src.wait_passes(1)
            for cmd in ("migrate", "migrate-incoming"):
                with self.assertRaises(QmpError) as e:
                    src.qmp.cmd(cmd, {"uri": "tcp:127.0.0.1:1", "detach": True,
                                      "resume": True})
                self.assertIn("post-copy", e.exception.desc)
            self.assertEqual(src.qmp.cmd("query-migrate"), {})
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
            src.wait_passes(1)

    def test_blocked_reasons(self):
        """A disk only this host sees blocks a migration until block
        migration is on: query-migrate says so before any migrate, as
        QEMU's blocked-reasons do."""
        d = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gw-blocked-{os.getpid()}.img")
        with open(d, "wb") as f:
            f.truncate(1 << 20)
        try:
            with Vmm(kernel=gwtest.IDLE, extra=["--drive", f"file={d},shared=off"]) as vm:
                r = vm.qmp.cmd("query-migrate")
                check_reply_as_libvirt(self, r)
                self.assertEqual(len(r["blocked-reasons"]), 1, r)
                self.assertIn("shared=off", r["blocked-reasons"][0])
                vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "block", "state": True}])
                self.assertEqual(vm.qmp.cmd("query-migrate"), {})
        finally:
            os.unlink(d)


def start_paused_migration(src, dst_uri):
    """migrate with pause-before-switchover, as libvirt does for a
    migration that moves networks or storage; return once the source
    reports pre-switchover."""
    src.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "events", "state": True},
        {"capability": "pause-before-switchover", "state": True}])
    src.qmp.cmd("migrate", uri=dst_uri)
    src.qmp.wait_event("MIGRATION", lambda e: e["data"]["status"] == "pre-switchover", 60)


def assert_guest_frozen(test, vm):
    """Neither the guest's pass counters nor its RAM move."""
    passes, ram = vm.passes(), vm.ram_hash()
    gwtest.time.sleep(0.3)
    test.assertEqual(vm.passes(), passes)
    test.assertEqual(vm.ram_hash(), ram)


class PauseBeforeSwitchover(gwtest.unittest.TestCase):
    """QEMU's pause-before-switchover: the source stops with its guest
    paused and the final state unsent until migrate-continue."""

    def test_waits_for_the_manager_then_completes(self):
        with dirtier() as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            with destination(src, uri) as dst:
                start_paused_migration(src, uri)
                r = src.qmp.cmd("query-migrate")
                check_reply_as_libvirt(self, r)
                self.assertEqual(r["status"], "pre-switchover", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "finish-migrate")
                assert_guest_frozen(self, src)
                # The destination has nothing to start yet: one guest.
                self.assertEqual(dst.qmp.cmd("query-migrate")["status"], "active")
                self.assertEqual(dst.qmp.cmd("query-status")["status"], "inmigrate")
                with self.assertRaises(QmpError) as e:
                    src.qmp.cmd("cont")
                with self.assertRaises(QmpError) as e:
                    src.qmp.cmd("migrate-continue", state="active")
                self.assertEqual(e.exception.desc,
                                 "Migration not in expected state: pre-switchover")
                with self.assertRaises(QmpError) as e:
                    src.qmp.cmd("migrate-continue", state="paused")
                self.assertIn("does not accept value", e.exception.desc)
                self.assertEqual(src.qmp.cmd("query-migrate")["status"], "pre-switchover")
                src.qmp.cmd("migrate-continue", state="pre-switchover")
                r = wait_migration(src)
                self.assertEqual(r["status"], "completed", r)
                # (wait_event took pre-switchover off the queue)
                order = [e["data"]["status"] for e in src.qmp.events
                         if e["event"] == "MIGRATION"]
                self.assertEqual(order[-2:], ["device", "completed"])
                assert_arrived(self, src, dst)
                # Over: there is nothing to continue.
                with self.assertRaises(QmpError) as e:
                    src.qmp.cmd("migrate-continue", state="pre-switchover")
                self.assertEqual(e.exception.desc,
                                 "Migration not in expected state: completed")

    def test_cancel_resumes_the_source(self):
        with dirtier() as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            with destination(src, uri) as dst:
                start_paused_migration(src, uri)
                src.qmp.cmd("migrate-cancel")
                r = wait_migration(src)
                self.assertEqual(r["status"], "cancelled", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.qmp.wait_event("RESUME")
                src.wait_passes(2)
                self.assertFalse(src.guest()["check-failed"])
                assert_destination_refused(self, dst)

    def test_destination_failure_ends_the_wait(self):
        """A destination that dies while the manager thinks: the source
        notices without migrate-continue and its guest runs on."""
        with dirtier() as src:
            src.wait_passes(1)
            uri = f"tcp:127.0.0.1:{free_port()}"
            with destination(src, uri) as dst:
                start_paused_migration(src, uri)
                dst.kill()
                r = wait_migration(src)
                self.assertEqual(r["status"], "failed", r)
                self.assertEqual(src.qmp.cmd("query-status")["status"], "running")
                src.wait_passes(2)

    def test_not_waiting_refused(self):
        with dirtier() as src:
            with self.assertRaises(QmpError) as e:
                src.qmp.cmd("migrate-continue", state="pre-switchover")
            self.assertEqual(e.exception.desc, "Migration not in expected state: none")
            src.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "pause-before-switchover", "state": True},
                {"capability": "background-snapshot", "state": True}])
            with self.assertRaises(QmpError) as e:
                src.qmp.cmd("migrate", uri="file:" + os.path.join(src.dir, "s"))
            self.assertIn("pause-before-switchover applies to a pre-copy", e.exception.desc)
            self.assertEqual(src.qmp.cmd("query-status")["status"], "running")


def documented_commands():
    """Every command docs/qmp.md lists: the names in the first column of
    its table of commands, migrate_cancel (named below it) and
    qmp_capabilities."""
    import re
    with open(os.path.join(gwtest.SRC, "docs", "qmp.md")) as f:
        text = f.read()
    table = text.split("| command | |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines():
        names.update(re.findall(r"`([a-z_-]+)`", row.split(" | ")[0]))
    assert "Any other name gets `CommandNotFound`, except `migrate_cancel`" in text
    return names | {"migrate_cancel"}


class Discovery(gwtest.unittest.TestCase):
    """query-commands and query-qmp-schema say what exists and nothing
    else, as libvirt learns it."""

    def test_query_commands_is_the_documented_set(self):
        with dirtier() as vm:
            listed = [c["name"] for c in vm.qmp.cmd("query-commands")]
            self.assertEqual(len(listed), len(set(listed)), listed)
            self.assertEqual(set(listed), documented_commands())
            for name in listed:
                if name == "qmp_capabilities":
                    continue
                # Listed means dispatched: not CommandNotFound.
                try:
                    vm.qmp.cmd(name, {"x-not-an-argument": 1})
                    self.fail(f"{name} took an unknown argument")
                except QmpError as e:
                    self.assertEqual(e.cls, "GenericError", (name, e.desc))
            with self.assertRaises(QmpError):
                vm.qmp.cmd("query-commands", {"x": 1})
            self.assertEqual(vm.qmp.cmd("query-status")["status"], "running")

    def test_schema_describes_the_arguments_accepted(self):
        with dirtier() as vm:
            schema = vm.qmp.cmd("query-qmp-schema")
            types = {e["name"]: e for e in schema}
            self.assertEqual(len(types), len(schema), "a name given twice")
            commands = {e["name"]: e for e in schema if e["meta-type"] == "command"}
            listed = {c["name"] for c in vm.qmp.cmd("query-commands")}
            self.assertEqual(set(commands), listed)
            for c in commands.values():
                arg = types[c["arg-type"]]
                self.assertEqual(arg["meta-type"], "object", c)
                self.assertIn(c["ret-type"], types)
                for m in arg["members"]:
                    self.assertIn(m["type"], types, (c, m))
            migrate = {m["name"]: m for m in types[commands["migrate"]["arg-type"]]["members"]}
            self.assertEqual(set(migrate), {"uri", "channels", "detach", "resume", "blk"})
            self.assertEqual(migrate["resume"]["type"], "bool")
            self.assertIn("default", migrate["resume"])
            cont = types[commands["migrate-continue"]["arg-type"]]["members"]
            self.assertEqual(cont, [{"name": "state", "type": "str"}])
            self.assertEqual(types[commands["stop"]["arg-type"]]["members"], [])
            # What the schema says is required is what the server requires.
            for name, c in commands.items():
                required = [m["name"] for m in types[c["arg-type"]]["members"]
                            if "default" not in m]
                if not required or name == "qmp_capabilities":
                    continue
                with self.assertRaises(QmpError) as e:
                    vm.qmp.cmd(name)
                self.assertEqual(e.exception.desc, f"Parameter '{required[0]}' is missing")


if __name__ == "__main__":
    gwtest.main()
