"""`model.workers`: several inference workers on the one frame queue, each with its own classifier, on a real
running Station (replay camera on rendered frames, tiny model, SQLite log): every part is scored once with
the verdict one worker gives it, a live model reload reaches every worker, the count itself needs a restart,
and each worker is supervised by the inference hang limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_support import read_rows
from support import make_frames, make_tiny_model, run_to_end, write_config

from station.app import Station
from station.classifier import worker_threads
from station.config import ModelSection
from station.configfile import ConfigError, load_config
from station.ort_backend import physical_cores
from station.supervisor import Supervisor


def config(tmp: Path, *, workers: int, model: str = "tiny.pt", log: str = "log") -> Path:
    if not (tmp / "frames").exists():
        make_frames(tmp / "frames", defective=12, ok=12, size=64)
    make_tiny_model(tmp / "tiny.pt")
    return write_config(tmp / f"s{workers}.yaml", f"""
camera: {{kind: replay, path: frames}}
model: {{path: {model}, device: cpu, warmup_runs: 0, backend: onnxruntime, workers: {workers}}}
decision: {{threshold: 0.5, deadline_ms: 300}}
reject: {{delay_ms: 400, pulse_ms: 5, actuator: {{kind: log}}}}
tracelog: {{dir: {log}, images: none}}
""")


def scores(station: Station) -> dict[str, float]:
    rows = read_rows(station.config.tracelog.dir / "trace.sqlite", "SELECT source, p_defect, reason FROM parts")
    assert all(r["reason"] == "model" for r in rows), [r["reason"] for r in rows]
    return {r["source"]: r["p_defect"] for r in rows}


def test_two_workers_score_every_part_once_with_the_same_verdicts(tmp_path):
    one, _ = run_to_end(load_config(config(tmp_path, workers=1, log="log1")))
    two, summary = run_to_end(load_config(config(tmp_path, workers=2, log="log2")))
    assert summary["parts"] == 24
    workers = two.inference_workers()
    assert [w.name for w in workers] == ["inference", "inference-2"]
    assert all(w.scored > 0 for w in workers), "both workers took parts off the queue"
    assert sum(w.scored for w in workers) == 24
    assert two.extra_classifiers[0] is not two.classifier, "each worker scores with its own classifier"
    assert workers[1].classifier is two.extra_classifiers[0]
    first, second = scores(one), scores(two)
    assert set(first) == set(second) and len(first) == 24
    assert all(second[k] == pytest.approx(first[k], abs=1e-6) for k in first)


def test_a_model_reload_reaches_every_worker_and_the_count_needs_a_restart(tmp_path):
    import shutil

    path = config(tmp_path, workers=2)
    station = Station(load_config(path))
    station.start()
    try:
        old = station.classifiers()
        shutil.copy(tmp_path / "tiny.pt", tmp_path / "copy.pt")
        text = path.read_text()
        result = station.reload(load_config(write_config(path, text.replace("path: tiny.pt", "path: copy.pt"))))
        assert any(a.startswith("model ") for a in result.applied), result.line()
        new = station.classifiers()
        assert len(new) == 2 and not set(map(id, new)) & set(map(id, old)) and new[0] is not new[1]
        assert [w.classifier for w in station.inference_workers()] == new
        more = station.reload(load_config(write_config(path, text.replace("workers: 2", "workers: 3"))))
        assert "model.workers" in more.needs_restart
        assert len(station.inference_workers()) == 2 and station.config.model.workers == 2
    finally:
        station.stop()


def test_every_worker_is_judged_by_the_inference_hang_limit(tmp_path):
    station = Station(load_config(config(tmp_path, workers=2)))
    supervisor = Supervisor(station, stall_s=30.0, inference_hang_s=0.25)
    assert supervisor.busy_limit_ns("inference") == supervisor.busy_limit_ns("inference-2") == 250_000_000
    assert supervisor.busy_limit_ns("capture") == 30_000_000_000


def test_worker_count_and_threads():
    assert worker_threads(ModelSection(workers=1)) is None
    assert worker_threads(ModelSection(workers=2)) == max(1, physical_cores() // 2)
    assert worker_threads(ModelSection(workers=2, threads=3)) == 3
    assert worker_threads(ModelSection(workers=16)) == max(1, physical_cores() // 16)


def test_a_bad_worker_count_names_the_key(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", "model: {workers: 0}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert "model.workers" in str(exc.value) and "line 1" in str(exc.value)
