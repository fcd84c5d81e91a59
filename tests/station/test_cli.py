"""The `station` command as an operator uses it, run as real subprocesses.

check-config on broken YAML, a bad model refusing to start, SIGTERM mid-run, replay's summary,
trace export, bench and the demo (which starts pymodbus's own server on 127.0.0.1).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, STATION_CLI, make_frames, make_tiny_model, own_pulse_rows, require_component, write_config

STATION = STATION_CLI  # the test network registered (tests/station_cli.py)


def station(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


BROKEN = """station:
  id: line-1
  colour: blue
camera:
  kind: synthetic
  rate_parts_per_s: -4
decision:
  deadline_ms: 900
reject:
  delay_ms: 800
  actuator:
    kind: modbus_tcp
    port: 70000
model: {path: missing.pt}
tracelog: {dir: log}
"""


def test_check_config_names_line_and_key_of_each_error_in_one_pass(tmp_path):
    path = write_config(tmp_path / "broken.yaml", BROKEN)
    result = station("check-config", str(path))
    assert result.returncode == 2
    err = result.stderr.splitlines()
    assert err[0].endswith("5 error(s)") and err[1].split() == ["line", "key", "value", "message"]
    rows = {line.split()[1]: line for line in err[2:]}
    assert rows["station.colour"].split()[0] == "3" and "unknown key" in rows["station.colour"]
    assert rows["camera.rate_parts_per_s"].split()[0] == "6"
    assert rows["reject.actuator.port"].split()[0] == "13" and "70000" in rows["reject.actuator.port"]
    # The cross-field check comes in the same pass as the field errors, on its own line.
    deadline = rows["decision.deadline_ms"]
    assert deadline.split()[0] == "8" and "no time before the ejector" in deadline
    # ... and so does the missing model file, without --model.
    assert rows["model.path"].split()[0] == "14" and "does not exist" in rows["model.path"]


def test_check_config_malformed_yaml_and_good_file(tmp_path):
    bad = station("check-config", str(write_config(tmp_path / "m.yaml", "camera:\n  kind: replay\n   path: [\n")))
    assert bad.returncode == 2 and "malformed YAML" in bad.stderr and "    3" in bad.stderr
    good = station("check-config", str(REPO / "config" / "station.yaml"))
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated zip", b"garbage" * 100])
def test_missing_or_corrupt_model_refuses_to_start(tmp_path, content):
    make_frames(tmp_path / "frames", defective=1, ok=1, size=64)
    if content is not None:
        (tmp_path / "model.pt").write_bytes(content)
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames}
model: {path: model.pt, device: cpu}
reject: {actuator: {kind: log}}
tracelog: {dir: log}
""")
    result = station("replay", "frames", "-c", str(cfg), "--log", "log", cwd=tmp_path)
    assert result.returncode == 2
    assert "station not started" in result.stderr and "model" in result.stderr
    assert not (tmp_path / "log" / "trace.sqlite").exists() or \
        sqlite3.connect(tmp_path / "log" / "trace.sqlite").execute("SELECT COUNT(*) FROM parts").fetchone()[0] == 0


