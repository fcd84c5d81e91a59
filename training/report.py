"""The evaluation report: confusion matrices, ROC/PR curves, threshold table, sample grid, Grad-CAM
(`station.gradcam`, shared with the HMI).

Everything goes to one report folder with a `report.md` that embeds the images, escapes first.
The PNGs of test images (sample grid, Grad-CAM overlays) are derived from the dataset's images, so
the report folder belongs outside the repository (or in the git-ignored `reports/`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from station.artifact import LoadedArtifact  # noqa: E402
from station.gradcam import grad_cam  # noqa: E402,F401  (re-exported: training.report.grad_cam)
from training.data import Sample  # noqa: E402
from training.threshold import threshold_table  # noqa: E402

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "metrics.json", "confusion_test_full.png", "confusion_test_dedup.png",
                "confusion.txt", "classification_report.txt", "roc.png", "pr.png", "threshold_table.md",
                "threshold_table.csv", "sample_grid.png", "scores.npz")


def _confusion_png(path: Path, confusion: list[list[int]], title: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(np.asarray(confusion), cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["pred defective", "pred ok"])
    ax.set_yticks([0, 1], ["true defective", "true ok"])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(report_dir: Path, variants: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    variants = {k: v for k, v in variants.items() if v[1].any() and (~v[1]).any()}
    roc = {name: roc_curve(d, p)[:2] for name, (p, d) in variants.items()}
    _plot_curves(report_dir / "roc.png", roc, xlabel="false positive rate (ok rejected)",
                 ylabel="true positive rate (defective caught)", title="ROC, positive = defective")
    pr = {}
    for name, (p, d) in variants.items():
        precision, recall, _ = precision_recall_curve(d, p)
        pr[name] = (recall, precision)
    _plot_curves(report_dir / "pr.png", pr, xlabel="recall (defective caught)", ylabel="precision",
                 title="precision-recall, positive = defective")


def _plot_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], *, xlabel: str, ylabel: str,
                 title: str) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overlay(gray: np.ndarray, cam: np.ndarray | None, *, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    if cam is not None:
        cam_img = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(gray.shape[::-1],
                                                                                   Image.BILINEAR))
        ax.imshow(cam_img, cmap="jet", alpha=0.4, vmin=0, vmax=255)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sample_grid(path: Path, order: Sequence[int], images: Sequence[np.ndarray], *, p_defect: np.ndarray,
                 is_defect: np.ndarray, threshold: float) -> None:
    cols = 6
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        wrong = (p_defect[i] >= threshold) != is_defect[i]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{'DEF' if is_defect[i] else 'ok'}  p={p_defect[i]:.3f}", fontsize=8,
                     color="red" if wrong else "black")
    fig.suptitle(f"true class, p(defective); red = wrong at threshold {threshold:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report_dir: Path, *, metrics: dict[str, Any], artifact: LoadedArtifact,
                 samples: Sequence[Sample], images: Sequence[np.ndarray], p_defect: np.ndarray,
                 is_defect: np.ndarray, leaked: np.ndarray) -> None:
    meta = artifact.metadata
    t = metrics["threshold"]
    keep = ~leaked
    variants = {"test_full": (p_defect, is_defect), "test_dedup": (p_defect[keep], is_defect[keep])}
    text = []
    for name in variants:
        m = metrics[name]
        _confusion_png(report_dir / f"confusion_{name}.png", m["confusion"],
                       f"{name}: {m['n']} images, threshold {t:.3f}")
        text.append(f"{name} ({m['n']} images, threshold {t:.4f})\n"
                    f"                 pred defective  pred ok\n"
                    f"true defective   {m['confusion'][0][0]:>14}  {m['confusion'][0][1]:>7}   <- escapes\n"
                    f"true ok          {m['confusion'][1][0]:>14}  {m['confusion'][1][1]:>7}\n"
                    f"                 ^ false rejects\n")
    (report_dir / "confusion.txt").write_text("\n".join(text))
    (report_dir / "classification_report.txt").write_text("\n".join(
        f"{name} (threshold {t:.4f})\n{metrics[name]['classification_report']}" for name in variants))
    _curves(report_dir, variants)
    table = threshold_table(p_defect, is_defect, extra=(t,))
    table_dedup = {r["threshold"]: r for r in threshold_table(p_defect[keep], is_defect[keep], extra=(t,))}
    lines = ["| threshold | escapes (full) | false rejects (full) | accuracy (full) | escapes (dedup) | "
             "false rejects (dedup) | accuracy (dedup) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    csv = ["threshold,escapes_full,false_rejects_full,accuracy_full,escapes_dedup,false_rejects_dedup,"
           "accuracy_dedup"]
    for r in table:
        d = table_dedup[r["threshold"]]
        mark = " (recommended)" if abs(r["threshold"] - t) < 1e-12 else ""
        lines.append(f"| {r['threshold']:.4f}{mark} | {r['escapes']} | {r['false_rejects']} | "
                     f"{r['accuracy']:.4f} | {d['escapes']} | {d['false_rejects']} | {d['accuracy']:.4f} |")
        csv.append(f"{r['threshold']},{r['escapes']},{r['false_rejects']},{r['accuracy']:.6f},"
                   f"{d['escapes']},{d['false_rejects']},{d['accuracy']:.6f}")
    (report_dir / "threshold_table.md").write_text("\n".join(lines) + "\n")
    (report_dir / "threshold_table.csv").write_text("\n".join(csv) + "\n")

    wrong = np.flatnonzero((p_defect >= t) != is_defect)
    # Escapes first, then false rejects, then the closest calls of each class.
    escapes = [int(i) for i in wrong if is_defect[i]]
    false_rejects = [int(i) for i in wrong if not is_defect[i]]
    margin = np.abs(p_defect - t)
    close = [int(i) for i in np.argsort(margin) if int(i) not in set(wrong)]
    order = (escapes + false_rejects + close)[:max(24, len(wrong))]
    _sample_grid(report_dir / "sample_grid.png", order, images, p_defect=p_defect, is_defect=is_defect,
                 threshold=t)

    cam_files = []
    for i in escapes + false_rejects:
        kind = "escape" if is_defect[i] else "false_reject"
        name = f"gradcam_{kind}_{samples[i].path.stem}.png"
        x = meta.preprocess.pil_to_tensor(Image.fromarray(images[i]))
        cam = grad_cam(artifact.model, x, meta.defective_index)
        _overlay(images[i], cam, title=f"{kind}: {samples[i].path.parent.name}/{samples[i].path.name}\n"
                 f"p(defective)={p_defect[i]:.4f}, threshold {t:.4f}", path=report_dir / name)
        cam_files.append((kind, samples[i], float(p_defect[i]), bool(leaked[i]), name))
    _write_markdown(report_dir, metrics, artifact, cam_files)


def _gate_text(artifact: LoadedArtifact, metrics: dict[str, Any]) -> str:
    from training.evaluate import validity_report

    return validity_report(artifact, metrics)


def _write_markdown(report_dir: Path, metrics: dict[str, Any], artifact: LoadedArtifact,
                    cam_files: list[tuple[str, Sample, float, bool, str]]) -> None:
    t = metrics["threshold"]
    md = [f"# Evaluation report: {artifact.model_id}", "",
          f"Model `{metrics['model']}` (sha256 `{metrics['model_sha256'][:16]}`), split `{metrics['split']}` "
          f"(fingerprint `{metrics['test_fingerprint'][:16]}`), threshold {t:.4f} "
          f"({metrics['threshold_source']}). A part is rejected when p(defective) >= threshold.", "",
          f"`test_dedup` drops the {metrics['leaked_test_images']} test images whose bytes also appear in the "
          f"training folder ({metrics['leaked_by_class']}). `test_novel` keeps only test images with no "
          f"near-copy in the training folder (64 px grey, any rotation/flip, NCC below "
          f"{metrics.get('near_copy_ncc', 0.995)}).", "",
          "| variant | images | **escapes** (defective passed) | false rejects | accuracy | escapes @0.5 | "
          "false rejects @0.5 | ROC AUC | AP |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("test_full", "test_dedup", "test_novel"):
        if name not in metrics:
            continue
        m = metrics[name]
        auc = f"{m['roc_auc']:.5f}" if m["roc_auc"] is not None else "-"
        ap = f"{m['average_precision']:.5f}" if m["average_precision"] is not None else "-"
        md.append(f"| {name} | {m['n']} | **{m['escapes']}** / {m['n_defective']} | {m['false_rejects']} / "
                  f"{m['n_ok']} | {m['accuracy']:.4%} | {m['at_0_5']['escapes']} | "
                  f"{m['at_0_5']['false_rejects']} | {auc} | {ap} |")
    md += ["", "## Confusion matrices", "", "![full](confusion_test_full.png) ![dedup](confusion_test_dedup.png)",
           "", "```", (report_dir / "confusion.txt").read_text(), "```", "",
           "## Classification report", "", "```", (report_dir / "classification_report.txt").read_text(),
           "```", "", "## Threshold table (escapes first)", "", (report_dir / "threshold_table.md").read_text(),
           "", "## Validity gate", "", "```", _gate_text(artifact, metrics), "```", "",
           "## Curves", "", "![ROC](roc.png) ![PR](pr.png)", "",
           "## Sample predictions (misclassified first, then the closest calls)", "",
           "![samples](sample_grid.png)", "", "## Misclassified images (Grad-CAM for the defective class)", ""]
    if not cam_files:
        md.append("None at this threshold.")
    for kind, sample, p, leaked, name in cam_files:
        md += [f"### {kind}: `{sample.path.parent.name}/{sample.path.name}` p(defective)={p:.4f}"
               + (" (also in training folder)" if leaked else ""), "", f"![{name}]({name})", ""]
    (report_dir / "report.md").write_text("\n".join(md) + "\n")
