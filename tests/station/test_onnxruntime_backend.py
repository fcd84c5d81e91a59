"""`model.backend: onnxruntime`: the torch artifact converted at start-up and checked against torch.

Real components: ONNX Runtime's CPU session, torch's ONNX exporter, the artifact files, the station
with a replay camera and an SQLite trace log. The shipped-model test reads the casting test split
from ../shared (required in CI).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from support import casting_data_dir, make_frames, make_tiny_model, query, require_component, run_to_end, write_config
from tinynet import TinyNet

from station.artifact import ModelArtifactError, load_artifact
from station.cameras.replay import list_frames, load_image
from station.classifier import Classifier
from station.config_gate import GateLimits
from station.configfile import ConfigError, load_config
from station.gate import Gate

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "impeller-resnet18.pt"


def test_station_runs_on_onnxruntime_with_the_torch_scores(tmp_path):
    frames = make_frames(tmp_path / "frames", defective=10, ok=10, size=64)
    model = make_tiny_model(tmp_path / "tiny.pt")
    torch_clf = Classifier.from_file(model, device="cpu", warmup_runs=0)
    expected = {p.name: torch_clf.predict(load_image(p)) for p in list_frames(frames)}
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
camera: {{kind: replay, path: {frames}, rate_parts_per_s: null, order: sorted}}
model: {{path: tiny.pt, backend: onnxruntime, threads: 1}}
decision: {{threshold: 0.5}}
reject: {{actuator: {{kind: log}}}}
tracelog: {{dir: log, images: none}}
"""))
    station, _ = run_to_end(cfg, timeout_s=60)
    assert station.classifier.backend == "onnxruntime" and station.classifier.runner is not None
    db = tmp_path / "log" / "trace.sqlite"
    rows = query(db, "SELECT source, p_defect FROM parts ORDER BY seq")
    (start,) = query(db, "SELECT message FROM events WHERE kind = 'start'")
    assert len(rows) == 20 and "onnxruntime on cpu" in start["message"]
    for source, p in rows:
        assert abs(p - expected[Path(source).name]) < 1e-5, source


class TracedBranch(TinyNet):
    """The tiny network with a Python branch the ONNX exporter freezes at the example input (all zeros):
    the exported graph then scores every real image differently from torch, while torch itself scores
    exactly like the original (so the artifact's reference check passes). The kind of silent export fault
    the start-up check is there to catch."""

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        features = super().pooled(x)
        if bool(x.abs().sum() == 0):
            return features * 4.0
        return features


def test_an_export_that_changes_the_scores_is_refused(tmp_path):
    original = load_artifact(make_tiny_model(tmp_path / "tiny.pt"))
    branched = TracedBranch()
    branched.load_state_dict(original.model.state_dict())
    artifact = dataclasses.replace(original, model=branched.eval())
    with pytest.raises(ModelArtifactError, match="onnxruntime and torch disagree"):
        Classifier(artifact, device="cpu", warmup_runs=0, backend="onnxruntime")
    # The same network on torch is accepted: the refusal is about the conversion, not the model.
    assert Classifier(artifact, device="cpu", warmup_runs=0, backend="torch").backend == "torch"


def test_an_onnxruntime_failure_is_a_runtime_error_the_worker_turns_into_model_error(tmp_path):
    clf = Classifier.from_file(make_tiny_model(tmp_path / "tiny.pt"), device="cpu", warmup_runs=0,
                               backend="onnxruntime")
    with pytest.raises(RuntimeError, match="onnxruntime"):
        clf.runner(np.zeros((1, 3, 8, 8), dtype=np.float32))  # wrong input size for the session


def test_int8_on_cuda_is_a_config_error_naming_the_key(tmp_path):
    make_tiny_model(tmp_path / "tiny.pt")
    path = write_config(tmp_path / "s.yaml", "camera: {kind: synthetic}\nmodel:\n  path: tiny.pt\n"
                                             "  backend: auto\n  device: cuda\n  precision: int8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (issue,) = err.value.issues
    assert issue.key == "model.precision" and issue.line == 6 and "CPU provider" in issue.message


def test_onnxruntime_on_cuda_without_a_gpu_provider_is_refused_at_start(tmp_path):
    """Without onnxruntime-gpu (this machine), `device: cuda` with onnxruntime is refused with the fix named."""
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this machine's onnxruntime has the CUDA provider: the refusal cannot happen here")
    with pytest.raises(ModelArtifactError, match="onnxruntime-gpu"):
        Classifier.from_file(make_tiny_model(tmp_path / "tiny.pt"), device="cuda", backend="onnxruntime",
                             warmup_runs=0)


@pytest.mark.slow
def test_shipped_model_gives_the_same_verdicts_and_gate_decisions_on_both_backends_on_the_test_split():
    """Every one of the 715 test images: same verdict, same p_defect (to 1e-4), same validity-gate decision
    (the same failed checks, novelty from each backend's own `features` output to 1e-3 relative)."""
    data = casting_data_dir() / "test"
    require_component(SHIPPED_MODEL.is_file(), f"the shipped model {SHIPPED_MODEL}")
    require_component(data.is_dir(), f"the casting test split {data}")
    artifact = load_artifact(SHIPPED_MODEL)
    assert artifact.validity is not None
    on_torch = Classifier(artifact, device="cpu", warmup_runs=0, backend="torch")
    on_ort = Classifier(load_artifact(SHIPPED_MODEL), device="cpu", warmup_runs=0, backend="onnxruntime")
    gate = Gate.build(artifact.validity, GateLimits())
    threshold = artifact.metadata.recommended_threshold
    paths = list_frames(data)
    assert len(paths) == 715
    worst, worst_novelty, flipped, gate_differs = 0.0, 0.0, [], []
    for path in paths:
        image = load_image(path)
        a, b = on_torch.assess(image), on_ort.assess(image)
        worst = max(worst, abs(a.p_defect - b.p_defect))
        worst_novelty = max(worst_novelty, abs(a.measures["novelty"] - b.measures["novelty"]) / a.measures["novelty"])
        if (a.p_defect >= threshold) != (b.p_defect >= threshold):
            flipped.append(path.name)
        if gate.check(a.measures).failed != gate.check(b.measures).failed:
            gate_differs.append(path.name)
        assert {k: v for k, v in a.measures.items() if k != "novelty"} == \
            {k: v for k, v in b.measures.items() if k != "novelty"}, "image checks see the same pixels"
    assert not flipped, f"verdicts differ between backends: {flipped}"
    assert not gate_differs, f"gate decisions differ between backends: {gate_differs}"
    assert worst < 1e-4 and worst_novelty < 1e-3, (worst, worst_novelty)
