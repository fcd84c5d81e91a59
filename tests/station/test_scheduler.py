"""The reject scheduler and the reject output's worker with the `log` actuator: order, merging, drain on stop."""

from __future__ import annotations

import time

from station.actuators.log_output import LogActuator
from station.cli_run import format_summary
from station.config_actuators import LogActuatorConfig
from station.health import Stats
from station.output_worker import OutputWorker
from station.records import ActuatorResult, Decision, Reason, Verdict
from station.scheduler import RejectScheduler


def verdict(seq: int, t_ns: int, decision: Decision = Decision.REJECT) -> Verdict:
    return Verdict(seq=seq, decision=decision, reason=Reason.MODEL, p_defect=0.9, threshold=0.5, t_capture_ns=t_ns,
                   t_decided_ns=t_ns, wall_time=time.time(), source="test")


def test_overlapping_pulses_merge_into_one_and_every_part_is_reported():
    actuator = LogActuator(LogActuatorConfig())
    reports = []
    worker = OutputWorker(actuator, role="reject", pulse_ms=40, late_tolerance_ms=1000, plc_slow_clear_after=20,
                          on_report=reports.append, on_alarm=lambda n, m: None)
    sched = RejectScheduler(worker, delay_ms=50)
    worker.start()
    sched.start()
    t0 = time.monotonic_ns()
    try:
        for i, seq in enumerate((1, 2, 3)):
            sched.submit(verdict(seq, t0 + i * 10_000_000))  # 10 ms apart, 40 ms pulses
        sched.submit(verdict(4, t0, Decision.OK))          # ok parts need no command
        assert sched.drain(5)
    finally:
        sched.stop()
        sched.join(5)
        worker.stop()
        worker.join(5)
    assert [r.seq for r in reports] == [1, 2, 3]
    assert all(r.result is ActuatorResult.ACKNOWLEDGED for r in reports)
    assert [r.error for r in reports][1:] == ["merged with previous pulse"] * 2
    # One on for all three parts, one off 40 ms after the last part's due time.
    assert actuator.counters["on"] == 1 and actuator.counters["off"] == 1 and actuator.state is False
    assert worker.book.merged == 2 and worker.book.pulses == 1
    assert len(sched.handoff_lateness_ms) == 3
    # The run summary says how many rejects rode on an overlapping pulse.
    stats = Stats()
    for r in reports:
        stats.add_report(r)
    summary = stats.snapshot()
    assert summary["merged_pulses"] == 2 and summary["actuator"] == {"acknowledged": 3}
    assert "acknowledged 3 (2 merged into an overlapping pulse)" in format_summary({**summary, "parts": 3, "ok": 0,
                                                                                     "reject": 3, "labelled": 0})
