"""Alarm hysteresis and rate-limited error lines, on a clock the test moves (the logic, not the disk:
tests/station/test_disk_full.py runs both against a real full disk)."""

from __future__ import annotations

import logging

from station.fault_reporting import LatchedAlarm, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_alarm_is_raised_at_once_and_cleared_only_after_a_quiet_period():
    clock, calls = Clock(), []
    alarm = LatchedAlarm("tracelog", lambda name, msg: calls.append((name, msg)), clear_after_s=5.0, clock=clock)
    alarm.update("disk full")
    assert calls == [("tracelog", "disk full")]
    # Fine for a moment (pruning freed a little), failing again: the alarm stays up, nothing is sent.
    for _ in range(10):
        clock.now += 1.0
        alarm.update(None)
        clock.now += 0.5
        alarm.update("disk full")
    assert calls == [("tracelog", "disk full")] and alarm.raised
    clock.now += 1.0
    alarm.update(None)
    clock.now += 4.9
    alarm.tick()
    assert alarm.raised, "not yet quiet for clear_after_s"
    clock.now += 0.2
    alarm.tick()
    assert calls == [("tracelog", "disk full"), ("tracelog", None)]
    assert (alarm.raised_count, alarm.cleared_count) == (1, 1)
    alarm.update("disk full again")
    assert alarm.raised_count == 2 and calls[-1] == ("tracelog", "disk full again")


def test_a_new_quiet_period_applies_to_an_alarm_already_waiting_to_clear():
    """`update_clear_after` (tracelog.alarm_clear_s, reloaded live): the quiet time already passed counts."""
    clock, calls = Clock(), []
    alarm = LatchedAlarm("tracelog", lambda name, msg: calls.append((name, msg)), clear_after_s=30.0, clock=clock)
    alarm.update("disk full")
    alarm.update(None)
    clock.now += 3.0
    alarm.tick()
    assert alarm.raised, "30 s to go"
    alarm.update_clear_after(2.0)
    alarm.tick()
    assert not alarm.raised and calls[-1] == ("tracelog", None), "fine for 3 s, 2 s needed"
    alarm.update("disk full")
    alarm.update(None)
    clock.now += 1.0
    alarm.tick()
    assert alarm.raised and alarm.clear_after_s == 2.0


def test_error_lines_are_rate_limited_per_kind_and_counted(caplog):
    clock = Clock()
    errors = RateLimitedLog(logging.getLogger("test.faults"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.ERROR, logger="test.faults"):
        for _ in range(57):  # a second's worth of failures, as a full disk produces them
            errors.error("write", "write failed")
            clock.now += 1 / 57
        errors.error("open", "cannot open")
        clock.now += 10.0
        errors.error("write", "write failed")
        errors.error("write", "write failed")
        errors.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["write failed", "cannot open", "write failed (56 more like it in the last 10 s)",
                     "write: 1 more error(s) like the last one reported"]
