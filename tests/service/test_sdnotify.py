"""sd_notify against a real unix datagram socket: the datagrams systemd would read, path and abstract sockets,
the watchdog interval from WATCHDOG_USEC/WATCHDOG_PID, and a service outside systemd (no socket)."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from service_support import NotifyListener

from station.sdnotify import Notifier, monotonic_usec, watchdog_interval_s


def test_notifications_reach_a_path_socket_as_key_value_datagrams():
    folder = Path(tempfile.mkdtemp(prefix="sdn"))  # short: unix socket paths are limited to 108 bytes
    listener = NotifyListener(folder / "notify")
    try:
        n = Notifier({"NOTIFY_SOCKET": str(folder / "notify")})
        assert n.enabled
        assert n.ready("running:\nparts=3")
        assert n.watchdog()
        before = monotonic_usec()
        assert n.reloading("reloading x.yaml")
        assert n.stopping("stopping")
        assert n.extend_timeout(12.5)
        listener.wait_for(lambda f: "EXTEND_TIMEOUT_USEC" in f, timeout=5)
        n.close()
        fields = [f for _, f in listener.snapshot()]
        assert fields[0] == {"READY": "1", "STATUS": "running: parts=3"}, "STATUS is flattened to one line"
        assert fields[1] == {"WATCHDOG": "1"}
        assert fields[2]["RELOADING"] == "1" and fields[2]["STATUS"] == "reloading x.yaml"
        # Type=notify-reload wants CLOCK_MONOTONIC in microseconds with RELOADING=1.
        assert before <= int(fields[2]["MONOTONIC_USEC"]) <= monotonic_usec()
        assert fields[3] == {"STOPPING": "1", "STATUS": "stopping"}
        assert fields[4] == {"EXTEND_TIMEOUT_USEC": "12500000"}
    finally:
        listener.close()
        os.rmdir(folder)


def test_abstract_namespace_socket():
    name = f"@station-test-{uuid.uuid4().hex}"
    listener = NotifyListener(name)
    try:
        assert Notifier({"NOTIFY_SOCKET": name}).ready()
        listener.wait_for(lambda f: f.get("READY") == "1", timeout=5)
    finally:
        listener.close()


def test_without_systemd_every_call_is_a_silent_no_op():
    n = Notifier({})
    assert not n.enabled and n.ping_interval_s is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.watchdog() is False
    assert n.watchdog() is False
    assert sum("sd_notify" in r.message for r in caplog.records) == 1, "logged once, not per ping"
    n.close()


def test_watchdog_interval_from_environment():
    pid = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}) == 3.0
    n = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(pid)})
    assert n.watchdog_s == 3.0 and n.ping_interval_s == 1.5, "ping at half the interval"
    # The watchdog is for the process systemd named; an inheriting child must not ping for it.
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None
