"""Shared fixtures: thread-leak guard, tiny untrained model, the simulated PLC (pymodbus's own server).

Helper functions live in tests/support.py, importable as `support` because this file puts tests/ on
sys.path (pytest's conftest modules themselves are not importable by name across folders). The test
network `tinynet` (tests/tinynet.py) is registered here for the whole test process; subprocesses get it
through tests/station_cli.py (`support.STATION_CLI`).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tinynet  # noqa: E402
from support import make_tiny_model  # noqa: E402

tinynet.register()


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every test must stop every thread it started (no thread outlives the station)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    names = sorted(t.name for t in extra)
    pytest.fail(f"threads left running after the test: {names}")


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny.pt")


@pytest.fixture
def sim_plc():
    from station.testbench.plc_sim import start_sim_server

    plc = start_sim_server("127.0.0.1", 0)
    yield plc
    plc.stop()


