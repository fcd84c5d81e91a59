"""Fail-safe verdicts: overrun, timeout (with the late prediction kept), bad frames, an unusable log folder.

Real components: an untrained ResNet-18 artifact (real inference cost, ~15 ms a frame here) for the
overrun and timeout cases, image files on disk, SQLite.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
from support import make_frames, make_tiny_model, query, rendered_domain, run_to_end, write_config

from station.app import Station
from station.artifact import ArtifactMetadata, build_model, save_artifact
from station.configfile import load_config
from station.preprocess import Preprocess


def resnet_artifact(path: Path) -> Path:
    torch.manual_seed(0)
    meta = ArtifactMetadata(architecture="resnet18", class_names=("def_front", "ok_front"),
                            defective_class="def_front", preprocess=Preprocess(input_size=224),
                            recommended_threshold=0.5, model_name="untrained-resnet18")
    model = build_model("resnet18").eval()
    save_artifact(path, model, meta, validity=rendered_domain(model, meta, per_size=4))
    return path


def run_replay(tmp: Path, body: str) -> tuple[dict, list[sqlite3.Row], Station]:
    cfg = load_config(write_config(tmp / "s.yaml", body))
    station, summary = run_to_end(cfg)
    return summary, query(cfg.config.tracelog.dir / "trace.sqlite", "SELECT * FROM parts ORDER BY seq"), station


def test_full_queue_gives_overrun_verdicts_not_lost_parts(tmp_path):
    make_frames(tmp_path / "frames", defective=20, ok=20, size=96)
    resnet_artifact(tmp_path / "r18.pt")
    summary, rows, station = run_replay(tmp_path, """
line: {max_parts_per_s: 400}
camera: {kind: replay, path: frames, rate_parts_per_s: 400}
model: {path: r18.pt, device: cpu, warmup_runs: 1}
queues: {frames: 1}
decision: {deadline_ms: 5000}
reject: {delay_ms: 6000, pulse_ms: 1, actuator: {kind: log}}
tracelog: {dir: log, images: none}
""")
    assert len(rows) == 40 == summary["parts"]
    assert [r["seq"] for r in rows] == list(range(1, 41)), "no part missing"
    overruns = [r for r in rows if r["reason"] == "overrun"]
    assert overruns, "a 400 parts/s stream into a 1-slot queue must overrun"
    assert all(r["decision"] == "reject" and r["fail_safe"] == 1 for r in overruns)
    assert summary["fail_safe"]["overrun"] == len(overruns) == station.capture.overruns


def test_deadline_gives_timeout_and_the_late_prediction_is_logged(tmp_path):
    make_frames(tmp_path / "frames", defective=3, ok=3, size=96)
    resnet_artifact(tmp_path / "r18.pt")
    summary, rows, _ = run_replay(tmp_path, """
camera: {kind: replay, path: frames, rate_parts_per_s: 2}
model: {path: r18.pt, device: cpu, warmup_runs: 1}
decision: {deadline_ms: 5, fail_safe: reject}
reject: {delay_ms: 100, pulse_ms: 10, actuator: {kind: log}}
tracelog: {dir: log}
""")
    assert len(rows) == 6
    assert all(r["reason"] == "timeout" and r["decision"] == "reject" for r in rows)
    assert all(r["late_p_defect"] is not None and r["late_infer_ms"] > 0 for r in rows), \
        "predictions that came too late are still in the log"
    assert summary["fail_safe"] == {"timeout": 6}


def test_unreadable_and_wrong_sized_frames_are_bad_frame_parts(tmp_path):
    frames = make_frames(tmp_path / "frames", defective=2, ok=2, size=64)
    (frames / "ok_front" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    from PIL import Image
    import numpy as np
    Image.fromarray(np.zeros((80, 64), np.uint8)).save(frames / "def_front" / "zz_wrong_size.png")
    make_tiny_model(tmp_path / "tiny.pt")
    summary, rows, _ = run_replay(tmp_path, """
camera: {kind: replay, path: frames, rate_parts_per_s: 50, order: sorted}
line: {max_parts_per_s: 50}
frame: {width_px: 64, height_px: 64}
model: {path: tiny.pt, device: cpu}
decision: {threshold: 0.999999, deadline_ms: 100}
reject: {delay_ms: 150, pulse_ms: 5, actuator: {kind: log}}
tracelog: {dir: log}
""")
    assert len(rows) == 6
    bad = {Path(r["source"]).name: r for r in rows if r["reason"] == "bad_frame"}
    assert set(bad) == {"zz_corrupt.png", "zz_wrong_size.png"}
    assert all(r["decision"] == "reject" for r in bad.values())
    assert "expected 64x64" in bad["zz_wrong_size.png"]["detail"]
    assert summary["fail_safe"] == {"bad_frame": 2}


def test_log_folder_that_cannot_be_written_raises_alarm_and_decisions_go_on(tmp_path, caplog):
    make_frames(tmp_path / "frames", defective=3, ok=3, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    (tmp_path / "not_a_dir").write_text("a file where the log folder should be")
    verdicts = []
    cfg = load_config(write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames, rate_parts_per_s: 50}
line: {max_parts_per_s: 50}
model: {path: tiny.pt, device: cpu}
decision: {threshold: 0.000001, deadline_ms: 100}
reject: {delay_ms: 150, pulse_ms: 5, actuator: {kind: log}}
tracelog: {dir: not_a_dir/log}
"""))
    station = Station(cfg, on_verdict=lambda v, f: verdicts.append(v))
    station.start()
    try:
        import time
        deadline = time.monotonic() + 30
        while len(verdicts) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "tracelog" in station.health.alarms()
        assert station.scheduler.drain(5)
    finally:
        summary = station.stop()
    assert len(verdicts) == 6 and summary["reject"] == 6
    assert summary["actuator"].get("acknowledged", 0) + summary["actuator"].get("late", 0) == 6, \
        "rejects still fire while the log is down"
    dumped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unwritten trace verdict")]
    assert sorted(int(m.split('"seq": ')[1].split(",")[0]) for m in dumped) == [v.seq for v in verdicts], \
        "rows that never reached the disk are in the service log"


def test_disk_budget_prunes_oldest_images_and_rows_record_it(tmp_path):
    make_frames(tmp_path / "frames", defective=10, ok=10, size=128)
    make_tiny_model(tmp_path / "tiny.pt")
    _, rows, _ = run_replay(tmp_path, """
camera: {kind: replay, path: frames, rate_parts_per_s: 100, order: sorted}
line: {max_parts_per_s: 100}
model: {path: tiny.pt, device: cpu}
decision: {deadline_ms: 100}
reject: {delay_ms: 150, pulse_ms: 5, actuator: {kind: log}}
tracelog: {dir: log, images: all, disk_budget_mb: 0.05}
""")
    assert len(rows) == 20
    pruned = [r for r in rows if r["image_pruned"]]
    kept = [r for r in rows if not r["image_pruned"]]
    assert pruned and kept
    assert max(r["seq"] for r in pruned) < min(r["seq"] for r in kept), "oldest pruned first"
    for r in pruned:
        assert not (tmp_path / "log" / "images" / r["image_path"]).exists()
        assert r["image_sha256"]  # the row keeps the evidence of what the image was
    total = sum((tmp_path / "log" / "images" / r["image_path"]).stat().st_size for r in kept)
    assert total <= 0.05 * 1024 * 1024
