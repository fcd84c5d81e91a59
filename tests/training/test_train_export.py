"""Train a tiny model on a few real images, then check resume, artifact, ONNX and evaluate outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from station.artifact import load_artifact
from training.__main__ import main
from training.report import REPORT_FILES


def test_training_loss_falls_and_run_files_exist(tiny_run: Path) -> None:
    history = json.loads((tiny_run / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("last.pt", "best.pt", "model.pt", "summary.json", "val_scores.npz"):
        assert (tiny_run / name).is_file(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["split"]["train"] == {"def_front": 18, "ok_front": 18}
    assert summary["split"]["val"] == {"def_front": 6, "ok_front": 6}
    assert 0 < summary["threshold"]["threshold"] <= 0.5
    assert summary["threshold"]["val_escapes"] == 0
    hyper = summary["hyper_parameters"]
    assert (hyper["zoom"], hyper["shift"]) == (0.15, 0.08), "the augmentation the run used is recorded"
    run_model = load_artifact(tiny_run / "model.pt")
    assert run_model.format == "impeller-artifact/2" and run_model.validity is not None, "the run's model has its gate"


def test_resume_continues_from_last_checkpoint(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                            tiny_train_args: list[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = tiny_train_args
    args[args.index("--epochs") + 1] = "4"
    assert main(["train", "--data", str(tiny_data), "--out", str(run), *args, "--resume"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_artifact_round_trip_and_onnx_match(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out, onnx_path = tmp_path / "m.pt", tmp_path / "m.onnx"
    assert main(["export", "--run", str(tiny_run), "--out", str(out), "--onnx", str(onnx_path)]) == 0
    loaded = load_artifact(out)
    meta = loaded.metadata
    assert meta.defective_class == "def_front" and meta.class_names == ("def_front", "ok_front")
    assert meta.preprocess.input_size == 48 and meta.preprocess.grayscale
    assert len(meta.training["data_fingerprint"]) == 64
    assert meta.training["hyper_parameters"]["lr"] == 1e-3
    # The station's pixel path (numpy frame -> Preprocess.to_tensor) on a real image.
    path = sorted((tiny_data / "test" / "def_front").iterdir())[0]
    frame = np.asarray(Image.open(path).convert("RGB"))
    x = meta.preprocess.to_tensor(frame).unsqueeze(0)
    again = load_artifact(out)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), again.model(x))
        expected = loaded.model(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    assert np.max(np.abs(got - expected)) < 1e-4
    # The station's own classifier accepts the exported file and scores the frame the same way.
    from station.classifier import Classifier

    classifier = Classifier.from_file(out, device="cpu", warmup_runs=0)
    assert classifier.predict(frame) == pytest.approx(float(torch.softmax(torch.from_numpy(expected), 1)[0, 0]),
                                                      abs=1e-5)
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["model_metadata_json"])["defective_class"] == "def_front"
    assert float(props["recommended_threshold"]) == pytest.approx(meta.recommended_threshold)


def test_evaluate_writes_every_report_file(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(tiny_run / "model.pt"), "--data", str(tiny_data),
                 "--report", str(report)]) == 0
    for name in REPORT_FILES:
        assert (report / name).is_file(), name
    metrics = json.loads((report / "metrics.json").read_text())
    # 3 copies made by the fixture plus any of the dataset's own 64 train/test byte-identical pairs.
    train_bytes = {p.read_bytes() for p in (tiny_data / "train").rglob("*.jpeg")}
    leaked = sum(p.read_bytes() in train_bytes for p in (tiny_data / "test").rglob("*.jpeg"))
    assert leaked >= 3
    assert metrics["leaked_test_images"] == leaked == metrics["leaked_by_class"]["ok_front"]
    assert metrics["test_full"]["n"] == 15 and metrics["test_dedup"]["n"] == 15 - leaked
    wrong = metrics["test_full"]["escapes"] + metrics["test_full"]["false_rejects"]
    assert len(list(report.glob("gradcam_*.png"))) == wrong
    assert "escapes" in (report / "report.md").read_text()
    assert 0 < metrics["test_novel"]["n"] <= metrics["test_full"]["n"] - leaked, "byte copies are never novel"
    assert metrics["validity_gate"]["image_check"] >= 0 and "## Validity gate" in (report / "report.md").read_text()


def test_calibrate_rewrites_a_format_1_artifact_as_format_2_with_the_same_weights(tiny_run: Path, tiny_data: Path,
                                                                                 tmp_path: Path, capsys) -> None:
    """An artifact of the previous release (no seal, no gate) gets its validity domain, weights untouched."""
    import torch

    from station.artifact import LEGACY_FORMAT

    source = load_artifact(tiny_run / "model.pt")
    torch.save({"format": LEGACY_FORMAT, "metadata_json": json.dumps(source.metadata.to_dict()),
                "state_dict": source.model.state_dict()}, tmp_path / "old.pt")
    assert load_artifact(tmp_path / "old.pt").legacy
    assert main(["calibrate", "--model", str(tmp_path / "old.pt"), "--data", str(tiny_data),
                 "--out", str(tmp_path / "new.pt")]) == 0
    new = load_artifact(tmp_path / "new.pt")
    assert new.format == "impeller-artifact/2" and new.validity is not None
    assert all(torch.equal(a, b) for a, b in zip(source.model.state_dict().values(), new.model.state_dict().values()))
    out = capsys.readouterr().out
    assert '"same_weights": true' in out and "validity domain" in out and "novelty" in out
