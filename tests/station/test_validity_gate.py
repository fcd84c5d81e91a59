"""The validity gate in the station: image checks, per-station limits, image_check rejects, the image_quality
alarm (also as the PLC handshake's alarm code), drift warnings, trace-log columns and their migration, reload.

Real components: frames from the station's own renderer, a tiny artifact whose validity domain is fitted on
such frames (tests/support.py), the Station with its real threads, pymodbus's own server on 127.0.0.1 as the
handshake PLC, SQLite trace logs, `station check-config` as a subprocess. The casting-image tests of the
shipped model's gate are in test_gate_casting.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import REPO, STATION_CLI, make_tiny_model, query, write_config

from station.actuators import plc_handshake as hs
from station.app import Station
from station.artifact import load_artifact
from station.cameras.synthetic import render_impeller
from station.config_gate import GateLimits
from station.configfile import ConfigError, load_config
from station.gate import Gate, GateConfigError
from station.image_checks import ImageChecks
from station.tracelog import SCHEMA, RunInfo, TraceLog, rows_since
from training import perturb

STATION = STATION_CLI  # the test network registered (tests/station_cli.py)


def station_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_image_checks_follow_the_faults_they_are_named_for():
    checks = ImageChecks()
    frame = render_impeller(np.random.default_rng(3), 160, defective=False)
    rng = np.random.default_rng(0)
    base = checks.measure(frame)
    black = checks.measure(np.zeros_like(frame))
    assert (black["contrast"], black["dark_clip"], black["part_size"]) == (0.0, 1.0, 0.0)
    assert black["part_offset"] > 0.7 and checks.measure(np.full_like(frame, 255))["bright_clip"] == 1.0
    dim = checks.measure(perturb.scale(frame, 0.5))
    assert dim["brightness"] == pytest.approx(base["brightness"] * 0.5, rel=0.02)
    assert dim["focus"] == pytest.approx(base["focus"], rel=0.05), "focus does not follow the lamp"
    blurred = checks.measure(perturb.blur(frame, 2.0))
    noisy = checks.measure(perturb.noise(frame, 8.0, rng))
    assert blurred["focus"] < 0.85 * base["focus"], "defocus lowers focus"
    assert noisy["focus"] == pytest.approx(base["focus"], rel=0.05), "sensor noise does not pass for sharpness"
    assert noisy["noise"] > base["noise"] + 4, "noise is measured"
    assert checks.measure(perturb.zoom(frame, 1.3))["part_size"] > 1.15 * base["part_size"], "closer looks bigger"
    assert checks.measure(perturb.zoom(frame, 0.7))["part_size"] < 0.85 * base["part_size"]
    assert checks.measure(perturb.shift(frame, 0.2, rng))["part_offset"] > base["part_offset"] + 0.15


def test_station_limits_tighten_or_widen_the_models_and_a_contradiction_names_its_key(tmp_path):
    domain = load_artifact(make_tiny_model(tmp_path / "tiny.pt")).validity
    model_min, model_max = domain.limit("brightness", "min"), domain.limit("brightness", "max")
    gate = Gate.build(domain, GateLimits(brightness_min=model_min + 1, novelty_max=domain.limit("novelty", "max") * 3))
    assert gate.limits["brightness"] == {"min": model_min + 1, "max": model_max}
    assert gate.sources["brightness_min"] == "station (tightened)" and gate.sources["brightness_max"] == "model"
    assert gate.sources["novelty_max"] == "station (widened)" and len(gate.widened) == 1
    assert "gate.limits.novelty_max" in gate.widened[0]
    with pytest.raises(GateConfigError, match=r"^gate.limits.brightness_min: .* is not below brightness_max"):
        Gate.build(domain, GateLimits(brightness_min=model_max + 5))
    inside = {m: float(np.mean(list(s.values()))) for m, s in domain.limits.items()}
    assert gate.check(inside).passed
    assert gate.check({**inside, "brightness": model_min}).failed == ("brightness_min",)
    assert gate.check({**inside, "novelty": float("nan")}).failed == ("novelty_max",), "NaN never passes"


def test_gate_yaml_errors_are_caught_with_line_and_key(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", """camera: {kind: synthetic}
gate:
  limits:
    brightness_min: 200
    brightness_max: 100
  alarm: {k: 30, n: 20}
