"""Fitting a model's validity domain: scores and image measures of many images, the novelty fit, limits.

`score_images` runs images through exactly the station's path (`Preprocess.model_pixels`, the image
checks on those pixels, `Preprocess.normalize`, the network's logits and pooled feature from one
forward pass) in batches. `fit_novelty` fits the class-conditional Mahalanobis model with a shared
covariance shrunk by Ledoit-Wolf, on the model's training images only. `spread_limits` derives
limits from the spread of a reference set (the bound no limit may cut into: what the model was
trained on and the mild variation a plant sees); `training.calibration` tightens them where
perturbations show the model failing. `fit_domain` does all of it for a real training split;
`spread_domain` is the quick version (no perturbation sweep) for test models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from station.image_checks import MEASURES, ImageChecks
from station.network import WithFeatures
from station.preprocess import Preprocess
from station.artifact_integrity import softmax
from station.validity import ALL_MEASURES, LIMIT_SIDES, NoveltyModel, ValidityDomain

log = logging.getLogger(__name__)

# Smallest widening of a spread limit, per measure, in its own unit (a share of the spread is added too).
MIN_PAD = {"brightness": 2.0, "contrast": 1.0, "dark_clip": 0.002, "bright_clip": 0.002, "focus": 0.01,
           "noise": 0.2, "part_offset": 0.005, "part_size": 0.005, "novelty": 0.05}
# Physical range of each measure: no limit is set outside it.
RANGE = {"brightness": (0.0, 255.0), "contrast": (0.0, 128.0), "dark_clip": (0.0, 1.0), "bright_clip": (0.0, 1.0),
         "focus": (0.0, 10.0), "noise": (0.0, 255.0), "part_offset": (0.0, 0.75), "part_size": (0.0, 1.2),
         "novelty": (0.0, 1e6)}
UNCERTAIN = (0.1, 0.9)  # p_defect band where the model is unsure: its share is a drift statistic


@dataclass
class Scores:
    """Per-image results of `score_images` (row i = image i)."""

    p_defect: np.ndarray
    features: np.ndarray
    measures: dict[str, np.ndarray]

    def with_novelty(self, novelty: NoveltyModel) -> Scores:
        measures = dict(self.measures)
        measures["novelty"] = novelty.score(self.features)
        return Scores(self.p_defect, self.features, measures)


def score_images(network: nn.Module, preprocess: Preprocess, images: Sequence[np.ndarray], *,
                 defective_index: int, batch_size: int = 64, novelty: NoveltyModel | None = None) -> Scores:
    """p_defect, pooled features and image measures of uint8 grey images, through the station's path."""
    net = WithFeatures(network).eval()
    checks = ImageChecks()
    p_all, f_all, m_all = [], [], {m: [] for m in MEASURES}
    for start in range(0, len(images), batch_size):
        batch = []
        for image in images[start:start + batch_size]:
            pixels = preprocess.model_pixels(image)
            for name, value in checks.measure(pixels).items():
                m_all[name].append(value)
            batch.append(preprocess.normalize(pixels))
        with torch.inference_mode():
            logits, features = net(torch.from_numpy(np.stack(batch)))
        p_all.append(softmax(logits.float().numpy())[:, defective_index])
        f_all.append(features.float().numpy())
    scores = Scores(p_defect=np.concatenate(p_all) if p_all else np.zeros(0),
                    features=np.concatenate(f_all) if f_all else np.zeros((0, 0), np.float32),
                    measures={k: np.asarray(v, dtype=np.float64) for k, v in m_all.items()})
    return scores.with_novelty(novelty) if novelty is not None else scores