def test_model_of_another_architecture_refuses_to_start(tmp_path):
    import json

    import torch

    from tinynet import TinyNet

    from station.artifact import LEGACY_FORMAT, ArtifactMetadata
    from station.preprocess import Preprocess

    meta = ArtifactMetadata(architecture="resnet18", class_names=("def_front", "ok_front"),
                            defective_class="def_front", preprocess=Preprocess(input_size=64))
    # tinynet weights labelled resnet18, in the unsealed format-1 layout (a sealed file cannot be edited)
    torch.save({"format": LEGACY_FORMAT, "metadata_json": json.dumps(meta.to_dict()),
                "state_dict": TinyNet(2).state_dict()}, tmp_path / "m.pt")
    from station.artifact import ModelArtifactError, load_artifact
    with pytest.raises(ModelArtifactError, match="does not match architecture 'resnet18'"):
        load_artifact(tmp_path / "m.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ModelArtifactError, match="format"):
        load_artifact(tmp_path / "plain.pt")


def test_an_installed_station_refuses_the_test_network(tmp_path):
    """tinynet exists for the test suite only: `station` as installed (`python -m station.cli`, no test launcher)
    refuses a model of it at check-config --model and at run, with one line and exit 2. The test launcher,
    which registers it, accepts the same files: the registration is the only difference."""
    make_tiny_model(tmp_path / "tiny.pt")
    make_frames(tmp_path / "frames", defective=1, ok=1, size=64)
    cfg = write_config(tmp_path / "s.yaml", """camera: {kind: replay, path: frames, rate_parts_per_s: null}
model: {path: tiny.pt, device: cpu, warmup_runs: 0}
decision: {threshold: 0.5, deadline_ms: 300}
reject: {delay_ms: 400, pulse_ms: 20, actuator: {kind: log}}
tracelog: {dir: log, images: none}
""")
    installed = [sys.executable, "-m", "station.cli"]
    for args in (["check-config", str(cfg), "--model"], ["run", "-c", str(cfg)]):
        result = subprocess.run([*installed, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 2, (args, result.stderr)
        assert "architecture 'tinynet' is not supported (expected one of ('resnet18',))" in result.stderr, args
        assert "Traceback" not in result.stderr
    assert station("check-config", str(cfg), "--model", cwd=tmp_path).returncode == 0


def logged_rows(db: Path) -> int:
    """Rows so far; 0 while the station is still creating the log."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM parts").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_sigterm_mid_run_exits_0_with_every_captured_part_logged(tmp_path, sim_plc):
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 20, size_px: 96, defect_ratio: 0.5}}
model: {{path: tiny.pt, device: cpu}}
decision: {{threshold: 0.000001, deadline_ms: 100}}
reject:
  delay_ms: 400
  pulse_ms: 20
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {sim_plc.port}, coil: 1}}
tracelog: {{dir: log}}
""")
    proc = subprocess.Popen([*STATION, "run", "-c", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        db = tmp_path / "log" / "trace.sqlite"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and logged_rows(db) < 20:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    conn = sqlite3.connect(db)
    seqs = [s for (s,) in conn.execute("SELECT seq FROM parts ORDER BY seq")]
    (summary_json,) = conn.execute("SELECT summary_json FROM runs").fetchone()
    conn.row_factory = sqlite3.Row
    delivery = conn.execute("SELECT actuator_result, actuator_error FROM parts").fetchall()
    results = {r["actuator_result"] for r in delivery}
    conn.close()
    summary = json.loads(summary_json)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == summary["parts"] >= 20
    # Every part was a reject; parts in flight at SIGTERM still got their pulse before exit.
    assert results <= {"acknowledged", "late"}
    assert len(sim_plc.pulses(1)) == len(own_pulse_rows(delivery)) >= 0.75 * len(seqs)
    assert not sim_plc.coil(1), "output off after stop"


def test_replay_prints_summary_and_trace_export_writes_every_row(tmp_path):
    make_frames(tmp_path / "frames", defective=5, ok=5, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames}
model: {path: tiny.pt, device: cpu}
decision: {threshold: 0.999999, deadline_ms: 200}
reject: {actuator: {kind: log}}
tracelog: {dir: log}
""")
    result = station("replay", "frames", "-c", str(cfg), "--as-fast-as-possible", "--log", "log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "parts           10" in out and "accuracy 50.00%" in out
    assert "escapes         5" in out and "false rejects   0" in out
    assert "capture->verdict p50" in out
    assert "image checks    0 part(s) outside the validity domain" in out and "gate alarm      image_quality" in out
    export = station("trace", "export", "-c", str(cfg), "--since", "1h", "--csv", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    table = list(csv.DictReader(io.StringIO(export.stdout)))
    assert len(table) == 10 and {"seq", "decision", "reason", "image_sha256", "config_sha256"} <= set(table[0])
    future = station("trace", "export", "--db", str(tmp_path / "log" / "trace.sqlite"), "--since", "2999-01-01")
    assert future.returncode == 0 and len(future.stdout.splitlines()) == 1  # header only
    bad = station("trace", "export", "--db", str(tmp_path / "log" / "trace.sqlite"), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_bench_prints_stage_table(tmp_path):
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: synthetic}
model: {path: tiny.pt, device: cpu}
reject: {actuator: {kind: log}}
""")
    result = station("bench", "-c", str(cfg), "-n", "30", "--repeats", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for stage in ("inference (preprocess + model + gate)", "capture -> verdict", "capture -> actuator command",
                  "sustained parts/s"):
        assert stage in result.stdout
    # The validity gate is timed on its own: a row of three numbers, and the share of frames it rejected.
    gate_row = next(line for line in result.stdout.splitlines() if "of which validity gate" in line)
    p50, p99, worst = (float(v) for v in gate_row.split()[-3:])
    assert 0 < p50 <= p99 <= worst
    assert "0 of 30 parts outside the domain" in result.stdout, "rendered frames are inside the tiny model's domain"
    assert not (tmp_path / "var").exists(), "bench writes its log to a temporary folder"
    assert "(torch on cpu)" in result.stdout
    # The bare model, timed in the same run, and the pipeline's overhead over it (ms and ratio).
    bare = next(line for line in result.stdout.splitlines() if line.strip().startswith("back to back"))
    b50, b99, bmax = (float(v) for v in bare.split()[-3:])
    assert 0 < b50 <= b99 <= bmax
    over = next(line for line in result.stdout.splitlines() if line.strip().startswith("inference (preprocess")
                and "x)" in line)
    pipe_p50 = float(next(line for line in result.stdout.splitlines()
                          if line.startswith("inference (preprocess")).split()[-3])
    assert float(over.split()[-4]) == pytest.approx(pipe_p50 - b50, abs=0.02), "overhead = pipeline - bare"
    assert "validity gate cost: p50" in result.stdout and "0.5 ms p99 budget" in result.stdout
    assert "queue overruns/timeouts: 0" in result.stdout
    # Where the cores went: CPU ms per part by thread, the capture thread (ended with its source) included.
    cpu = {m[1]: float(m[2]) for m in re.finditer(r"^  (\S.*?)\s+(\d+\.\d+)", result.stdout.split(
        "CPU per part by thread", 1)[1], re.M)}
    assert cpu["inference"] > 0 and cpu["capture"] > 0
    assert cpu["all threads"] >= cpu["inference"] + cpu["capture"]
    ort = station("bench", "-c", str(cfg), "-n", "10", "--repeats", "1", "--rate", "50", "--backend", "onnxruntime",
                  "--max-batch", "1", cwd=tmp_path)
    assert ort.returncode == 0 and "(onnxruntime on cpu)" in ort.stdout, ort.stderr
    assert "at rate" in ort.stdout and "overhead over the bare model (at rate)" in ort.stdout
    bad = station("bench", "-c", str(cfg), "-n", "5", "--precision", "int8", "--backend", "torch", cwd=tmp_path)
    assert bad.returncode == 2 and "model.precision: int8 runs on onnxruntime" in bad.stderr, bad.stderr


def test_demo_runs_with_simulated_plc(tmp_path):
    """The Quick start demo, with a tiny model when the shipped one is not built yet: 32 parts, so the
    lens-cover episode (parts 25-32) shows the gate rejecting and the image_quality alarm."""
    shipped = REPO / "models" / "impeller-resnet18.pt"
    config = (REPO / "config" / "demo.yaml").read_text()
    config = config.replace("../var/demo", str(tmp_path / "demo-log"))
    if not shipped.exists():
        make_tiny_model(tmp_path / "tiny.pt")
        config = config.replace("../models/impeller-resnet18.pt", str(tmp_path / "tiny.pt"))
    else:
        config = config.replace("../models/impeller-resnet18.pt", str(shipped))
    cfg = write_config(tmp_path / "demo.yaml", config)
    result = station("demo", "-c", str(cfg), "--parts", "32", "--rate", "12")
    assert result.returncode == 0, result.stderr
    part_lines = [line for line in result.stdout.splitlines() if line.startswith("part ")]
    assert len(part_lines) == 32
    assert all(any(f"[{kind}]" in line for kind in ("drawn with a defect", "drawn without defect", "lens covered",
                                                   "broken buffer")) for line in part_lines), \
        "each line says what the renderer drew"
    covered = [line for line in part_lines if "[lens covered]" in line]
    assert covered and all("reject" in line and "image_check" in line for line in covered)
    assert "no accuracy claim" in result.stdout and "rendered        " in result.stdout
    assert "image_quality raised 1 time(s)" in result.stdout
    assert "PLC simulated by pymodbus on 127.0.0.1" in result.stdout and "PLC saw" in result.stdout
    # demo.yaml asks for backend auto: onnxruntime on a machine without CUDA.
    import torch
    assert ("(torch on cuda)" if torch.cuda.is_available() else "(onnxruntime on cpu)") in result.stdout
    conn = sqlite3.connect(tmp_path / "demo-log" / "trace.sqlite")
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT decision, reason, actuator_result, actuator_error FROM parts").fetchall()
    conn.close()
    assert len(rows) == 32 and sum(r["reason"] == "image_check" for r in rows) == len(covered)
    rejects = len(own_pulse_rows([r for r in rows if r["decision"] == "reject"]))
    expected = f"PLC saw         {rejects} reject pulse(s)" if rejects else "PLC saw         no reject pulse"
    assert expected in result.stdout, "the simulated PLC saw exactly one pulse per reject"


def test_seq_stays_unique_across_runs_of_the_same_log(tmp_path):
    make_frames(tmp_path / "frames", defective=2, ok=2, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames}
model: {path: tiny.pt, device: cpu}
reject: {actuator: {kind: log}}
tracelog: {dir: log}
""")
    for _ in range(2):
        assert station("replay", "frames", "-c", str(cfg), "--as-fast-as-possible", "--log", "log",
                       cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(tmp_path / "log" / "trace.sqlite")
    seqs = [s for (s,) in conn.execute("SELECT seq FROM parts ORDER BY seq")]
    runs = conn.execute("SELECT COUNT(DISTINCT run_id) FROM parts").fetchone()[0]
    conn.close()
    assert seqs == list(range(1, 9)) and runs == 2


def test_replay_of_a_video_file_gives_one_part_per_frame(tmp_path):
    try:
        import cv2
    except ImportError:
        require_component(False, "OpenCV (pip install opencv-python-headless)")
    import numpy as np

    from station.cameras.synthetic import render_impeller

    writer = cv2.VideoWriter(str(tmp_path / "line.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (96, 96))
    assert writer.isOpened(), "OpenCV cannot write FFV1 here"
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(cv2.cvtColor(render_impeller(rng, 96, defective=False), cv2.COLOR_GRAY2BGR))
    writer.release()
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: line.avi}
model: {path: tiny.pt, device: cpu}
reject: {actuator: {kind: log}}
tracelog: {dir: log, images: none}
""")
    result = station("replay", "line.avi", "-c", str(cfg), "--as-fast-as-possible", "--json", "--log", "log",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parts"] == 12
    sources = [s for (s,) in sqlite3.connect(tmp_path / "log" / "trace.sqlite").execute("SELECT source FROM parts")]
    assert sources[0].endswith("line.avi#1") and sources[-1].endswith("line.avi#12")
