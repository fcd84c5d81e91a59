"""StationService in this process, so the autouse fixture can check that no thread outlives it: a finite
source runs to its end, a stop request mid-run stops in order, and the notifications frame both."""

from __future__ import annotations

import threading
import uuid

import pytest
from service_support import NotifyListener, read_rows
from support import make_tiny_model, write_config

from station.configfile import load_config
from station.sdnotify import Notifier
from station.service import EXIT_OK, StationService


@pytest.fixture
def notify():
    listener = NotifyListener(f"@station-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


def config(tmp_path, limit: str = "null"):
    make_tiny_model(tmp_path / "tiny.pt")
    return load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 40}}
camera: {{kind: synthetic, rate_parts_per_s: 40, size_px: 64, limit: {limit}}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: 0.000001, deadline_ms: 200}}
reject: {{delay_ms: 300, pulse_ms: 10, actuator: {{kind: log}}}}
tracelog: {{dir: log, images: none}}
"""))


def test_finite_source_runs_to_its_end_and_leaves_no_thread(tmp_path, notify):
    service = StationService(config(tmp_path, limit="15"),
                             notifier=Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}))
    assert service.run() == EXIT_OK
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT seq, actuator_result FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 16))
    assert {r["actuator_result"] for r in rows} <= {"acknowledged", "late"}, "every reject fired before exit"
    notify.wait_for(lambda f: f.get("STOPPING") == "1", timeout=5)
    order = [k for _, f in notify.snapshot() for k in f if k in ("READY", "STOPPING")]
    assert order == ["READY", "STOPPING"]
    assert not service.station.reject_actuator.state, "output off"


def test_stop_request_mid_run_stops_in_order(tmp_path, notify):
    service = StationService(config(tmp_path), notifier=Notifier({"NOTIFY_SOCKET": notify.path}))
    parts_seen = threading.Event()

    def stop_after_parts() -> None:
        notify.wait_for(lambda f: f.get("READY") == "1", timeout=60)
        while service.station.stats.parts < 10:
            parts_seen.wait(0.05)
        service.request_stop()  # what the SIGTERM handler does

    stopper = threading.Thread(target=stop_after_parts, name="test-stopper")
    stopper.start()
    try:
        assert service.run() == EXIT_OK
    finally:
        stopper.join(timeout=60)
    summary_parts = service.station.stats.parts
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT seq FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, summary_parts + 1)) and summary_parts >= 10
    assert all(not t.is_alive() for t in service.station.threads())