""")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    issues = {i.key: i for i in err.value.issues}
    assert issues["gate.limits.brightness_min"].line == 4
    alarm = issues["gate.alarm.k"]
    assert alarm.line == 6 and "cannot fail among the last gate.alarm.n" in alarm.message
    result = station_cmd("check-config", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "gate.limits.brightness_min" in result.stderr


def test_check_config_with_the_model_prints_the_effective_limits_and_refuses_a_contradiction(tmp_path):
    domain = load_artifact(make_tiny_model(tmp_path / "tiny.pt")).validity
    base = ("camera: {kind: synthetic}\nmodel: {path: tiny.pt}\ndecision: {deadline_ms: 300}\n"
            "reject: {delay_ms: 800, actuator: {kind: log}}\ntracelog: {dir: log}\n")
    widened = write_config(tmp_path / "w.yaml", base + "gate: {limits: {novelty_max: 50}}\n")
    result = station_cmd("check-config", str(widened), "--model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "NOT calibrated" in result.stdout and "alarm image_quality at 5 of the last 20" in result.stdout
    novelty_row = next(line for line in result.stdout.splitlines() if line.startswith("novelty"))
    assert "50" in novelty_row and "max station (widened)" in novelty_row
    assert "WARNING: gate.limits.novelty_max 50 widens the model's calibrated" in result.stdout
    too_high = domain.limit("brightness", "max") + 10
    clash = write_config(tmp_path / "c.yaml", base + f"gate: {{limits: {{brightness_min: {too_high}}}}}\n")
    result = station_cmd("check-config", str(clash), "--model", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "gate.limits.brightness_min" in result.stderr and "(model)" in result.stderr


BASE = 100  # handshake register base


def test_a_covered_lens_is_rejected_alarmed_to_the_plc_and_logged_never_ok(tmp_path, sim_plc):
    """A lens-cover episode of 10 parts with decision.fail_safe: ok: every covered part is an image_check
    reject, image_quality rises (ALARM_CODE 2 at the PLC, events table, summary line) and clears once
    parts are visible again; every row keeps p_defect and what the gate measured."""
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 12, size_px: 96, limit: 36, lens_cover: {{first_part: 11, parts: 10}}}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: 0.999999, deadline_ms: 900, fail_safe: ok}}
gate: {{alarm: {{k: 3, n: 6}}}}
reject:
  # Generous timing: on a loaded test box a missed deadline (a timeout verdict) or a slow reply (the
  # plc_slow alarm in ALARM_CODE) would be right, but neither is what this test is about.
  delay_ms: 1000
  pulse_ms: 20
  late_tolerance_ms: 500
  actuator:
    kind: plc_handshake
    link: {{transport: tcp, host: 127.0.0.1, port: {sim_plc.port}}}
    register_base: {BASE}
    heartbeat_ms: 50
tracelog: {{dir: log, images: none}}
"""))
    station = Station(cfg)
    station.start()
    codes = []
    try:
        deadline = time.monotonic() + 60
        while not (station.source_finished and station.idle()) and time.monotonic() < deadline:
            codes.append(sim_plc.register(BASE + hs.ALARM_CODE))
            time.sleep(0.02)
        line = station.summary_line()
    finally:
        summary = station.stop()
    db = tmp_path / "log" / "trace.sqlite"
    rows = query(db, "SELECT seq, decision, reason, p_defect, gate_failed, gate_brightness, gate_contrast, "
                     "gate_novelty, gate_ms FROM parts ORDER BY seq")
    assert len(rows) == 36
    covered = rows[10:20]
    assert all(r["reason"] == "image_check" and r["decision"] == "reject" for r in covered), \
        "a covered lens never gives ok, fail_safe: ok or not"
    assert all("brightness_min" in r["gate_failed"] and r["gate_brightness"] < 20 for r in covered)
    assert all(r["p_defect"] is not None and r["gate_ms"] > 0 for r in covered), "the model's score is kept"
    visible = rows[:10] + rows[20:]
    assert all(r["reason"] == "model" and r["gate_failed"] is None and r["gate_novelty"] is not None for r in visible)
    assert summary["fail_safe"] == {"image_check": 10}
    assert summary["image_checks"]["brightness_min"] == 10
    assert summary["gate"]["image_quality_raised"] == 1 and not summary["gate"]["image_quality_alarm"]
    assert "image_check=10" in line
    assert hs.ALARM_IMAGE_QUALITY in codes and codes[-1] == hs.ALARM_NONE, "the PLC saw the alarm come and go"
    events = [(e["kind"], e["message"]) for e in query(db, "SELECT kind, message FROM events ORDER BY id")]
    raised = [m for k, m in events if k == "alarm" and m.startswith("image_quality")]
    assert len(raised) == 1 and "stop the line" in raised[0]
    assert ("alarm_cleared", "image_quality") in events
    cols, exported = rows_since(db, None)  # what `station trace export` writes
    assert {"gate_failed", "gate_brightness", "gate_novelty", "gate_ms"} <= set(cols)
    assert dict(zip(cols, exported[12]))["gate_failed"].startswith("brightness_min")


