"""The supervisor on a real running Station (synthetic camera, tiny model, SQLite log), with injected faults:
a stage thread that crashes is restarted and the line goes on without losing a part or a queued reject; one
that keeps crashing makes the supervisor give up with the alarm raised; a hung one is reported, not doubled.

Every fault here is a fault injection (a camera, model or writer made to raise or block on purpose).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from service_support import read_rows, until
from support import make_tiny_model, write_config

from station import service
from station.actuators.log_output import LogActuator
from station.app import Station
from station.cameras.synthetic import SyntheticCamera
from station.classifier import Classifier
from station.configfile import load_config
from station.supervisor import GAVE_UP_ALARM, HUNG_ALARM, Supervisor
from station.tracelog import TraceLog


class CrashingCamera(SyntheticCamera):
    """Fault injection: grab() raises an unexpected error on the listed calls (or on every call)."""

    def __init__(self, config, *, crash_at: set[int] | None = None, always: bool = False) -> None:
        super().__init__(config)
        self.crash_at = crash_at or set()
        self.always = always
        self.calls = 0

    def grab(self, timeout_s: float):
        self.calls += 1
        if self.always or self.calls in self.crash_at:
            raise ZeroDivisionError(f"injected camera driver fault on grab {self.calls}")
        return super().grab(timeout_s)


@pytest.fixture(autouse=True)
def crashes_are_logged(monkeypatch):
    # The service's hook: a crashing stage thread is one log line, as under systemd.
    monkeypatch.setattr(threading, "excepthook", service._log_thread_crash)


def station_config(tmp: Path, extra: str = "", *, threshold: float = 0.5, delay_ms: float = 400) -> Path:
    make_tiny_model(tmp / "tiny.pt")
    return write_config(tmp / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 20, size_px: 64}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 200}}
reject: {{delay_ms: {delay_ms}, pulse_ms: 20, actuator: {{kind: log}}}}
tracelog: {{dir: log, images: none}}
{extra}""")


def parts(station: Station) -> list:
    return read_rows(station.config.tracelog.dir / "trace.sqlite", "SELECT * FROM parts ORDER BY seq")


def test_a_crashed_capture_thread_is_restarted_and_numbering_goes_on(tmp_path, caplog):
    loaded = load_config(station_config(tmp_path))
    station = Station(loaded, camera=CrashingCamera(loaded.config.camera, crash_at={5}))
    supervisor = Supervisor(station, max_restarts=3, restart_window_s=60)
    station.start()
    try:
        first = station.capture
        until(lambda: not first.is_alive())
        assert station.stats.parts <= 4
        assert supervisor.check() is True, "a restarted stage counts as moving"
        assert station.capture is not first and station.capture.is_alive()
        until(lambda: station.stats.parts >= 12, supervisor=supervisor)
    finally:
        summary = station.stop()
    rows = parts(station)
    assert [r["seq"] for r in rows] == list(range(1, summary["parts"] + 1)), "no gap, no duplicate"
    assert supervisor.restarts_total == 1 and supervisor.gave_up is None
    assert station.health.alarms() == {}
    assert any("stage thread capture crashed" in r.message for r in caplog.records)
    events = read_rows(station.config.tracelog.dir / "trace.sqlite", "SELECT kind FROM events")
    assert "stage_restart" in [e["kind"] for e in events]


def test_a_stage_that_keeps_dying_makes_the_supervisor_give_up_with_the_alarm_on(tmp_path):
    loaded = load_config(station_config(tmp_path, "alarm: {actuator: {kind: log}}"))
    station = Station(loaded, camera=CrashingCamera(loaded.config.camera, always=True))
    supervisor = Supervisor(station, max_restarts=2, restart_window_s=60)
    station.start()
    try:
        until(lambda: supervisor.gave_up is not None, supervisor=supervisor)
        assert supervisor.restarts_total == 2, "restarted up to the limit, then no more"
        assert supervisor.check() is False, "no watchdog ping once the supervisor gave up"
        assert "capture died 3 times" in station.health.alarms()[GAVE_UP_ALARM]
        assert supervisor.summary().startswith("UNHEALTHY")
        alarm_output = station.alarm_actuator
        assert isinstance(alarm_output, LogActuator)
        until(lambda: alarm_output.state is True, timeout=5)  # the stack light goes on
        assert supervisor.restarts_total == 2
    finally:
        station.stop()
    events = [e["kind"] for e in read_rows(station.config.tracelog.dir / "trace.sqlite", "SELECT kind FROM events")]
    assert events.count("stage_restart") == 2 and "supervisor_gave_up" in events


