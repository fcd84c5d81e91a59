"""The stage contract on a real running Station (synthetic camera, tiny model, SQLite log, pymodbus's own server as
the PLC, the live-state unix socket): every stage thread is a `Stage` the supervisor inspects the same way, a hung
housekeeping thread (which drives the alarm output) is reported, and every stage, the PLC handshake driver's
heartbeat thread included, is restarted through the station's stage registry and does its job again.

The faults are injected: a stage's step made to block, or to raise once in one thread (its replacement runs the
real step).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from service_support import read_rows, until
from support import make_tiny_model, write_config

from station import service
from station.actuators import plc_handshake as hs
from station.app import Station
from station.configfile import load_config
from station.control import request
from station.housekeeping import Housekeeping
from station.stage import Stage
from station.supervisor import HUNG_ALARM, Supervisor

BASE = 40  # the alarm link's register_base on the simulated PLC


@pytest.fixture(autouse=True)
def crashes_are_logged(monkeypatch):
    # The service's hook: a crashing stage thread is one log line, as under systemd.
    monkeypatch.setattr(threading, "excepthook", service._log_thread_crash)


def start(tmp: Path, *, plc_port: int | None = None, threshold: float = 0.5) -> Station:
    make_tiny_model(tmp / "tiny.pt")
    alarm = "" if plc_port is None else (
        f"alarm: {{actuator: {{kind: plc_handshake, register_base: {BASE}, heartbeat_ms: 50, "
        f"link: {{transport: tcp, host: 127.0.0.1, port: {plc_port}}}}}}}\n")
    station = Station(load_config(write_config(tmp / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 20, size_px: 64}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 200}}
reject: {{delay_ms: 300, pulse_ms: 20, actuator: {{kind: log}}}}
tracelog: {{dir: log, images: none}}
hmi: {{control_socket: ctl.sock}}
{alarm}""")))
    station.start()
    return station


def crash_once(monkeypatch: pytest.MonkeyPatch, stage: Stage) -> None:
    """Fault injection: the next step of this one thread raises; any other thread of its class runs as before."""
    cls = type(stage)
    real_step = cls.step

    def step(self: Stage) -> bool:
        if self is stage:
            raise ZeroDivisionError(f"injected fault in stage thread {self.name}")
        return real_step(self)

    monkeypatch.setattr(cls, "step", step)


def test_a_hung_housekeeping_thread_is_reported_and_never_doubled(tmp_path, monkeypatch):
    hang, release = threading.Event(), threading.Event()
    real_sync = Housekeeping.sync_alarm_output

    def sync_alarm_output(self: Housekeeping) -> None:
        if hang.is_set():
            release.wait(30)  # injected hang: the alarm output would stop following health
        real_sync(self)

    monkeypatch.setattr(Housekeeping, "sync_alarm_output", sync_alarm_output)
    station = start(tmp_path)
    supervisor = Supervisor(station, stall_s=0.5, inference_hang_s=5.0)
    try:
        until(lambda: station.stats.parts >= 3)
        assert supervisor.check() is True
        housekeeping = station.housekeeping
        hang.set()
        until(lambda: supervisor.check() is False)
        alarm = station.health.alarms()[HUNG_ALARM]
        assert alarm.startswith("housekeeping updating the alarm output for"), alarm
        assert supervisor.summary().startswith("HUNG housekeeping")
        assert station.housekeeping is housekeeping and supervisor.restarts_total == 0, "a live thread is not doubled"
        with pytest.raises(RuntimeError, match="still running"):
            station.restart_stage("housekeeping")  # the registry refuses too: two threads would drive one lamp
        with pytest.raises(RuntimeError, match="no stage 'lamp'"):
            station.restart_stage("lamp")
        hang.clear()
        release.set()
        until(lambda: supervisor.check() is True, timeout=10)
        assert HUNG_ALARM not in station.health.alarms()
    finally:
        release.set()
        station.stop()
    events = read_rows(tmp_path / "log" / "trace.sqlite", "SELECT kind, message FROM events WHERE kind='stage_hung'")
    assert [e["message"].split(":")[0] for e in events] == ["housekeeping"]


def test_every_stage_is_restarted_through_the_registry_and_does_its_job_again(tmp_path, monkeypatch, sim_plc):
    # Every part rejects, so every part has a pulse, a report and a row to complete.
    station = start(tmp_path, plc_port=sim_plc.port, threshold=0.000001)
    supervisor = Supervisor(station, max_restarts=1, restart_window_s=60)
    names = ["capture", "inference", "deadline", "scheduler", "tracelog", "housekeeping", "control",
             "reject_output", "alarm_output", "alarm_plc_heartbeat"]
    replaced: dict[str, tuple[Stage, Stage]] = {}
    try:
        until(lambda: station.stats.parts >= 3 and (tmp_path / "ctl.sock").exists())
        assert sorted(station.stages()) == sorted(names), "every stage thread is in the registry"
        assert all(isinstance(stage, Stage) for stage in station.stages().values())
        for name in names:
            old = station.stages()[name]
            crash_once(monkeypatch, old)
            until(lambda: not old.is_alive())
            parts_before = station.stats.parts
            assert supervisor.check() is True, f"{name}: a restarted stage counts as moving"
            new = station.stages()[name]
            assert new is not old and type(new) is type(old) and new.is_alive(), name
            replaced[name] = (old, new)
            until(lambda: station.stats.parts >= parts_before + 3, supervisor=supervisor)
        # What each new thread is for still happens.
        heartbeat = sim_plc.register(BASE + hs.HEARTBEAT)
        until(lambda: sim_plc.register(BASE + hs.HEARTBEAT) != heartbeat)  # the restarted heartbeat counts on
        station.set_alarm("camera", "injected: camera lost")  # housekeeping -> the alarm output -> the PLC
        until(lambda: sim_plc.register(BASE + hs.ALARM_CODE) == hs.ALARM_STATION_UNHEALTHY)
        station.set_alarm("camera", None)
        until(lambda: sim_plc.register(BASE + hs.ALARM_CODE) == hs.ALARM_NONE)
        assert request(tmp_path / "ctl.sock", {"op": "status"})["ok"], "the new control thread answers"
        assert station.scheduler.worker is station.reject_worker, "the scheduler hands parts to the new output"
        assert station.alarm_actuator.io_thread() is station.stages()["alarm_plc_heartbeat"]
    finally:
        summary = station.stop()
    assert supervisor.restarts_total == len(names) and supervisor.gave_up is None
    assert not any(t.is_alive() for pair in replaced.values() for t in pair), "no thread outlives the station"
    db = tmp_path / "log" / "trace.sqlite"
    rows = read_rows(db, "SELECT seq, reason, actuator_result FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, summary["parts"] + 1)), "no gap, no duplicate"
    assert all(r["actuator_result"] in ("acknowledged", "late") for r in rows), "every reject reached the output"
    events = [e["message"] for e in read_rows(db, "SELECT message FROM events WHERE kind='stage_restart'")]
    assert sorted(m.split()[0] for m in events) == sorted(names)