def test_a_slow_drift_is_warned_about_before_the_gate_trips(tmp_path):
    """A lamp dimming a little per part: the rolling mean crosses half the way to the brightness limit, and a
    `drift` WARNING event is written, while single frames still pass; only later do frames fail the gate."""
    domain = load_artifact(make_tiny_model(tmp_path / "tiny.pt")).validity
    ref, low = domain.reference["brightness"]["mean"], domain.limit("brightness", "min")
    folder = tmp_path / "frames" / "ok_front"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    n = 90
    for i in range(n):
        frame = render_impeller(rng, 96, defective=False)
        # from the reference brightness down to 1.5 x the distance to the limit, linearly
        factor = 1.0 - 1.5 * (ref - low) / ref * i / (n - 1)
        Image.fromarray(perturb.scale(frame, factor)).save(folder / f"{i:03d}.png")
    cfg = load_config(write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames, rate_parts_per_s: null, order: sorted}
model: {path: tiny.pt, device: cpu, warmup_runs: 0}
gate: {drift: {window_parts: 10, warn_share: 0.5}, alarm: {k: 20, n: 20}}
reject: {actuator: {kind: log}}
tracelog: {dir: log, images: none}
"""))
    from support import run_to_end

    run_to_end(cfg)
    db = tmp_path / "log" / "trace.sqlite"
    first_fail = query(db, "SELECT MIN(seq) AS s FROM parts WHERE reason = 'image_check'")[0]["s"]
    assert first_fail is not None, "the dimmed end of the run fails the gate"
    drift = query(db, "SELECT at, message FROM events WHERE kind = 'drift' AND message LIKE 'brightness%'")
    assert drift and "training reference" in drift[0]["message"]
    first_fail_at = query(db, "SELECT captured_at FROM parts WHERE seq = ?", (first_fail,))[0]["captured_at"]
    assert drift[0]["at"] < first_fail_at, "the drift warning comes before the first image_check reject"


OLD_PARTS = SCHEMA.split("CREATE INDEX")[0]


def test_an_existing_trace_log_gets_the_gate_columns_and_keeps_its_rows(tmp_path):
    old = OLD_PARTS
    for column in ("gate_failed     TEXT,", "gate_brightness REAL,", "gate_contrast   REAL,", "gate_dark_clip  REAL,",
                   "gate_bright_clip REAL,", "gate_focus      REAL,", "gate_noise      REAL,",
                   "gate_part_offset REAL,", "gate_part_size  REAL,", "gate_novelty    REAL,"):
        old = old.replace(f"    {column}\n", "")
    old = old.replace("    image_error     TEXT,\n    gate_ms         REAL\n", "    image_error     TEXT\n")
    assert "gate_" not in old, "the schema of the previous release"
    (tmp_path / "log").mkdir()
    db = tmp_path / "log" / "trace.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(old)
    conn.execute("INSERT INTO parts (seq, run_id, station_id, camera_id, captured_at, t_capture_ns, threshold, "
                 "decision, reason, fail_safe, decide_ms) VALUES (7, 'old', 's', 'c', '2026-01-01', 1, 0.5, 'ok', "
                 "'model', 0, 3.0)")
    conn.commit()
    conn.close()
    log = TraceLog(tmp_path / "log", RunInfo("new", "s", "c", "m", "sha", "cfg"))
    log.open()
    assert log.next_seq() == 8, "the old rows are kept"
    log.stop()
    log.start()
    log.join(5)
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(parts)")]
    assert {"gate_failed", "gate_novelty", "gate_ms", "gate_part_size"} <= set(cols)
    (row,) = query(db, "SELECT seq, decision, gate_failed, gate_brightness FROM parts")
    assert (row["seq"], row["decision"], row["gate_failed"], row["gate_brightness"]) == (7, "ok", None, None)


def test_gate_limits_reload_live_and_a_contradiction_changes_nothing(tmp_path):
    domain = load_artifact(make_tiny_model(tmp_path / "tiny.pt")).validity
    text = """
