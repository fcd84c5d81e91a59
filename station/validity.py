"""The validity domain a model artifact carries: the limits of the frames its verdicts can be trusted on.

A `ValidityDomain` holds, per measure (the image checks of `station.image_checks` plus `novelty`), the
lower and/or upper limit set at calibration, the reference statistics of the calibration images (the
drift monitor's baseline), the calibration table that says how each limit was found, and the novelty
model: class-conditional Mahalanobis distance of the network's pooled feature with one shared,
shrunk covariance (Lee et al. 2018), stored as class means and a whitening matrix. The JSON part goes
into the artifact's metadata, the two matrices into its tensors (loaded with `weights_only=True`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from station.image_checks import ALL_MEASURES

# Which side(s) of each measure a frame may leave the domain on.
LIMIT_SIDES: dict[str, tuple[str, ...]] = {
    "brightness": ("min", "max"), "contrast": ("min", "max"), "dark_clip": ("max",), "bright_clip": ("max",),
    "focus": ("min",), "noise": ("max",), "part_offset": ("max",), "part_size": ("min", "max"),
    "novelty": ("max",),
}

UNITS = {"brightness": "grey level", "contrast": "grey level", "dark_clip": "share of pixels",
         "bright_clip": "share of pixels", "focus": "edge steepness, full / half res.", "noise": "grey level",
         "part_offset": "share of frame width", "part_size": "share of frame width",
         "novelty": "Mahalanobis, RMS per feature"}

NOVELTY_TENSORS = ("novelty_class_means", "novelty_whitening")


class ValidityError(ValueError):
    """The validity part of an artifact is incomplete or inconsistent."""


@dataclass(frozen=True)
class NoveltyModel:
    """Distance of a pooled feature to the nearest class of the training features.

    `whitening` W satisfies W W^T = inverse of the shrunk shared covariance, so the squared Mahalanobis
    distance to class c is ||(f - mu_c) W||^2. The score is sqrt(min_c d_c^2 / D): about 1 for a
    typical training image whatever the feature width D.
    """

    class_means: np.ndarray   # C x D, float32
    whitening: np.ndarray     # D x D, float32

    def __post_init__(self) -> None:
        c, d = self.class_means.shape
        if self.whitening.shape != (d, d) or c < 1:
            raise ValidityError(f"novelty tensors do not fit: means {self.class_means.shape}, "
                                f"whitening {self.whitening.shape}")
        if not (np.isfinite(self.class_means).all() and np.isfinite(self.whitening).all()):
            raise ValidityError("novelty tensors hold NaN or infinite values")
        projected = (self.class_means @ self.whitening).astype(np.float64)
        object.__setattr__(self, "_projected_means", projected)
        object.__setattr__(self, "_mean_norms", (projected * projected).sum(axis=1)[None, :])
        object.__setattr__(self, "_dim", int(d))

    @property
    def feature_dim(self) -> int:
        return self._dim  # type: ignore[attr-defined]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Novelty of each row of `features` (N x D). On the inference thread for every part: the class
        means' squared norms are computed once, and the reductions are called as ufuncs directly (the
        same arithmetic as the ndarray methods, less Python around it)."""
        dim = self._dim  # type: ignore[attr-defined]
        z = np.asarray(features, dtype=np.float32).reshape(-1, dim) @ self.whitening
        z = z.astype(np.float64)
        m, norms = self._projected_means, self._mean_norms  # type: ignore[attr-defined]
        d2 = np.add.reduce(z * z, axis=1, keepdims=True) - 2.0 * z @ m.T + norms
        return np.sqrt(np.maximum(np.minimum.reduce(d2, axis=1), 0.0) / dim)

    def tensors(self) -> dict[str, Any]:
        import torch

        return {"novelty_class_means": torch.from_numpy(np.ascontiguousarray(self.class_means, dtype=np.float32)),
                "novelty_whitening": torch.from_numpy(np.ascontiguousarray(self.whitening, dtype=np.float32))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any]) -> NoveltyModel:
        import torch

        missing = [k for k in NOVELTY_TENSORS if not isinstance(tensors.get(k), torch.Tensor)]
        if missing:
            raise ValidityError(f"novelty tensors missing: {missing}")
        return cls(class_means=tensors["novelty_class_means"].float().numpy(),
                   whitening=tensors["novelty_whitening"].float().numpy())


Limits = dict[str, dict[str, float]]  # measure -> {"min": x, "max": y} (only the sides in LIMIT_SIDES)


