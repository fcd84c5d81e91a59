"""Evaluation of a model artifact on the held-out test folder: scores, metrics on three test variants.

The test folder is read only here. Every image is scored through the station's own path (the
artifact's `Preprocess`, the image checks, one forward pass giving p_defect and the pooled feature);
a part is rejected when p(defective) >= the threshold (the artifact's recommended one unless
`--threshold` overrides it). Metrics are computed for the full test split, for the test split without
images whose bytes also appear in the training folder (sha256; 64 ok-images in the published casting
data), and for the novel subset: test images with no near-copy in the training folder (64 px grey,
any rotation/flip, NCC below 0.995, `training.nearcopy`), escapes (defective judged ok) first. With
a validity domain in the artifact the gate is applied too (image_check verdicts by check) and its
table (limits, calibration, mild variation) is printed. `training.report` turns the result into
plots, Grad-CAM overlays and `report.md`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, classification_report, roc_auc_score

from station.artifact import LoadedArtifact, load_artifact
from station.validity import calibration_table, failed_checks, limits_table, mild_table
from training import data as tdata
from training import nearcopy
from training.validity import score_images

log = logging.getLogger(__name__)


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


def score_split(artifact: LoadedArtifact, *, data: Path, split: str = "test", batch_size: int = 64,
                near_copies: bool = True) -> dict[str, Any]:
    """p(defective) and gate measures for every image of `data/split`, which of them also sit in `data/train`
    (same bytes), and (`near_copies`) which have no near-copy there (the novel subset)."""
    meta = artifact.metadata
    scan = tdata.scan_folder(Path(data) / split, class_names=meta.class_names)
    train_root = Path(data) / "train"
    train: list[tdata.Sample] = []
    if train_root.is_dir():
        train = list(tdata.scan_folder(train_root, class_names=meta.class_names, verify_images=False).samples)
    else:
        log.warning("no %s: the de-duplicated and novel test variants equal the full one", train_root)
    train_hashes = {s.sha256 for s in train}
    images = tdata.decode_gray([s.path for s in scan.samples])
    domain = artifact.validity
    scores = score_images(artifact.model, meta.preprocess, images, defective_index=meta.defective_index,
                          batch_size=batch_size, novelty=domain.novelty if domain else None)
    novel = np.ones(len(images), dtype=bool)
    best_ncc = np.full(len(images), np.nan)
    if near_copies and train:
        train_thumbs = np.stack([nearcopy.thumbnail(s.path) for s in train])
        novel, best_ncc = nearcopy.novel_mask(np.stack([nearcopy.thumbnail(img) for img in images]), train_thumbs)
    gate_failed = [failed_checks(domain.limits, {k: float(v[i]) for k, v in scores.measures.items()})
                   for i in range(len(images))] if domain else None
    return {"scan": scan, "images": images, "p_defect": scores.p_defect, "measures": scores.measures,
            "gate_failed": gate_failed, "is_defect": np.asarray(scan.labels()) == meta.defective_index,
            "leaked": np.array([s.sha256 in train_hashes for s in scan.samples], dtype=bool),
            "novel": novel, "best_ncc": best_ncc}


def gate_metrics(scored: dict[str, Any], threshold: float) -> dict[str, Any] | None:
    """The validity gate on the split: image_check verdicts by check, and the verdicts with the gate applied."""
    failed = scored["gate_failed"]
    if failed is None:
        return None
    by_check: dict[str, int] = {}
    for checks in failed:
        for c in checks:
            by_check[c] = by_check.get(c, 0) + 1
    gated = np.array([bool(c) for c in failed])
    reject = (scored["p_defect"] >= threshold) | gated
    d = scored["is_defect"]
    return {"image_check": int(gated.sum()), "by_check": by_check,
            "escapes_with_gate": int(np.sum(d & ~reject)), "false_rejects_with_gate": int(np.sum(~d & reject))}


def evaluate(*, model_path: Path, data: Path, report_dir: Path, threshold: float | None = None,
             batch_size: int = 64, split: str = "test") -> dict[str, Any]:
    """Score `data/split`, write the report folder, and return the metrics dict (also metrics.json)."""
    from training.report import write_report

    artifact = load_artifact(model_path)
    meta = artifact.metadata
    scored = score_split(artifact, data=data, split=split, batch_size=batch_size)
    scan, images, p_defect, is_defect, leaked, novel = (scored["scan"], scored["images"], scored["p_defect"],
                                                        scored["is_defect"], scored["leaked"], scored["novel"])
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
        "test_novel": variant_metrics(p_defect[novel], is_defect[novel], t, class_names=meta.class_names,
                                      defective_class=meta.defective_class),
        "near_copy_ncc": nearcopy.NEAR_COPY_NCC,
        "validity_gate": gate_metrics(scored, t),
    }
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    np.savez(report_dir / "scores.npz", p_defect=p_defect, is_defect=is_defect, leaked=leaked, novel=novel,
             best_ncc=scored["best_ncc"], paths=np.array([str(s.path) for s in scan.samples]),
             **{f"gate_{k}": v for k, v in scored["measures"].items()})
    write_report(report_dir, metrics=metrics, artifact=artifact, samples=scan.samples, images=images,
                 p_defect=p_defect, is_defect=is_defect, leaked=leaked)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for name in ("test_full", "test_dedup", "test_novel"):
        m = metrics[name]
        log.info("%s: %d images, escapes %d, false rejects %d, accuracy %.4f at threshold %.4f "
                 "(at 0.5: escapes %d, false rejects %d)", name, m["n"], m["escapes"], m["false_rejects"],
                 m["accuracy"], t, m["at_0_5"]["escapes"], m["at_0_5"]["false_rejects"])
    log.info("validity domain:\n%s", validity_report(artifact, metrics))
    log.info("report written to %s", report_dir / "report.md")
    return metrics


def validity_report(artifact: LoadedArtifact, metrics: dict[str, Any]) -> str:
    """The validity-domain table (limits, calibration, mild variation) and the gate's result on the split."""
    domain = artifact.validity
    if domain is None:
        return "no validity domain: a format-1 artifact (the station runs it with the gate OFF)"
    gate = metrics["validity_gate"]
    lines = [f"validity domain ({'calibrated' if domain.calibrated else 'NOT calibrated'}):",
             limits_table(domain.limits, reference=domain.reference)]
    if domain.calibration:
        lines += ["calibration (held-out validation images, not near-copies of training images):",
                  calibration_table(domain.calibration),
                  "mild variation on the calibration images:", mild_table(domain.method.get("mild", []))]
    by_check = ", ".join(f"{k} {v}" for k, v in sorted(gate["by_check"].items())) or "none"
    lines.append(f"gate on {metrics['split']}: {gate['image_check']} image_check ({by_check}); with the gate: "
                 f"{gate['escapes_with_gate']} escapes, {gate['false_rejects_with_gate']} false rejects")
    return "\n".join(lines)