line: {max_parts_per_s: 20}
camera: {kind: synthetic, rate_parts_per_s: 20, size_px: 64}
model: {path: tiny.pt, device: cpu, warmup_runs: 0}
decision: {deadline_ms: 150}
reject: {delay_ms: 300, pulse_ms: 5, actuator: {kind: log}}
tracelog: {dir: log, images: none}
"""
    station = Station(load_config(write_config(tmp_path / "s.yaml", text)))
    station.start()
    try:
        until(lambda: station.stats.parts >= 3)
        from station.reload import ReloadError

        clash = text + f"gate: {{limits: {{brightness_min: {domain.limit('brightness', 'max') + 5}}}}}\n"
        with pytest.raises(ReloadError, match="gate.limits.brightness_min.*kept"):
            station.reload(load_config(write_config(tmp_path / "s.yaml", clash)))
        assert station.gate.sources["brightness_min"] == "model"
        # Tighten the top of the brightness range below every rendered frame: from the next part on, all fail.
        tight = text + f"gate: {{limits: {{brightness_max: {domain.limit('brightness', 'min') + 0.01}}}}}\n"
        result = station.reload(load_config(write_config(tmp_path / "s.yaml", tight)))
        assert any(a.startswith("validity gate limits (1 set by the station)") for a in result.applied)
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 5)
    finally:
        station.stop()
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT seq, reason, gate_failed FROM parts ORDER BY seq")
    assert all(r["reason"] == "model" for r in rows[:3])
    assert all(r["reason"] == "image_check" and "brightness_max" in r["gate_failed"] for r in rows[cut + 1:])


def test_replay_reports_image_check_rejects_by_check(tmp_path):
    from support import make_frames

    frames = make_frames(tmp_path / "frames", defective=3, ok=3, size=96)
    for name, level in (("zz_black.png", 0), ("zz_white.png", 255)):
        Image.fromarray(np.full((96, 96), level, np.uint8)).save(frames / "ok_front" / name)
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames}
model: {path: tiny.pt, device: cpu}
decision: {threshold: 0.999999, deadline_ms: 300}
reject: {actuator: {kind: log}}
tracelog: {dir: log, images: none}
""")
    result = station_cmd("replay", "frames", "-c", str(cfg), "--as-fast-as-possible", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("image checks"))
    assert line.startswith("image checks    2 part(s) outside the validity domain")
    assert "brightness_min 1" in line and "brightness_max 1" in line and "contrast_min 2" in line
    assert "image_check 2" in result.stdout and "false rejects   2" in result.stdout
