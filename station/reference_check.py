"""Reference inputs: a few fixed images stored in the artifact with the scores they got at export.

At export the artifact records six model-input images (four impellers rendered by the station's own
renderer, two defective and two good, a uniform grey frame and a noise frame; never dataset images)
and, for each, the logits, p_defect, novelty and image-check measures the shipped network produced.
Loading the artifact (torch on the CPU) and starting either inference backend score them again and
refuse the model when a result differs beyond a small numeric tolerance: the weights, the validity
fit, the preprocessing, the image checks and the runtime on this machine must all still do what was
validated. `score_references` is the one scoring path used at export and at every check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from station.image_checks import ImageChecks
from station.preprocess import Preprocess
from station.validity import NoveltyModel

# (normalised batch N x 3 x S x S float32) -> (logits N x C, features N x D), both numpy
Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

REFERENCE_SEED = 20261124
# Tolerances: CPU torch reproduces the export to ~1e-6; CUDA (TF32) and ONNX Runtime differ by ~1e-4 to 1e-3.
LOGIT_ABS, LOGIT_REL = 2e-2, 2e-3
P_DEFECT_ABS = 2e-3
NOVELTY_REL = 2e-2
MEASURE_ABS, MEASURE_REL = 1e-6, 1e-6  # same pixels, same numpy code: the measures are exact


class ReferenceMismatch(ValueError):
    """A reference input scores differently from what the artifact recorded at export."""


def reference_images(size: int) -> np.ndarray:
    """The six reference inputs at the model's input size (uint8, N x S x S)."""
    from station.cameras.synthetic import render_impeller

    rng = np.random.default_rng(REFERENCE_SEED)
    images = [render_impeller(rng, size, defective=d) for d in (True, False, True, False)]
    images.append(np.full((size, size), 128, np.uint8))
    images.append(rng.integers(0, 256, (size, size), dtype=np.uint8))
    return np.stack(images)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score_references(images: np.ndarray, *, forward: Forward, preprocess: Preprocess, novelty: NoveltyModel,
                     defective_index: int) -> list[dict[str, Any]]:
    """Logits, p_defect, novelty and image measures of each reference image."""
    checks = ImageChecks()
    batch = np.stack([preprocess.normalize(img) for img in images])
    logits, features = forward(batch)
    p = softmax(np.asarray(logits))[:, defective_index]
    nov = novelty.score(np.asarray(features))
    return [{"logits": [float(v) for v in np.asarray(logits)[i]], "p_defect": float(p[i]),
             "novelty": float(nov[i]), "measures": checks.measure(img)} for i, img in enumerate(images)]


def compare_references(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> float:
    """Raise ReferenceMismatch on the first result outside tolerance; return the largest |p_defect| difference."""
    if len(expected) != len(got):
        raise ReferenceMismatch(f"the artifact records {len(expected)} reference results for {len(got)} images")
    worst = 0.0
    for i, (want, have) in enumerate(zip(expected, got)):
        for j, (a, b) in enumerate(zip(want["logits"], have["logits"], strict=True)):
            if not abs(a - b) <= LOGIT_ABS + LOGIT_REL * abs(a):
                raise ReferenceMismatch(f"reference input {i}: logit {j} is {b:.6g}, recorded {a:.6g}")
        dp = abs(want["p_defect"] - have["p_defect"])
        worst = max(worst, dp)
        if not dp <= P_DEFECT_ABS:
            raise ReferenceMismatch(f"reference input {i}: p_defect {have['p_defect']:.6g}, "
                                    f"recorded {want['p_defect']:.6g}")
        if not abs(want["novelty"] - have["novelty"]) <= NOVELTY_REL * max(1.0, abs(want["novelty"])):
            raise ReferenceMismatch(f"reference input {i}: novelty {have['novelty']:.6g}, "
                                    f"recorded {want['novelty']:.6g}")
        for name, a in want["measures"].items():
            b = have["measures"].get(name, math.nan)
            if not abs(a - b) <= MEASURE_ABS + MEASURE_REL * abs(a):
                raise ReferenceMismatch(f"reference input {i}: image check {name} measures {b:.6g}, "
                                        f"recorded {a:.6g}")
    return worst
