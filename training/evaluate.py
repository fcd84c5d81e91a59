"""Evaluation of a model artifact on the held-out test folder: scores, metrics on two test variants.

The test folder is read only here. Every image is scored through the artifact's own `Preprocess`
(the station's pixel path); a part is rejected when p(defective) >= the threshold (the artifact's
recommended one unless `--threshold` overrides it). Metrics are computed for the full test split and
for the test split without images whose bytes also appear in the training folder (found by sha256;
64 ok-images in the published casting data), escapes (defective judged ok) first. `training.report`
turns the result into plots, Grad-CAM overlays and `report.md`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, classification_report, roc_auc_score

from station.artifact import LoadedArtifact, load_artifact
from training import data as tdata
from training.engine import predict_probs

log = logging.getLogger("training.evaluate")


def variant_metrics(p_defect: np.ndarray, is_defect: np.ndarray, threshold: float, *,
                    class_names: tuple[str, ...], defective_class: str) -> dict[str, Any]:
    """Escapes, false rejects, accuracy and curves' areas at one threshold."""
    reject = p_defect >= threshold
    escapes = int(np.sum(is_defect & ~reject))
    false_rejects = int(np.sum(~is_defect & reject))
    n = int(len(p_defect))
    ok_class = next(c for c in class_names if c != defective_class)
    y_true = np.where(is_defect, defective_class, ok_class)
    y_pred = np.where(reject, defective_class, ok_class)
    argmax_reject = p_defect >= 0.5
    both = bool(is_defect.any() and (~is_defect).any())
    return {
        "n": n, "n_defective": int(is_defect.sum()), "n_ok": int((~is_defect).sum()),
        "threshold": float(threshold),
        "escapes": escapes, "false_rejects": false_rejects,
        "accuracy": (n - escapes - false_rejects) / max(1, n),
        "escape_rate": escapes / max(1, int(is_defect.sum())),
        "false_reject_rate": false_rejects / max(1, int((~is_defect).sum())),
        # rows: true defective, true ok; columns: predicted defective, predicted ok
        "confusion": [[int(is_defect.sum()) - escapes, escapes],
                      [false_rejects, int((~is_defect).sum()) - false_rejects]],
        "at_0_5": {"escapes": int(np.sum(is_defect & ~argmax_reject)),
                   "false_rejects": int(np.sum(~is_defect & argmax_reject)),
                   "accuracy": float(np.mean(argmax_reject == is_defect)) if n else 0.0},
        "roc_auc": float(roc_auc_score(is_defect, p_defect)) if both else None,
        "average_precision": float(average_precision_score(is_defect, p_defect)) if both else None,
        "classification_report": classification_report(
            y_true, y_pred, labels=[defective_class, ok_class], digits=4, zero_division=0)
        if n else "no images\n",
    }


def score_split(artifact: LoadedArtifact, *, data: Path, split: str = "test",
                batch_size: int = 64) -> dict[str, Any]:
    """p(defective) for every image of `data/split`, and which of them also sit in `data/train`."""
    meta = artifact.metadata
    scan = tdata.scan_folder(Path(data) / split, class_names=meta.class_names)
    train_root = Path(data) / "train"
    train_hashes: set[str] = set()
    if train_root.is_dir():
        train_hashes = {s.sha256 for s in tdata.scan_folder(train_root, class_names=meta.class_names,
                                                            verify_images=False).samples}
    else:
        log.warning("no %s: the de-duplicated test variant equals the full one", train_root)
    images = tdata.decode_gray([s.path for s in scan.samples])
    dataset = tdata.CachedImageDataset(images, scan.labels(), meta.preprocess)
    probs = predict_probs(artifact.model, dataset, device=torch.device("cpu"), batch_size=batch_size)
    return {"scan": scan, "images": images, "p_defect": probs[:, meta.defective_index],
            "is_defect": np.asarray(scan.labels()) == meta.defective_index,
            "leaked": np.array([s.sha256 in train_hashes for s in scan.samples], dtype=bool)}


def evaluate(*, model_path: Path, data: Path, report_dir: Path, threshold: float | None = None,
             batch_size: int = 64, split: str = "test") -> dict[str, Any]:
    """Score `data/split`, write the report folder, and return the metrics dict (also metrics.json)."""
    from training.report import write_report

    artifact = load_artifact(model_path)
    meta = artifact.metadata
    scored = score_split(artifact, data=data, split=split, batch_size=batch_size)
    scan, images, p_defect, is_defect, leaked = (scored["scan"], scored["images"], scored["p_defect"],
                                                 scored["is_defect"], scored["leaked"])
    t = float(meta.recommended_threshold if threshold is None else threshold)
    keep = ~leaked
    metrics = {
        "model": str(model_path), "model_sha256": artifact.sha256, "split": split,
        "test_fingerprint": scan.fingerprint(), "threshold": t,
        "threshold_source": "artifact recommended" if threshold is None else "command line",
        "leaked_test_images": int(leaked.sum()),
        "leaked_by_class": {name: int(np.sum(leaked & (np.asarray(scan.labels()) == i)))
                            for i, name in enumerate(meta.class_names)},
        "test_full": variant_metrics(p_defect, is_defect, t, class_names=meta.class_names,
                                     defective_class=meta.defective_class),
        "test_dedup": variant_metrics(p_defect[keep], is_defect[keep], t, class_names=meta.class_names,
                                      defective_class=meta.defective_class),
    }
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    np.savez(report_dir / "scores.npz", p_defect=p_defect, is_defect=is_defect, leaked=leaked,
             paths=np.array([str(s.path) for s in scan.samples]))
    write_report(report_dir, metrics=metrics, artifact=artifact, samples=scan.samples, images=images,
                 p_defect=p_defect, is_defect=is_defect, leaked=leaked)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for name in ("test_full", "test_dedup"):
        m = metrics[name]
        log.info("%s: %d images, escapes %d, false rejects %d, accuracy %.4f at threshold %.4f "
                 "(at 0.5: escapes %d, false rejects %d)", name, m["n"], m["escapes"], m["false_rejects"],
                 m["accuracy"], t, m["at_0_5"]["escapes"], m["at_0_5"]["false_rejects"])
    log.info("report written to %s", report_dir / "report.md")
    return metrics
