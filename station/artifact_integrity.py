"""Integrity of a model artifact: a seal over every byte, digests of its parts, and reference inputs.

`torch.save` writes a zip archive; a zip may end with a comment after its end-of-central-directory
record, and torch's reader (and Python's `zipfile`) ignore it. `seal` writes the sha256 of every byte
before the comment into that comment (`impeller-artifact-seal/1 sha256=<hex>`), so a change anywhere in
the file, in tensor data, metadata, zip headers, padding or timestamps, and any damage to the seal
itself, is found before `torch.load` parses a single record. The payload also records, at export, a
digest of its tensors (name, dtype, shape, bytes) and of its metadata text; `tensor_digest` and
`text_digest` recompute them after loading, so an artifact edited and sealed again by hand is refused.
Finally the artifact stores six model-input images (four impellers drawn by the station's own renderer,
two defective and two good, a uniform grey frame and a noise frame; never dataset images) with the
logits, p_defect, novelty and image-check measures the exported network gave them. Loading the artifact
(torch on the CPU) and starting either inference backend score them again (`score_references`, the one
scoring path used at export and at every check) and refuse the model when a result differs beyond a
small numeric tolerance: weights, validity fit, preprocessing, image checks and the runtime on this
machine must all still do what was validated.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from station.image_checks import ImageChecks
from station.preprocess import Preprocess
from station.validity import NoveltyModel

# ---- the seal and the digests ----------------------------------------------------------------------------
SEAL_PREFIX = b"impeller-artifact-seal/1 sha256="
SEAL_LENGTH = len(SEAL_PREFIX) + 64
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22  # the end-of-central-directory record without its comment


class SealError(ValueError):
    """The file cannot be sealed, or its seal is missing, damaged or does not match its bytes."""


def seal(raw: bytes) -> bytes:
    """Return `raw` (a zip archive without a comment, as torch.save writes it) with the seal appended."""
    eocd = len(raw) - _EOCD_SIZE
    if eocd < 0 or raw[eocd:eocd + 4] != _EOCD_SIGNATURE or raw[-2:] != b"\x00\x00":
        raise SealError("not a zip archive ending in an end-of-central-directory record without a comment")
    body = raw[:-2] + struct.pack("<H", SEAL_LENGTH)
    return body + SEAL_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii")


def has_seal(raw: bytes) -> bool:
    """True when the file ends like a sealed artifact (the seal may still not match)."""
    return len(raw) >= SEAL_LENGTH + _EOCD_SIZE and raw[-SEAL_LENGTH:].startswith(SEAL_PREFIX)


def verify_seal(raw: bytes) -> None:
    """Raise SealError unless `raw` ends with an intact seal that matches every byte before it."""
    if not has_seal(raw):
        raise SealError("its integrity seal is missing or damaged (the file was changed or truncated)")
    eocd = len(raw) - SEAL_LENGTH - _EOCD_SIZE
    if raw[eocd:eocd + 4] != _EOCD_SIGNATURE or struct.unpack("<H", raw[eocd + 20:eocd + 22])[0] != SEAL_LENGTH:
        raise SealError("its integrity seal is missing or damaged (zip end record does not frame the seal)")
    recorded = raw[-64:]
    try:
        recorded_hex = recorded.decode("ascii")
        int(recorded_hex, 16)
    except (UnicodeDecodeError, ValueError):
        raise SealError("its integrity seal is damaged (the recorded sha256 is not hexadecimal)") from None
    actual = hashlib.sha256(raw[:len(raw) - SEAL_LENGTH]).hexdigest()
    if actual != recorded_hex:
        raise SealError(f"its bytes do not match its integrity seal (sha256 {actual[:12]}..., sealed "
                        f"{recorded_hex[:12]}...): the file was changed after export")


def tensor_digest(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over every tensor of every group, in sorted order: group, name, dtype, shape, raw bytes."""
    digest = hashlib.sha256()
    for group in sorted(groups):
        for name in sorted(groups[group]):
            t = groups[group][name].detach().cpu().contiguous()
            digest.update(f"{group}/{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- reference inputs ------------------------------------------------------------------------------------
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
