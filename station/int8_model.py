"""The INT8 graph a model artifact may carry (`model.precision: int8`), and when the station trusts it.

`python -m training quantize` adds to a sealed format-2 artifact an ONNX Runtime static-quantized copy
of its network (QDQ, per-channel int8 weights, uint8 activations calibrated on training images only;
the pooled-feature head stays fp32 so the validity gate's novelty keeps its resolution) with an
`int8` metadata section: how it was made, its validation and test figures, the tolerances it agreed
with fp32 within, the novelty scale for the gate, and its own results on the artifact's reference
inputs. The graph's bytes are one of the artifact's digested tensors and the whole file is sealed, so
the integrity checks cover it like the weights.

At start (`check_int8`) the station scores the reference inputs with the INT8 session on this machine
and refuses INT8 when (1) it does not reproduce its own recorded results (an INT8 kernel that computes
differently on this CPU, a changed onnxruntime), (2) a probe inside the fp32 validity domain differs
from fp32 by more than the recorded p_defect or novelty tolerance, or (3) a probe the fp32 gate
rejects on novelty passes the INT8 gate.

How the gate runs under INT8: the image checks measure the same pixels (identical values); novelty is
computed from the INT8 graph's own pooled feature and multiplied by `novelty_scale` (>= 1), chosen at
quantization so that every frame of the agreement set (validation images and their perturbations)
that fp32 finds novel above the limit is also novel above it under INT8: the INT8 gate is at least as
strict as the fp32 one. Because that scale and INT8's quantization noise lift novelty a little on
every frame, the drift monitor's novelty baseline is lifted by the recorded ratio (`int8_domain`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from station.artifact_integrity import ReferenceMismatch, compare_references
from station.validity import ValidityDomain, failed_checks

INT8_FORMAT = "onnx-qdq-int8/1"
TENSOR_GROUP = "int8"
TENSOR_NAME = "onnx"
REQUIRED_KEYS = ("format", "onnx_sha256", "tolerance", "novelty_scale", "novelty_ratio", "reference_scores",
                 "method", "validation")


class Int8Error(ValueError):
    """The INT8 part of an artifact is malformed, or the INT8 graph disagrees with fp32 on this machine."""


@dataclass(frozen=True)
class Int8Graph:
    """The quantized ONNX graph and its metadata section."""

    onnx: bytes
    info: dict[str, Any]

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in self.info]
        if missing:
            raise Int8Error(f"the INT8 section lacks {', '.join(missing)}")
        if self.info["format"] != INT8_FORMAT:
            raise Int8Error(f"INT8 graph format {self.info['format']!r}, expected {INT8_FORMAT!r}")
        if hashlib.sha256(self.onnx).hexdigest() != self.info["onnx_sha256"]:
            raise Int8Error("the INT8 graph's bytes do not match the sha256 recorded with it")
        tol = self.tolerance
        for key in ("p_defect_abs", "novelty_rel"):
            value = tol.get(key)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
                raise Int8Error(f"INT8 tolerance {key} = {value!r} is not a number in (0, 1)")
        if not 1.0 <= self.novelty_scale <= 2.0 or not 0.5 <= self.novelty_ratio <= 2.0:
            raise Int8Error(f"INT8 novelty scale {self.novelty_scale!r} / ratio {self.novelty_ratio!r} out of range")

    @property
    def tolerance(self) -> dict[str, float]:
        return dict(self.info["tolerance"])

    @property
    def novelty_scale(self) -> float:
        return float(self.info["novelty_scale"])

    @property
    def novelty_ratio(self) -> float:
        return float(self.info["novelty_ratio"])

    @property
    def reference_scores(self) -> list[dict[str, Any]]:
        return list(self.info["reference_scores"])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The graph as the artifact stores it: one uint8 tensor (digested and sealed with the rest)."""
        return {TENSOR_NAME: torch.frombuffer(bytearray(self.onnx), dtype=torch.uint8)}

    @classmethod
    def from_parts(cls, info: Any, tensors: Any) -> Int8Graph:
        if not isinstance(info, dict) or not isinstance(tensors, dict):
            raise Int8Error("the INT8 section or its tensor is missing")
        tensor = tensors.get(TENSOR_NAME)
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise Int8Error("the INT8 graph is not stored as a flat uint8 tensor")
        return cls(onnx=tensor.numpy().tobytes(), info=info)


