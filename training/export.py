"""Export: the model artifact the station loads, and an ONNX copy carrying the same metadata.

`build_metadata` gathers what the artifact records (classes, the defective class, preprocessing,
recommended threshold, training data fingerprint, split, hyper-parameters, epochs, test metrics,
training code version); `write_artifact` fits the validity domain of the network exactly as stored
(`training.calibration`) and writes a sealed format-2 artifact through `station.artifact.save_artifact`.
`calibrate_artifact` does the same for an existing artifact (format 1 or 2) with its weights unchanged.
`export_onnx` writes the network with both outputs (`logits`, `features`) and the metadata as ONNX
`metadata_props` (the threshold stays metadata, never part of the graph) and checks onnxruntime's
outputs against torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from station.artifact import ArtifactMetadata, network_from_state, save_artifact, stored_state
from station.network import WithFeatures
from station.preprocess import Preprocess
from station.validity import ValidityDomain, calibration_table, limits_table, mild_table
from training.calibration import CalibrationSettings, domain_for_split
from training.data import DEFECTIVE_CLASS
from training.model import ARCHITECTURE

log = logging.getLogger(__name__)

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


def write_artifact(path: Path | str, model: nn.Module, metadata: ArtifactMetadata, *, half: bool, data: Path,
                   settings: CalibrationSettings = CalibrationSettings()) -> tuple[str, ValidityDomain]:
    """Fit the validity domain of the network as stored (fp16 round trip when `half`) on its training
    split under `data`, and write the sealed artifact. Returns its sha256 and the domain."""
    shipped = network_from_state(metadata, stored_state(model, half=half))
    domain = domain_for_split(shipped, metadata, data=Path(data), settings=settings)
    domain = dataclasses.replace(domain, method={**domain.method, "code_version": code_version()})
    sha = save_artifact(path, model, metadata, validity=domain, half=half)
    log.info("wrote artifact %s (%.1f MB, sha256 %s)", path, Path(path).stat().st_size / 1e6, sha[:12])
    log.info("validity domain (%s):\n%s", "calibrated" if domain.calibrated else "NOT calibrated",
             limits_table(domain.limits, reference=domain.reference))
    if domain.calibration:
        log.info("calibration:\n%s", calibration_table(domain.calibration))
        log.info("mild variation:\n%s", mild_table(domain.method.get("mild", [])))
    return sha, domain


def stored_in_half(model: nn.Module) -> bool:
    """True when every float weight survives an fp16 round trip unchanged (the artifact stored fp16)."""
    return all(torch.equal(t, t.half().to(t.dtype)) for t in model.state_dict().values() if t.is_floating_point())


def calibrate_artifact(*, model_path: Path, data: Path, out: Path, metrics_path: Path | None = None,
                       settings: CalibrationSettings = CalibrationSettings()) -> dict[str, Any]:
    """Re-fit the validity domain of an existing artifact (format 1 or 2) and write it as format 2 with
    the very same weights (checked bit for bit after writing)."""
    from station.artifact import load_artifact

    art = load_artifact(model_path)
    metadata = art.metadata
    if metrics_path is not None:
        metadata = dataclasses.replace(metadata, metrics=compact_metrics(json.loads(Path(metrics_path).read_text())))
    half = stored_in_half(art.model)
    sha, domain = write_artifact(out, art.model, metadata, half=half, data=data, settings=settings)
    again = load_artifact(out)
    same = all(torch.equal(a, b) for a, b in zip(art.model.state_dict().values(), again.model.state_dict().values()))
    if not same:
        raise ExportError(f"{out}: the re-written weights differ from {model_path}")
    return {"artifact": str(out), "sha256": sha, "size_bytes": Path(out).stat().st_size, "from": str(model_path),
            "from_sha256": art.sha256, "same_weights": same, "fp16": half, "calibrated": domain.calibrated}


def export_onnx(model: nn.Module, metadata: ArtifactMetadata, path: Path | str, *,
                check_batch: torch.Tensor | None = None) -> float:
    """Write ONNX (dynamic batch; outputs `logits` and `features`, one forward pass) with metadata_props;
    return max |onnx - torch| over both outputs."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = WithFeatures(model.float().eval()).eval()
    size = metadata.preprocess.input_size
    example = torch.randn(2, 3, size, size)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter's deprecation notices: the station's in-memory export uses it too
            # (station/ort_backend.py), and its graphs are what the tests check against torch.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), input_names=["image"],
                              output_names=["logits", "features"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"ONNX export to {path} failed: {exc}") from exc
    proto = onnx.load(str(path))
    props = {"model_metadata_json": json.dumps(metadata.to_dict(), sort_keys=True),
             "defective_class": metadata.defective_class,
             "class_names": json.dumps(list(metadata.class_names)),
             "recommended_threshold": repr(metadata.recommended_threshold),
             "preprocess": json.dumps(metadata.preprocess.to_dict(), sort_keys=True),
             "output": "logits (p_defect = softmax(logits)[defective index]) and features (pooled, for the "
                       "validity gate's novelty score)"}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "training.export"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    batch = check_batch if check_batch is not None else torch.randn(4, 3, size, size)
    with torch.no_grad():
        expected = [t.numpy() for t in model(batch.float())]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits", "features"], {"image": batch.float().numpy()})
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
    log.info("wrote ONNX %s (%.1f MB); max abs diff vs torch %.3g", path, path.stat().st_size / 1e6, diff)
    return diff


def compact_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The test metrics worth carrying in the artifact (no report text)."""
    keep = ("n", "n_defective", "n_ok", "threshold", "escapes", "false_rejects", "accuracy", "escape_rate",
            "false_reject_rate", "confusion", "at_0_5", "roc_auc", "average_precision")
    out = {k: metrics[k] for k in ("split", "test_fingerprint", "threshold", "leaked_test_images",
                                   "model_sha256", "near_copy_ncc", "validity_gate") if k in metrics}
    out["evaluated_model_sha256"] = out.pop("model_sha256", None)
    for name in ("test_full", "test_dedup", "test_novel"):
        if name in metrics:
            out[name] = {k: metrics[name][k] for k in keep if k in metrics[name]}
    return out


def export_run(*, run_dir: Path, out: Path, metrics_path: Path | None = None, onnx_path: Path | None = None,
               half: bool = True, checkpoint: str = "best.pt", data: Path | None = None,
               settings: CalibrationSettings = CalibrationSettings()) -> dict[str, Any]:
    """Write the station artifact (and optionally ONNX) from a finished training run; `data` (default:
    the run's own --data) holds the training folder the validity domain is fitted on."""
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
    data = Path(data) if data is not None else Path(summary.get("hyper_parameters", {}).get("data", ""))
    if not data.is_dir():
        raise ExportError(f"data folder {data} not found: give --data, the folder the run was trained on")
    sha, _ = write_artifact(out, model, metadata, half=half, data=data, settings=settings)
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