@dataclass(frozen=True)
class ValidityDomain:
    limits: Limits
    novelty: NoveltyModel
    reference: dict[str, dict[str, float]] = field(default_factory=dict)  # measure -> mean/std/p01/p99
    calibration: list[dict[str, Any]] = field(default_factory=list)       # the calibration table rows
    method: dict[str, Any] = field(default_factory=dict)                  # how it was fitted, counts, margins
    # measure -> side -> the value at the nearest failure boundary (median over the calibration images at
    # the severity where the model starts to fail): the drift monitor's target for rolling means.
    drift_boundaries: Limits = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, sides in self.limits.items():
            if name not in LIMIT_SIDES:
                raise ValidityError(f"validity limit for unknown measure {name!r}")
            for side, value in sides.items():
                if side not in LIMIT_SIDES[name] or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValidityError(f"validity limit {name}_{side} = {value!r} is not a finite number "
                                        f"on an allowed side {LIMIT_SIDES[name]}")
        missing = [f"{m}_{s}" for m, sides in LIMIT_SIDES.items() for s in sides
                   if s not in self.limits.get(m, {})]
        if missing:
            raise ValidityError(f"validity limits missing: {', '.join(missing)}")

    @property
    def calibrated(self) -> bool:
        return bool(self.method.get("calibrated"))

    def limit(self, measure: str, side: str) -> float:
        return float(self.limits[measure][side])

    def to_dict(self) -> dict[str, Any]:
        return {"limits": self.limits, "reference": self.reference, "calibration": self.calibration,
                "method": self.method, "drift_boundaries": self.drift_boundaries,
                "novelty_feature_dim": self.novelty.feature_dim}

    @classmethod
    def from_parts(cls, data: dict[str, Any], tensors: dict[str, Any]) -> ValidityDomain:
        try:
            limits = {str(m): {str(s): float(v) for s, v in dict(sides).items()}
                      for m, sides in dict(data["limits"]).items()}
            novelty = NoveltyModel.from_tensors(tensors)
            if int(data.get("novelty_feature_dim", novelty.feature_dim)) != novelty.feature_dim:
                raise ValidityError("novelty feature width in the metadata differs from its tensors")
            boundaries = {str(m): {str(s): float(v) for s, v in dict(sides).items()}
                          for m, sides in dict(data.get("drift_boundaries", {})).items()}
            return cls(limits=limits, novelty=novelty, reference=dict(data.get("reference", {})),
                       calibration=list(data.get("calibration", [])), method=dict(data.get("method", {})),
                       drift_boundaries=boundaries)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidityError(f"validity domain is incomplete or invalid: {exc}") from exc


def limits_table(limits: Limits, *, reference: dict[str, dict[str, float]] | None = None,
                 sources: dict[str, str] | None = None) -> str:
    """A fixed-width table of limits (and where each came from), for check-config and evaluate."""
    lines = [f"{'check':<14}{'min':>10}{'max':>10}  {'unit':<34}{'reference mean (p01..p99)':<30}"
             + ("  source" if sources else "")]
    for name in ALL_MEASURES:
        sides = limits.get(name, {})
        lo = f"{sides['min']:.4g}" if "min" in sides else "-"
        hi = f"{sides['max']:.4g}" if "max" in sides else "-"
        ref = (reference or {}).get(name)
        ref_text = f"{ref['mean']:.4g} ({ref['p01']:.4g}..{ref['p99']:.4g})" if ref else ""
        src = f"  {sources.get(name, '')}" if sources else ""
        lines.append(f"{name:<14}{lo:>10}{hi:>10}  {UNITS[name]:<34}{ref_text:<30}{src}")
    return "\n".join(lines)


def calibration_table(rows: list[dict[str, Any]]) -> str:
    """Per fault axis: where the model starts to fail, the limit(s) guarding it, and what the gate catches."""
    head = (f"{'axis':<16}{'severity':<20}{'fails at':>9}{'esc/fr there':>14}  {'guarded by':<33}{'limit':>14}"
            f"{'rejected at fail':>17}{'errors passed':>15}")
    lines = [head]
    for r in rows:
        fail = "none" if r.get("failure_severity") is None else f"{r['failure_severity']:g}"
        errs = "-" if r.get("failure_escapes") is None else f"{r['failure_escapes']}/{r['failure_false_rejects']}"
        limits = r.get("limits") or {}
        keys = [k for k in str(r.get("check", "")).split(", ") if k in limits]
        limit = " / ".join(f"{limits[k]:.3g}" for k in keys) or "-"
        caught = "-" if r.get("caught_at_failure") is None else f"{100 * r['caught_at_failure']:.0f}%"
        passed = f"{r.get('errors_passed_by_gate', 0)} of {r.get('errors', 0)}"
        lines.append(f"{r['axis']:<16}{r.get('what', ''):<20}{fail:>9}{errs:>14}  {r.get('check', '-'):<33}"
                     f"{limit:>14}{caught:>17}{passed:>15}")
    lines.append("fails at: mildest severity misjudging more than the tolerated share of calibration images; esc/fr: "
                 "escapes / false rejects there; rejected at fail: share of those frames the gate rejects; errors "
                 "passed: misjudged frames (all severities swept) that the gate let through")
    return "\n".join(lines)


def mild_table(rows: list[dict[str, Any]]) -> str:
    """Mild, realistic variation: how many frames the gate rejects and how many the model misjudges."""
    lines = [f"{'mild variation':<30}{'images':>8}{'image_check':>13}{'escapes':>9}{'false rejects':>15}"]
    for r in rows:
        lines.append(f"{r['perturbation']:<30}{r['images']:>8}{r['image_check']:>13}{r['escapes']:>9}"
                     f"{r['false_rejects']:>15}")
    return "\n".join(lines)


def failed_checks(limits: Limits, measures: dict[str, float]) -> tuple[str, ...]:
    """The limit keys a frame violates (`brightness_min`: below it; `novelty_max`: above it).

    Written as `not value >= limit` so that a measure that is NaN or missing fails its check."""
    failed = []
    for name, sides in limits.items():
        value = measures.get(name, math.nan)
        if "min" in sides and not value >= sides["min"]:
            failed.append(f"{name}_min")
        if "max" in sides and not value <= sides["max"]:
            failed.append(f"{name}_max")
    return tuple(failed)


def outside_mask(limits: Limits, measures: dict[str, np.ndarray]) -> np.ndarray:
    """Vectorised `failed_checks`: True for each row that violates any limit."""
    n = len(next(iter(measures.values())))
    out = np.zeros(n, dtype=bool)
    for name, sides in limits.items():
        v = np.asarray(measures[name], dtype=np.float64)
        if "min" in sides:
            out |= ~(v >= sides["min"])
        if "max" in sides:
            out |= ~(v <= sides["max"])
    return out
