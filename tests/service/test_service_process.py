"""`station run` as systemd runs it: a real subprocess, a real notify socket in NOTIFY_SOCKET, WATCHDOG_USEC,
real signals, a real PLC (pymodbus's own server on 127.0.0.1) and the SQLite trace log read from outside.

READY=1 only once the PLC answers (or after the start-up timeout with `startup: degraded`), WATCHDOG=1 at
about half the interval and never once a stage hangs (hang injected by a runner that makes the model block),
SIGHUP reloads (threshold from the next part on; a broken YAML or a corrupt model keeps what runs), SIGTERM
mid-run ends with STOPPING=1, exit 0, every captured part logged and the output off.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
import uuid
from pathlib import Path

import pytest
from service_support import NotifyListener, StationProcess, count_rows, free_port, read_rows, wait_rows
from support import REPO, make_tiny_model, own_pulse_rows, write_config

from station.testbench.plc_sim import start_sim_server

WATCHDOG_USEC = 1_000_000


@pytest.fixture
def notify():
    listener = NotifyListener(f"@station-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


def service_env(listener: NotifyListener, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC), **extra}


def station_yaml(tmp: Path, *, actuator: str = "{kind: log}", threshold: float = 0.000001,
                 model: str = "tiny.pt", extra: str = "") -> Path:
    if not (tmp / "tiny.pt").exists():
        make_tiny_model(tmp / "tiny.pt")
    return write_config(tmp / "s.yaml", f"""