def test_a_crashed_inference_worker_is_restarted_and_its_part_fails_safe(tmp_path):
    loaded = load_config(station_config(tmp_path))
    classifier = Classifier.from_file(loaded.config.model.path, device="cpu", warmup_runs=0)
    real_assess = classifier.assess
    crashed: list[int] = []

    def assess(image):
        if len(crashed) == 0 and station.worker.scored >= 5:
            crashed.append(station.worker.scored)
            raise KeyError("injected fault: not an error type the worker handles")
        return real_assess(image)

    classifier.assess = assess
    station = Station(loaded, classifier=classifier)
    supervisor = Supervisor(station, max_restarts=3, restart_window_s=60)
    station.start()
    try:
        until(lambda: bool(crashed) and station.stats.parts >= 20, supervisor=supervisor)
    finally:
        summary = station.stop()
    rows = parts(station)
    assert [r["seq"] for r in rows] == list(range(1, summary["parts"] + 1))
    timeouts = [r for r in rows if r["reason"] == "timeout"]
    assert len(timeouts) == 1 and timeouts[0]["decision"] == "reject", "the part being scored failed safe"
    later = [r for r in rows if r["seq"] > timeouts[0]["seq"] and r["reason"] == "model"]
    assert len(later) >= 5, "the restarted worker scores the following parts"
    assert supervisor.restarts_total == 1


def test_a_hung_inference_worker_is_reported_and_never_doubled(tmp_path):
    loaded = load_config(station_config(tmp_path, "service: {inference_hang_s: 0.5}"))
    classifier = Classifier.from_file(loaded.config.model.path, device="cpu", warmup_runs=0)
    real_assess = classifier.assess
    hang, release = threading.Event(), threading.Event()

    def assess(image):
        if hang.is_set():
            release.wait(30)  # injected hang: the model call blocks
        return real_assess(image)

    classifier.assess = assess
    station = Station(loaded, classifier=classifier)
    supervisor = Supervisor.from_config(station, loaded.config.service)
    station.start()
    try:
        until(lambda: station.stats.parts >= 3)
        assert supervisor.check() is True
        worker = station.worker
        hang.set()
        until(lambda: supervisor.check() is False)
        assert HUNG_ALARM in station.health.alarms() and "inference" in station.health.alarms()[HUNG_ALARM]
        assert supervisor.summary().startswith("HUNG inference")
        assert station.worker is worker and supervisor.restarts_total == 0, "a live thread is not doubled"
        # Meanwhile the line goes on deciding: parts time out to the fail-safe verdict.
        until(lambda: station.stats.snapshot()["fail_safe"].get("timeout", 0) >= 1)
        hang.clear()
        release.set()
        until(lambda: supervisor.check() is True, timeout=10)
        assert HUNG_ALARM not in station.health.alarms()
    finally:
        release.set()
        station.stop()


def test_a_crashed_reject_output_worker_hands_its_commands_to_the_new_one(tmp_path, monkeypatch):
    crashes: list[int] = []
    real_set_output = LogActuator.set_output

    def set_output(self, on: bool) -> None:
        if on and not crashes:
            crashes.append(1)
            raise OSError("injected fault: not an ActuatorError")
        real_set_output(self, on)

    monkeypatch.setattr(LogActuator, "set_output", set_output)
    # Everything rejects; a long travel time keeps many rejects queued when the first one crashes the thread.
    loaded = load_config(station_config(tmp_path, threshold=0.000001, delay_ms=1500))
    station = Station(loaded)
    supervisor = Supervisor(station, max_restarts=3, restart_window_s=60)
    station.start()
    try:
        first = station.reject_worker
        until(lambda: bool(crashes), supervisor=supervisor)
        until(lambda: station.stats.parts >= 40, supervisor=supervisor)
    finally:
        summary = station.stop()
    rows = parts(station)
    assert len(rows) == summary["parts"] and all(r["decision"] == "reject" for r in rows)
    assert supervisor.restarts_total == 1 and station.reject_worker is not first
    # The part whose "on" was being sent when the thread died is not lost: the new worker switches the output
    # off first (nobody knows what the device did), then sends it late; the rejects queued behind it follow.
    first_row = rows[0]
    assert first_row["actuator_result"] == "late" and first_row["fire_lateness_ms"] > 5
    assert all(r["actuator_result"] in ("acknowledged", "late") for r in rows)
    assert station.reject_actuator.counters["on"] == len([r for r in rows if not (r["actuator_error"] or "")
                                                          .startswith("merged")])


def test_a_crashed_trace_log_writer_is_restarted_without_losing_a_row(tmp_path, monkeypatch):
    crashes: list[int] = []
    real_apply = TraceLog._apply

    def apply(self, conn, op):
        if op.kind == "part" and op.values["seq"] == 6 and not crashes:
            crashes.append(6)
            raise ZeroDivisionError("injected fault in the trace-log writer")
        real_apply(self, conn, op)

    monkeypatch.setattr(TraceLog, "_apply", apply)
    loaded = load_config(station_config(tmp_path))
    station = Station(loaded)
    supervisor = Supervisor(station, max_restarts=3, restart_window_s=60)
    station.start()
    try:
        until(lambda: bool(crashes) and station.stats.parts >= 20, supervisor=supervisor)
        assert supervisor.restarts_total == 1
    finally:
        summary = station.stop()
    assert [r["seq"] for r in parts(station)] == list(range(1, summary["parts"] + 1))
