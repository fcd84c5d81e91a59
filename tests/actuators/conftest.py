"""Real components for the actuator tests: socat pty pairs standing in for serial cables (the simulated
PLC fixture `sim_plc` and the thread-leak guard come from tests/conftest.py).

A socat that is missing skips locally but fails under CI (`CI=true`), through support.require_component.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
from support import require_component

from station.testbench.serial_pty import SocatPtyPair


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[SocatPtyPair]:
    require_component(shutil.which("socat") is not None, "socat (Debian package socat)")
    pair = SocatPtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()


def _wait_until(t_ns: int) -> None:
    while (left := t_ns - time.monotonic_ns()) > 0:
        if left > 2_000_000:
            time.sleep((left - 2_000_000) / 1e9)


def pulse_parts(actuator, dues_ns: list[int], *, pulse_ms: float) -> list[dict]:
    """The reject scheduler's job at its smallest: on at each due time, off pulse_ms later, in order.
    Returns one outcome per part, like the trace log's actuator result: acknowledged / failed / not_sent."""
    from station.actuators.base import ActuatorError, ActuatorNotConnected

    outcomes = []
    for due in dues_ns:
        _wait_until(due)
        fired = time.monotonic_ns()
        outcome = {"due_ns": due, "fired_ns": fired, "result": "acknowledged", "error": None}
        try:
            with actuator.lock:
                actuator.set_output(True)
        except ActuatorNotConnected as exc:
            outcome.update(result="not_sent", error=str(exc))
        except ActuatorError as exc:
            outcome.update(result="failed", error=str(exc))
        outcomes.append(outcome)
        if outcome["result"] == "not_sent":
            continue
        _wait_until(due + int(pulse_ms * 1e6))
        try:
            with actuator.lock:
                actuator.set_output(False)
        except ActuatorError as exc:
            outcome["off_error"] = str(exc)
    return outcomes


def off_until_confirmed(actuator, *, timeout_s: float = 5.0) -> int:
    """Retry the off every 50 ms until the device confirms it (the output worker's policy, at the driver's
    level); returns the number of failed attempts. AssertionError when it never gets through."""
    from station.actuators.base import ActuatorError

    failed = 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with actuator.lock:
                actuator.set_output(False)
            return failed
        except ActuatorError:
            failed += 1
            assert time.monotonic() < deadline, "the off never got through"
            time.sleep(0.05)


@pytest.fixture
def fire_pulses():
    return pulse_parts


@pytest.fixture
def retry_off():
    return off_until_confirmed