station: {{log_level: INFO}}
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 10, size_px: 64}}
model: {{path: {model}, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 300}}
reject: {{delay_ms: 500, pulse_ms: 20, actuator: {actuator}}}
tracelog: {{dir: log, images: none}}
{extra}""")


def modbus(port: int) -> str:
    return f"{{kind: modbus_tcp, host: 127.0.0.1, port: {port}, coil: 1, reconnect_min_ms: 100, reconnect_max_ms: 300}}"


def is_ready(f: dict[str, str]) -> bool:
    return f.get("READY") == "1"


def test_ready_watchdog_at_half_interval_stopping_and_clean_exit(tmp_path, notify, sim_plc):
    cfg = station_yaml(tmp_path, actuator=modbus(sim_plc.port))
    proc = StationProcess(cfg, cwd=tmp_path, env=service_env(notify))
    try:
        ready_at = notify.wait_for(is_ready, timeout=90)
        db = tmp_path / "log" / "trace.sqlite"
        wait_rows(db, 20)
        pings = [t for t in notify.times("WATCHDOG", "1") if t >= ready_at]
        proc.signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 0, proc.stderr
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(gaps) >= 3, pings
    # Half of WATCHDOG_USEC (0.5 s), loosely: a busy test machine may delay single pings.
    assert 0.3 <= statistics.median(gaps) <= 0.8, gaps
    stopping = notify.times("STOPPING", "1")
    assert len(stopping) == 1 and stopping[0] > pings[-1] - 1.0
    assert "STATUS" in notify.snapshot()[0][1], "STATUS= while starting"
    ready_status = [f["STATUS"] for _, f in notify.snapshot() if is_ready(f)][0]
    assert ready_status.startswith("running:") and "healthy" in ready_status
    # Every captured part has its row, every reject its pulse, and the output is off.
    rows = read_rows(db, "SELECT seq, decision, actuator_result, actuator_error FROM parts ORDER BY seq")
    (summary,) = read_rows(db, "SELECT summary_json FROM runs")
    assert [r["seq"] for r in rows] == list(range(1, json.loads(summary["summary_json"])["parts"] + 1))
    assert {r["actuator_result"] for r in rows} <= {"acknowledged", "late"}
    assert len(sim_plc.pulses(1)) == len(own_pulse_rows(rows)) and not sim_plc.coil(1)
    assert "stopped cleanly" in proc.stderr


def test_ready_waits_for_the_plc(tmp_path, notify):
    port = free_port()
    cfg = station_yaml(tmp_path, actuator=modbus(port), extra="service: {startup: wait, startup_timeout_s: 60}")
    proc = StationProcess(cfg, cwd=tmp_path, env=service_env(notify))
    plc = None
    try:
        waiting = notify.wait_for(lambda f: "waiting for reject output" in f.get("STATUS", ""), timeout=90)
        time.sleep(1.0)
        assert not notify.times("READY"), "no READY=1 while the PLC is down"
        plc = start_sim_server("127.0.0.1", port)
        ready_at = notify.wait_for(is_ready, timeout=30)
        assert ready_at > waiting
        rc = proc.stop()
    finally:
        proc.kill()
        if plc is not None:
            plc.stop()
    assert rc == 0, proc.stderr


@pytest.mark.parametrize("policy", ["wait", "degraded"])
def test_startup_timeout_fails_or_runs_degraded(tmp_path, notify, policy):
    cfg = station_yaml(tmp_path, actuator=modbus(free_port()),
                       extra=f"service: {{startup: {policy}, startup_timeout_s: 2}}")
    proc = StationProcess(cfg, cwd=tmp_path, env=service_env(notify), journal=True)
    try:
        if policy == "wait":
            rc = proc.wait(timeout=90)
            assert rc == 1, proc.stderr
            assert not notify.times("READY")
            assert any(s.startswith("start-up failed: reject output") for s in notify.statuses())
            # Under journald each line carries its syslog priority (3 error, 6 info) instead of a timestamp.
            lines = proc.stderr.splitlines()
            assert any(line.startswith("<3>station.service: start-up failed") for line in lines)
            assert any(line.startswith("<6>station.service: starting station") for line in lines)
        else:
            notify.wait_for(is_ready, timeout=90)
            status = [f["STATUS"] for _, f in notify.snapshot() if is_ready(f)][0]
            assert status.startswith("DEGRADED:") and "reject_actuator" in status
            db = tmp_path / "log" / "trace.sqlite"
            wait_rows(db, 5)  # it decides and logs while degraded
            assert proc.stop() == 0, proc.stderr
            results = {r["actuator_result"] for r in read_rows(db, "SELECT actuator_result FROM parts")}
            assert results <= {"not_sent", "failed"}, "every reject row says its pulse was not delivered"
    finally:
        proc.kill()


HANG_RUNNER = '''\
"""Fault injection for the test: once the flag file exists, the model call blocks forever."""
import os
import sys
import threading

from station import classifier

sys.path.append(os.environ["STATION_TEST_DIR"])  # tests/: the test network of the tiny model
import tinynet  # noqa: E402

tinynet.register()
FLAG = os.environ["STATION_TEST_HANG_FLAG"]
real_assess = classifier.Classifier.assess


def assess(self, image):
    if os.path.exists(FLAG):
        threading.Event().wait()  # never set: a hung inference call
    return real_assess(self, image)


classifier.Classifier.assess = assess
from station.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


def test_watchdog_pings_stop_when_inference_hangs(tmp_path, notify):
    runner = tmp_path / "hang_runner.py"
    runner.write_text(HANG_RUNNER)
    flag = tmp_path / "hang-now"
    cfg = station_yaml(tmp_path, extra="service: {inference_hang_s: 1.0}")
    proc = StationProcess(cfg, cwd=tmp_path, runner=runner, env=service_env(
        notify, STATION_TEST_HANG_FLAG=str(flag), STATION_TEST_DIR=str(REPO / "tests")))
    try:
        notify.wait_for(is_ready, timeout=90)
        db = tmp_path / "log" / "trace.sqlite"
        wait_rows(db, 5)
        flag.touch()
        hung_at = notify.wait_for(lambda f: "HUNG inference" in f.get("STATUS", ""), timeout=30)
        time.sleep(3.0)  # six ping intervals
        assert proc.proc.poll() is None, "still running: it is systemd that restarts it"
        late_pings = notify.times("WATCHDOG", "1")
        assert late_pings and all(t <= hung_at + 0.1 for t in late_pings), "no ping once a stage hangs"
        # The line keeps deciding meanwhile: parts behind the hung model time out to the fail-safe verdict.
        wait_rows(db, 3, sql="SELECT COUNT(*) FROM parts WHERE reason='timeout' AND decision='reject'")
        rc = proc.stop()
    finally:
        proc.kill()
    assert "stage inference is hung" in proc.stderr
    assert rc == 1 and "still running: inference" in proc.stderr, "a stop that leaves a thread says so"


def test_sighup_threshold_from_the_next_part_and_broken_yaml_keeps_running_config(tmp_path, notify):
    cfg = station_yaml(tmp_path, threshold=0.000001)  # every part rejected
    proc = StationProcess(cfg, cwd=tmp_path, env=service_env(notify))
    db = tmp_path / "log" / "trace.sqlite"
    try:
        notify.wait_for(is_ready, timeout=90)
        wait_rows(db, 8)
        station_yaml(tmp_path, threshold=0.999999)  # every part passes
        proc.signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda f: f.get("RELOADING") == "1", timeout=30)
        notify.wait_for(is_ready, after=reloading, timeout=30)
        n = count_rows(db)
        wait_rows(db, n + 8)
        write_config(cfg, "camera: {kind: synthetic\ndecision: [\n")  # broken YAML
        proc.signal(signal.SIGHUP)
        wait_rows(db, 1, sql="SELECT COUNT(*) FROM events WHERE kind='reload_failed'")
        n = count_rows(db)
        wait_rows(db, n + 8)
        assert proc.proc.poll() is None
        rc = proc.stop()
    finally:
        proc.kill()
    assert rc == 0, proc.stderr
    rows = read_rows(db, "SELECT seq, decision, reason, threshold FROM parts ORDER BY seq")
    decisions = "".join("R" if r["decision"] == "reject" else "O" for r in rows)
    assert all(r["reason"] == "model" for r in rows)
    # One switch, from one part on: all rejects before it, all passes after it, and it stuck after the bad YAML.
    assert decisions.count("R") >= 8 and decisions.count("O") >= 16 and "OR" not in decisions, decisions
    assert {r["threshold"] for r in rows if r["decision"] == "ok"} == {0.999999}
    (failed,) = read_rows(db, "SELECT message FROM events WHERE kind='reload_failed'")
    assert "malformed YAML" in failed["message"]
    assert "reload failed, nothing changed" in proc.stderr


def test_sighup_corrupt_model_keeps_the_old_one_and_a_good_one_is_swapped_in(tmp_path, notify):
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = station_yaml(tmp_path)
    proc = StationProcess(cfg, cwd=tmp_path, env=service_env(notify))
    db = tmp_path / "log" / "trace.sqlite"
    try:
        notify.wait_for(is_ready, timeout=90)
        wait_rows(db, 5)
        (tmp_path / "next.pt").write_bytes(b"PK\x03\x04 half a model file")
        station_yaml(tmp_path, model="next.pt")
        proc.signal(signal.SIGHUP)
        wait_rows(db, 1, sql="SELECT COUNT(*) FROM events WHERE kind='reload_failed'")
        n = count_rows(db)
        wait_rows(db, n + 5)
        make_tiny_model(tmp_path / "next.pt", seed=7)  # now a good, different model at that path
        proc.signal(signal.SIGHUP)
        wait_rows(db, 1, sql="SELECT COUNT(*) FROM events WHERE kind='reload'")
        n = count_rows(db)
        wait_rows(db, n + 5)
        rc = proc.stop()
    finally:
        proc.kill()
    assert rc == 0, proc.stderr
    rows = read_rows(db, "SELECT seq, model_id, model_sha256 FROM parts ORDER BY seq")
    models = [r["model_id"] for r in rows]
    first, last = models[0], models[-1]
    assert first != last, "the good model was swapped in"
    switch = models.index(last)
    assert set(models[:switch]) == {first} and set(models[switch:]) == {last}
    assert switch >= 10, "the corrupt model was never used: the old one kept scoring"
    (failed,) = read_rows(db, "SELECT message FROM events WHERE kind='reload_failed'")
    assert "corrupt" in failed["message"] and "is kept" in failed["message"]


def test_a_corrupt_model_exits_2_without_ready(tmp_path, notify):
    (tmp_path / "bad.pt").write_bytes(b"garbage" * 50)
    proc = StationProcess(station_yaml(tmp_path, model="bad.pt"), cwd=tmp_path, env=service_env(notify))
    try:
        rc = proc.wait(timeout=90)
    finally:
        proc.kill()
    # Exit 2: the unit's RestartPreventExitStatus=2 keeps systemd from restarting into the same bad file.
    assert rc == 2 and "station not started" in proc.stderr and "corrupt" in proc.stderr
    assert not notify.times("READY")
    assert any(s.startswith("not started:") for s in notify.statuses())
