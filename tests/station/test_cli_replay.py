"""`station replay` and `station demo --frames` as a newcomer runs them, as real subprocesses.

Replay plays in the YAML's `camera.order` (shuffled by default, so `--limit N` shows both classes),
writes its trace log to its own folder (`./replay-log` or `--log DIR`), never into the YAML's
`tracelog.dir`, says where the log went, and says so when Ctrl-C ended it early (exit code 130).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from support import REPO, STATION_CLI, make_frames, make_tiny_model, query, write_config

STATION = STATION_CLI  # the test network registered (tests/station_cli.py)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def station(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def replay_config(tmp_path: Path, *, order: str | None = None) -> Path:
    make_tiny_model(tmp_path / "tiny.pt")
    camera = "{kind: replay, path: frames" + (f", order: {order}" if order else "") + "}"
    return write_config(tmp_path / "s.yaml", f"""
camera: {camera}
model: {{path: tiny.pt, device: cpu}}
reject: {{actuator: {{kind: log}}}}
tracelog: {{dir: plant-log, images: none}}
""")


def labels(db: Path) -> list[str]:
    return [r["label"] for r in query(db, "SELECT label FROM parts ORDER BY seq")]


def test_replay_limit_shows_both_classes_and_logs_beside_the_plant_log(tmp_path):
    make_frames(tmp_path / "frames", defective=20, ok=20, size=48)
    cfg = replay_config(tmp_path)  # camera.order left at its default: shuffled
    result = station("replay", "frames", "-c", str(cfg), "--limit", "10", "--as-fast-as-possible", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "replay-log" / "trace.sqlite"
    seen = labels(db)
    assert len(seen) == 10 and set(seen) == {"defective", "ok"}, seen
    assert f"trace log       {db}" in result.stdout
    assert not (tmp_path / "plant-log").exists(), "a replay must not write into the YAML's tracelog.dir"
    # Asked explicitly, it goes where it is told (here the YAML's own folder), and --json says where.
    asked = station("replay", "frames", "-c", str(cfg), "--limit", "3", "--as-fast-as-possible", "--json",
                    "--log", "plant-log", cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["trace_log"] == str(tmp_path / "plant-log" / "trace.sqlite")
    assert len(labels(tmp_path / "plant-log" / "trace.sqlite")) == 3
    assert len(labels(db)) == 10


def test_replay_keeps_sorted_order_when_the_yaml_asks_for_it(tmp_path):
    make_frames(tmp_path / "frames", defective=20, ok=20, size=48)
    cfg = replay_config(tmp_path, order="sorted")
    result = station("replay", "frames", "-c", str(cfg), "--limit", "10", "--as-fast-as-possible",
                     "--log", "sorted-log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert labels(tmp_path / "sorted-log" / "trace.sqlite") == ["defective"] * 10  # def_front sorts first


def test_replay_refuses_a_log_folder_it_cannot_create(tmp_path):
    make_frames(tmp_path / "frames", defective=1, ok=1, size=48)
    cfg = replay_config(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    result = station("replay", "frames", "-c", str(cfg), "--log", "a-file/log", cwd=tmp_path)
    assert result.returncode == 2 and "cannot create the trace log folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ctrl_c_says_the_replay_was_interrupted(tmp_path):
    make_frames(tmp_path / "frames", defective=20, ok=20, size=48)
    cfg = replay_config(tmp_path)
    proc = subprocess.Popen([*STATION, "replay", "frames", "-c", str(cfg), "--rate", "4"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        db = tmp_path / "replay-log" / "trace.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (db.exists() and _rows(db) >= 2):
            time.sleep(0.2)
        assert _rows(db) >= 2, "the replay logged no part in time"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    parts = _rows(db)
    assert 2 <= parts < 40
    assert f"replay: interrupted after {parts} part(s)" in err
    assert f"trace log       {db}" in out and f"parts           {parts}" in out


def _rows(db: Path) -> int:
    import sqlite3

    try:
        return len(query(db, "SELECT seq FROM parts"))
    except sqlite3.OperationalError:  # the station is still creating the log
        return 0


def test_demo_with_real_frames_shows_both_classes(tmp_path):
    make_frames(tmp_path / "frames", defective=20, ok=20, size=48)
    make_tiny_model(tmp_path / "tiny.pt")
    config = (REPO / "config" / "demo.yaml").read_text()
    config = config.replace("../models/impeller-resnet18.pt", str(tmp_path / "tiny.pt"))
    config = config.replace("../var/demo", str(tmp_path / "demo-log")).replace("backend: auto", "backend: torch")
    cfg = write_config(tmp_path / "demo.yaml", config)
    result = station("demo", "-c", str(cfg), "--frames", "frames", "--parts", "10", "--rate", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = labels(tmp_path / "demo-log" / "trace.sqlite")
    assert len(seen) == 10 and set(seen) == {"defective", "ok"}, seen
    assert "label=ok" in result.stdout and "label=defective" in result.stdout
