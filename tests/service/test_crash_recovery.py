"""kill -9 of a real `station run` process in the middle of a reject pulse, then a restart on the same log.

Real components: two `station run` subprocesses (the first killed with SIGKILL by its own pid), pymodbus's
own server on 127.0.0.1 as the PLC (every coil write timestamped server-side with the monotonic clock),
the SQLite trace log both processes write. A killed station cannot switch its ejector off; the next one
must do it before anything slow (the model load), and must say in the log which run ended by a crash and
which parts' commands have an unknown outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

from service_support import StationProcess, read_rows, wait_rows
from support import make_tiny_model, write_config

COIL = 1


def station_yaml(tmp: Path, port: int) -> Path:
    make_tiny_model(tmp / "tiny.pt")
    # Every part a reject; 150 ms pulses at 5 parts/s keep the coil on most of the time.
    return write_config(tmp / "s.yaml", f"""
station: {{log_level: INFO}}
line: {{max_parts_per_s: 5}}
camera: {{kind: synthetic, rate_parts_per_s: 5, size_px: 64}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: 0.000001, deadline_ms: 300}}
reject:
  delay_ms: 600
  pulse_ms: 150
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {port}, coil: {COIL}}}
tracelog: {{dir: log, images: none}}
""")


def log_time(stderr: str, message: str) -> float:
    """Wall time (s) of the first service-log line containing `message` (asctime, millisecond resolution)."""
    for line in stderr.splitlines():
        if message in line:
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            assert stamp, line
            return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no log line with {message!r}:\n{stderr[-3000:]}")


def wait_for(condition, timeout: float = 60.0, step: float = 0.001) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(step)


def test_kill_9_mid_pulse_then_restart_drives_the_coil_off_before_the_model_loads(tmp_path, sim_plc):
    cfg = station_yaml(tmp_path, sim_plc.port)
    db = tmp_path / "log" / "trace.sqlite"
    first = StationProcess(cfg, cwd=tmp_path)
    try:
        wait_rows(db, 4)
        wait_for(lambda: sim_plc.coil(COIL))  # an ejector pulse is on at the PLC right now
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        first.kill()
    killed_ns = time.monotonic_ns()
    time.sleep(0.5)
    assert sim_plc.coil(COIL), "nothing but the station switches the coil off"
    (tmp_path / "second").mkdir()
    # The PLC's clock is the monotonic one, the service log's is the wall clock: map one onto the other.
    wall_minus_mono = time.time() - time.monotonic()
    spawned_ns = time.monotonic_ns()
    second = StationProcess(cfg, cwd=tmp_path / "second")
    try:
        wait_for(lambda: not sim_plc.coil(COIL), timeout=60, step=0.005)
        wait_for(lambda: "loading model" in second.stderr, timeout=60, step=0.01)
        wait_rows(db, 3, sql="SELECT COUNT(*) FROM parts WHERE run_id = "
                             "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)")
        rc = second.stop()
    finally:
        second.kill()
    assert rc == 0, second.stderr
    off_ns = next(t for t, address, on in sim_plc.coil_events if address == COIL and t > killed_ns and not on)
    off_wall = off_ns / 1e9 + wall_minus_mono
    loading_wall = log_time(second.stderr, "loading model")
    # The off reached the PLC before the restarted station began loading its model (log stamps are whole ms).
    assert off_wall <= loading_wall + 0.001, f"off {off_wall - loading_wall:+.3f} s after 'loading model'"
    assert off_wall < log_time(second.stderr, "loaded")
    runs = read_rows(db, "SELECT run_id, stopped_at, summary_json FROM runs ORDER BY started_at")
    assert len(runs) == 2
    killed, restarted = runs
    assert killed["stopped_at"] is not None and json.loads(killed["summary_json"])["ended"] == "crashed"
    assert json.loads(restarted["summary_json"]).get("ended") != "crashed"
    events = read_rows(db, "SELECT run_id, kind FROM events WHERE kind = 'run_crashed'")
    assert [e["run_id"] for e in events] == [killed["run_id"]]
    rows = read_rows(db, "SELECT run_id, decision, actuator_result FROM parts")
    killed_rows = [r for r in rows if r["run_id"] == killed["run_id"]]
    assert killed_rows and all(r["decision"] == "reject" for r in rows)
    # Parts still travelling to the ejector at the kill: their outcome is unknown, never 'none'.
    assert not [r for r in killed_rows if r["actuator_result"] == "none"]
    assert [r for r in killed_rows if r["actuator_result"] == "unknown"]
    assert not [r for r in rows if r["run_id"] == restarted["run_id"] and r["actuator_result"] in ("none", "unknown")]
    assert not sim_plc.coil(COIL)
    print(f"\nrestart: coil off at the PLC {(off_ns - spawned_ns) / 1e9:.2f} s after the process was started, "
          f"{loading_wall - off_wall:.3f} s before 'loading model'; {len(killed_rows)} rows of the killed run, "
          f"{sum(r['actuator_result'] == 'unknown' for r in killed_rows)} unknown")