def int8_domain(domain: ValidityDomain, graph: Int8Graph) -> ValidityDomain:
    """The validity domain as the station applies it under INT8: the limits are unchanged (INT8 novelty is
    scaled onto the fp32 limit's side), the drift monitor's novelty baseline and boundary are lifted by
    the ratio of INT8 to fp32 novelty measured on the validation images."""
    ratio = graph.novelty_ratio
    reference = {k: dict(v) for k, v in domain.reference.items()}
    if "novelty" in reference:
        reference["novelty"] = {k: (v * ratio if k in ("mean", "std", "p01", "p99", "min", "max") else v)
                                for k, v in reference["novelty"].items()}
    boundaries = {k: dict(v) for k, v in domain.drift_boundaries.items()}
    if "novelty" in boundaries:
        boundaries["novelty"] = {side: v * ratio for side, v in boundaries["novelty"].items()}
    return dataclasses.replace(domain, reference=reference, drift_boundaries=boundaries)


def check_int8(graph: Int8Graph, *, int8_scores: list[dict[str, Any]], fp32_scores: list[dict[str, Any]],
               domain: ValidityDomain) -> dict[str, float]:
    """Raise Int8Error unless the INT8 results on the reference inputs (scored on this machine, novelty not
    yet scaled) reproduce the recorded ones and agree with fp32 (see the module docstring). Returns the
    worst p_defect and novelty differences found on probes inside the fp32 domain."""
    try:
        compare_references(graph.reference_scores, int8_scores)
    except ReferenceMismatch as exc:
        raise Int8Error(f"the INT8 graph does not reproduce its recorded results on this machine ({exc}); its "
                        f"kernels compute differently here than where it was validated") from exc
    return agreement(int8_scores, fp32_scores, domain=domain, scale=graph.novelty_scale,
                     tolerance=graph.tolerance)


def agreement(int8_scores: list[dict[str, Any]], fp32_scores: list[dict[str, Any]], *, domain: ValidityDomain,
              scale: float, tolerance: dict[str, float]) -> dict[str, float]:
    """Compare INT8 and fp32 results image by image (also used at quantization on the reference inputs)."""
    if len(int8_scores) != len(fp32_scores):
        raise Int8Error(f"{len(int8_scores)} INT8 results for {len(fp32_scores)} fp32 results")
    limit = domain.limit("novelty", "max")
    worst_p = worst_n = 0.0
    for i, (q, f) in enumerate(zip(int8_scores, fp32_scores)):
        n8 = float(q["novelty"]) * scale
        n32 = float(f["novelty"])
        if not failed_checks(domain.limits, {**f["measures"], "novelty": n32}):
            dp = abs(float(q["p_defect"]) - float(f["p_defect"]))
            dn = abs(n8 - n32) / max(n32, 1e-6)
            worst_p, worst_n = max(worst_p, dp), max(worst_n, dn)
            if not dp <= tolerance["p_defect_abs"]:
                raise Int8Error(f"INT8 and fp32 disagree on probe {i}: p_defect {float(q['p_defect']):.4g} vs "
                                f"{float(f['p_defect']):.4g}, more than the recorded tolerance "
                                f"{tolerance['p_defect_abs']:.3g}")
            if not dn <= tolerance["novelty_rel"]:
                raise Int8Error(f"INT8 and fp32 disagree on probe {i}: novelty {n8:.4g} vs {n32:.4g}, more than "
                                f"the recorded tolerance {100 * tolerance['novelty_rel']:.1f}%")
        elif n32 > limit and not n8 > limit:
            raise Int8Error(f"probe {i} is novel under fp32 ({n32:.4g} > {limit:.4g}) but not under INT8 "
                            f"({n8:.4g}): the INT8 gate would pass a frame the fp32 gate rejects")
    return {"p_defect_abs": worst_p, "novelty_rel": worst_n}


def scaled_novelty(values: np.ndarray, graph: Int8Graph | None) -> np.ndarray:
    """Novelty as the gate sees it: INT8's scaled onto the fp32 limit's side; fp32's unchanged."""
    return values if graph is None else values * graph.novelty_scale