def fit_novelty(features: np.ndarray, labels: Sequence[int]) -> tuple[NoveltyModel, float]:
    """Class means and a whitening matrix for the shared covariance with Ledoit-Wolf shrinkage.

    Shrinking toward a scaled identity keeps the inverse well conditioned when some feature directions
    barely vary over the training images. Returns the model and the shrinkage used."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    n, d = centred.shape
    cov = centred.T @ centred / n
    mu = float(np.trace(cov)) / d
    delta = float(((cov - mu * np.eye(d)) ** 2).sum()) / d
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - n ||S||_F^2
    beta = (float(((centred ** 2).sum(axis=1) ** 2).sum()) - n * float((cov ** 2).sum())) / (n * n * d)
    shrinkage = 1.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    shrunk = (1.0 - shrinkage) * cov + shrinkage * mu * np.eye(d)
    eigval, eigvec = np.linalg.eigh(shrunk)
    whitening = eigvec / np.sqrt(np.maximum(eigval, 1e-12 * max(mu, 1e-12)))[None, :]
    return NoveltyModel(class_means=means.astype(np.float32), whitening=whitening.astype(np.float32)), shrinkage


def reference_stats(measures: dict[str, np.ndarray], p_defect: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and 1st/99th percentiles of each measure (the drift baseline)."""
    stats = {}
    for name, values in measures.items():
        v = np.asarray(values, dtype=np.float64)
        stats[name] = {"mean": float(v.mean()), "std": float(v.std()), "p01": float(np.percentile(v, 1)),
                       "p99": float(np.percentile(v, 99)), "min": float(v.min()), "max": float(v.max()),
                       "n": int(len(v))}
    if p_defect is not None and len(p_defect):
        unsure = (p_defect > UNCERTAIN[0]) & (p_defect < UNCERTAIN[1])
        stats["p_defect"] = {"mean": float(np.mean(p_defect)), "uncertain_share": float(np.mean(unsure)),
                             "uncertain_band": list(UNCERTAIN), "n": int(len(p_defect))}
    return stats


def spread_limits(measures: dict[str, np.ndarray], *, pad: float,
                  spread_from: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Limits just outside the extremes of `measures` (every measure and side): extreme +/- pad x (p99 - p01)
    of `spread_from` (default: `measures` themselves), at least MIN_PAD, within the measure's physical range."""
    limits: dict[str, dict[str, float]] = {}
    for name in ALL_MEASURES:
        v = np.asarray(measures[name], dtype=np.float64)
        ref = v if spread_from is None else np.asarray(spread_from[name], dtype=np.float64)
        widen = max(pad * float(np.percentile(ref, 99) - np.percentile(ref, 1)), MIN_PAD[name])
        lo, hi = RANGE[name]
        sides = {}
        if "min" in LIMIT_SIDES[name]:
            sides["min"] = float(max(lo, v.min() - widen))
        if "max" in LIMIT_SIDES[name]:
            sides["max"] = float(min(hi, v.max() + widen))
        limits[name] = sides
    return limits


def merge_measures(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in ALL_MEASURES}


def spread_domain(network: nn.Module, preprocess: Preprocess, images: Sequence[np.ndarray], *,
                  labels: Sequence[int], defective_index: int, pad: float = 0.5,
                  training_images: int | None = None) -> ValidityDomain:
    """A domain without perturbation calibration: novelty fitted on the first `training_images` images
    (default all), limits from the spread of all of them widened by `pad`. For test networks and tiny
    data sets (seconds); a product model is calibrated with `training.calibration.fit_domain`."""
    scores = score_images(network, preprocess, images, defective_index=defective_index)
    n_fit = len(images) if training_images is None else training_images
    novelty, shrinkage = fit_novelty(scores.features[:n_fit], list(labels)[:n_fit])
    scores = scores.with_novelty(novelty)
    return ValidityDomain(
        limits=spread_limits(scores.measures, pad=pad), novelty=novelty,
        reference=reference_stats(scores.measures, scores.p_defect), calibration=[],
        method={"calibrated": False, "limits": f"spread of the fit images widened by {pad:g} x (p99 - p01)",
                "fit_images": len(images), "shrinkage": shrinkage, "fitted_utc": _now()})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def timed(what: str):
    """Context helper for progress lines in long fits."""

    class _Timer:
        def __enter__(self) -> _Timer:
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc: Any) -> None:
            log.info("%s: %.1f s", what, time.perf_counter() - self.t0)

    return _Timer()
