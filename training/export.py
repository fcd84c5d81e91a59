"""Export: the model artifact the station loads, and an ONNX copy carrying the same metadata.

`build_metadata` gathers what the artifact records (classes, the defective class, preprocessing,
recommended threshold, training data fingerprint, split, hyper-parameters, epochs, test metrics,
training code version); `write_artifact` stores it through `station.artifact.save_artifact`.
`export_onnx` writes the network with the metadata as ONNX `metadata_props` (the threshold stays
metadata, never part of the graph) and checks onnxruntime's output against torch.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from station.artifact import ArtifactMetadata, save_artifact
from station.preprocess import Preprocess
from training.data import DEFECTIVE_CLASS
from training.model import ARCHITECTURE

log = logging.getLogger("training.export")

MODEL_NAME = "impeller-resnet18"


class ExportError(RuntimeError):
    """The export could not be written or does not reproduce the torch model's outputs."""


def code_version() -> str:
    """Git commit of the training code (with `-dirty` when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "") if commit else "unknown"


def build_metadata(*, class_names: Sequence[str], preprocess: Preprocess, summary: dict[str, Any],
                   metrics: dict[str, Any] | None = None, threshold: float | None = None,
                   model_name: str = MODEL_NAME) -> ArtifactMetadata:
    training = {
        "data_fingerprint": summary.get("data_fingerprint"),
        "split": summary.get("split"),
        "hyper_parameters": summary.get("hyper_parameters"),
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "stopped_early": summary.get("stopped_early"),
        "best_val": summary.get("best_val"),
        "threshold_selection": summary.get("threshold"),
        "speed": summary.get("speed"),
        "code_version": code_version(),
    }
    rec = threshold if threshold is not None else float(summary.get("threshold", {}).get("threshold", 0.5))
    return ArtifactMetadata(architecture=ARCHITECTURE, class_names=tuple(class_names),
                            defective_class=DEFECTIVE_CLASS, preprocess=preprocess,
                            recommended_threshold=rec, model_name=model_name,
                            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            training=training, metrics=dict(metrics or {}))


def write_artifact(path: Path | str, model: nn.Module, metadata: ArtifactMetadata, *, half: bool) -> str:
    sha = save_artifact(path, model, metadata, half=half)
    log.info("wrote artifact %s (%.1f MB, sha256 %s)", path, Path(path).stat().st_size / 1e6, sha[:12])
    return sha


def export_onnx(model: nn.Module, metadata: ArtifactMetadata, path: Path | str, *,
                check_batch: torch.Tensor | None = None) -> float:
    """Write ONNX (dynamic batch, output = logits) with metadata_props; return max |onnx - torch|."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    size = metadata.preprocess.input_size
    example = torch.randn(2, 3, size, size)
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"ONNX export to {path} failed: {exc}") from exc
    proto = onnx.load(str(path))
    props = {"model_metadata_json": json.dumps(metadata.to_dict(), sort_keys=True),
             "defective_class": metadata.defective_class,
             "class_names": json.dumps(list(metadata.class_names)),
             "recommended_threshold": repr(metadata.recommended_threshold),
             "preprocess": json.dumps(metadata.preprocess.to_dict(), sort_keys=True),
             "output": "logits; p_defect = softmax(logits)[defective index]"}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "training.export"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    batch = check_batch if check_batch is not None else torch.randn(4, 3, size, size)
    with torch.no_grad():
        expected = model(batch.float()).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": batch.float().numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    log.info("wrote ONNX %s (%.1f MB); max abs diff vs torch %.3g", path, path.stat().st_size / 1e6, diff)
    return diff


def compact_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The test metrics worth carrying in the artifact (no report text)."""
    keep = ("n", "n_defective", "n_ok", "threshold", "escapes", "false_rejects", "accuracy", "escape_rate",
            "false_reject_rate", "confusion", "at_0_5", "roc_auc", "average_precision")
    out = {k: metrics[k] for k in ("split", "test_fingerprint", "threshold", "leaked_test_images",
                                   "model_sha256") if k in metrics}
    out["evaluated_model_sha256"] = out.pop("model_sha256", None)
    for name in ("test_full", "test_dedup"):
        if name in metrics:
            out[name] = {k: metrics[name][k] for k in keep if k in metrics[name]}
    return out


def export_run(*, run_dir: Path, out: Path, metrics_path: Path | None = None, onnx_path: Path | None = None,
               half: bool = True, checkpoint: str = "best.pt") -> dict[str, Any]:
    """Write the station artifact (and optionally ONNX) from a finished training run."""
    from station.artifact import load_artifact
    from training.model import create_model

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    ckpt_path = run_dir / checkpoint
    for needed in (summary_path, ckpt_path):
        if not needed.is_file():
            raise ExportError(f"{needed} is missing: is {run_dir} a finished training run?")
    summary = json.loads(summary_path.read_text())
    metrics = compact_metrics(json.loads(Path(metrics_path).read_text())) if metrics_path else {}
    # Runs started before summary.json recorded these carry them in split / hyper-parameters.
    class_names = tuple(summary.get("class_names") or summary["split"]["train"])
    preprocess = (Preprocess.from_dict(summary["preprocess"]) if "preprocess" in summary
                  else Preprocess(input_size=int(summary["hyper_parameters"]["image_size"]), grayscale=True))
    model = create_model("none", num_classes=len(class_names))
    model.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"])
    model.eval()
    metadata = build_metadata(class_names=class_names, preprocess=preprocess, summary=summary, metrics=metrics)
    sha = write_artifact(out, model, metadata, half=half)
    loaded = load_artifact(out)
    size = preprocess.input_size
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp_diff = float((loaded.model(batch) - model(batch)).abs().max())
    log.info("artifact %s reloads through station.artifact.load_artifact; max abs logit diff vs the fp32 "
             "checkpoint %.3g", out, fp_diff)
    result: dict[str, Any] = {"artifact": str(out), "sha256": sha, "size_bytes": Path(out).stat().st_size,
                              "artifact_vs_checkpoint_max_abs_diff": fp_diff}
    if onnx_path is not None:
        # Export the network exactly as shipped (weights after the fp16 round trip).
        diff = export_onnx(loaded.model, loaded.metadata, onnx_path, check_batch=batch)
        result.update(onnx=str(onnx_path), onnx_max_abs_diff=diff, onnx_size_bytes=Path(onnx_path).stat().st_size)
    return result
