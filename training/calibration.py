"""Calibrating the validity domain: perturb held-out images until the model fails, set limits inside that.

`fit_domain` takes the model's training images (the novelty fit, and the spread the limits must keep)
and candidate calibration images (the validation split). Candidates that are near-copies of a training
image are dropped, and near-copies among the rest are grouped to one image each, so calibration sees
parts the model has not seen. Then, per fault axis of `training.perturb`, a stratified sample is
perturbed at increasing severity and scored: the failure boundary is the mildest severity at which
more than `max_error_rate` of the images are misjudged (escapes or false rejects at the recommended
threshold). Each guarding limit is the median measure of the images perturbed `margin` of the way
back from that boundary toward nominal, but never tighter than the keep bound: the extremes of the
training images, the calibration images and their mild variations (`perturb.MILD`), widened a little.
The novelty limit is the keep bound. Every sweep is then re-scored against the final limits: the
table says where each axis fails, where its limit sits, how much of the boundary the gate catches
and how many of the model's errors on that axis would still pass the gate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from station.artifact import ArtifactMetadata
from station.validity import ALL_MEASURES, LIMIT_SIDES, NoveltyModel, ValidityDomain, outside_mask
from training import nearcopy
from training.perturb import AXES, MILD, Axis, Perturb
from training.validity import (
    RANGE, Scores, _now, fit_novelty, merge_measures, reference_stats, score_images, spread_limits, timed,
)

log = logging.getLogger(__name__)


MIN_CALIBRATION_IMAGES = 10


class CalibrationError(ValueError):
    """Too few usable calibration images to find failure boundaries."""


@dataclass(frozen=True)
class CalibrationSettings:
    margin: float = 0.3            # limits sit this share of the way back from the failure boundary
    max_error_rate: float = 0.01   # failure boundary: more than this share of images misjudged
    keep_pad: float = 0.1          # widening of the keep bound, share of (p99 - p01)
    novelty_pad: float = 0.25      # widening of the novelty limit beyond the keep set, share of (p99 - p01)
    sweep_images: int = 240        # calibration images per perturbation sweep (stratified sample)
    near_copy_ncc: float = nearcopy.NEAR_COPY_NCC
    seed: int = 0


def _perturbed(images: Sequence[np.ndarray], fn: Perturb, value: float | None, *, seed: int,
               salt: int) -> list[np.ndarray]:
    """`fn` applied to every image; `value` None: a random angle in [0, 360) per image (rotation).
    One generator per image and purpose: an image gets the same noise or direction on every run."""
    out = []
    for i, img in enumerate(images):
        rng = np.random.default_rng([seed, salt, i])
        out.append(fn(img, float(rng.uniform(0.0, 360.0)) if value is None else value, rng))
    return out


def _errors(scores: Scores, is_defect: np.ndarray, threshold: float) -> tuple[int, int]:
    reject = scores.p_defect >= threshold
    return int(np.sum(is_defect & ~reject)), int(np.sum(~is_defect & reject))


def _calibration_set(fit_thumbs: np.ndarray, images: Sequence[np.ndarray], labels: Sequence[int], *,
                     settings: CalibrationSettings) -> tuple[list[int], dict[str, int]]:
    """Indices of candidates with no near-copy among the training images, one per near-copy group."""
    thumbs = np.stack([nearcopy.thumbnail(img) for img in images])
    novel, _ = nearcopy.novel_mask(thumbs, fit_thumbs, threshold=settings.near_copy_ncc)
    idx = np.flatnonzero(novel)
    groups = nearcopy.group_near_copies(thumbs[idx], threshold=settings.near_copy_ncc)
    _, first = np.unique(groups, return_index=True)
    keep = sorted(int(idx[i]) for i in first)
    counts = {"candidates": len(images), "near_copies_of_training": int((~novel).sum()),
              "novel": int(novel.sum()), "novel_groups": len(keep),
              "novel_groups_defective": int(sum(1 for i in keep if labels[i] == 0)),
              "novel_groups_ok": int(sum(1 for i in keep if labels[i] != 0))}
    return keep, counts


def _sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified random sample of at most n indices (same class shares as `labels`)."""
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(n * len(idx) / len(labels)))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def fit_domain(network: nn.Module, metadata: ArtifactMetadata, *, fit_images: Sequence[np.ndarray],
               fit_labels: Sequence[int], candidate_images: Sequence[np.ndarray], candidate_labels: Sequence[int],
               settings: CalibrationSettings = CalibrationSettings()) -> ValidityDomain:
    """The calibrated validity domain of `network` (as shipped: fp16 round trip already applied)."""
    pre, di, threshold = metadata.preprocess, metadata.defective_index, metadata.recommended_threshold
    with timed(f"scoring {len(fit_images)} training images"):
        fit_scores = score_images(network, pre, fit_images, defective_index=di)
    novelty, shrinkage = fit_novelty(fit_scores.features, fit_labels)
    fit_scores = fit_scores.with_novelty(novelty)
    with timed("near-copy grouping"):
        fit_thumbs = np.stack([nearcopy.thumbnail(img) for img in fit_images])
        keep, counts = _calibration_set(fit_thumbs, candidate_images, candidate_labels, settings=settings)
    if len(keep) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"only {len(keep)} calibration images are not near-copies of a training image; "
                               f"need at least {MIN_CALIBRATION_IMAGES}")
    images = [candidate_images[i] for i in keep]
    is_defect = np.array([candidate_labels[i] == di for i in keep])
    with timed(f"scoring {len(images)} calibration images and their mild variations"):
        nominal = score_images(network, pre, images, defective_index=di, novelty=novelty)
        mild = {name: score_images(network, pre, _perturbed(images, fn, value, seed=settings.seed, salt=1000 + k),
                                   defective_index=di, novelty=novelty)
                for k, (name, fn, value) in enumerate(MILD)}
    keep_set = merge_measures(fit_scores.measures, nominal.measures, *(s.measures for s in mild.values()))
    # Widened by a share of the natural spread (unperturbed calibration images), not of the union.
    keep_bound = spread_limits(keep_set, pad=settings.keep_pad, spread_from=nominal.measures)
    keep_bound["novelty"] = spread_limits(merge_measures(nominal.measures, *(s.measures for s in mild.values())),
                                          pad=settings.novelty_pad, spread_from=nominal.measures)["novelty"]
    sample = _sample(is_defect.astype(int), settings.sweep_images, settings.seed)
    sample_baseline = Scores(nominal.p_defect[sample], nominal.features[sample], {})
    baseline_errors = sum(_errors(sample_baseline, is_defect[sample], threshold))
    sweeps = {}
    with timed(f"perturbation sweeps on {len(sample)} images"):
        for k, axis in enumerate(AXES):
            sweeps[axis.name] = _sweep(axis, network, metadata, images=[images[i] for i in sample],
                                       is_defect=is_defect[sample], novelty=novelty, settings=settings, salt=k,
                                       baseline_errors=baseline_errors)
    limits, derivation = _limits(sweeps, keep_bound)
    rows = [_row(AXES[k], sweeps[AXES[k].name], limits, derivation=derivation) for k in range(len(AXES))]
    reference = reference_stats(nominal.measures, nominal.p_defect)
    boundaries = _drift_boundaries(sweeps, reference)
    mild_rows = []
    for name, s in mild.items():
        esc, fr = _errors(s, is_defect, threshold)
        mild_rows.append({"perturbation": name, "images": len(images), "escapes": esc, "false_rejects": fr,
                          "image_check": int(outside_mask(limits, s.measures).sum())})
    nominal_esc, nominal_fr = _errors(nominal, is_defect, threshold)
    method = {"calibrated": True, **asdict(settings), **counts, "sweep_sample": int(len(sample)),
              "fit_images": len(fit_images), "shrinkage": shrinkage, "threshold": threshold,
              "nominal_errors": {"escapes": nominal_esc, "false_rejects": nominal_fr},
              "nominal_image_check": int(outside_mask(limits, nominal.measures).sum()),
              "mild": mild_rows, "fitted_utc": _now(),
              "rule": (f"failure boundary: mildest severity with > {100 * settings.max_error_rate:g}% of images "
                       f"misjudged; limit: median measure {100 * settings.margin:g}% of the way back toward "
                       f"nominal, never inside the training/calibration/mild range (+{settings.keep_pad:g} x "
                       f"p01..p99 spread); novelty: calibration + mild range + {settings.novelty_pad:g} x spread")}
    return ValidityDomain(limits=limits, novelty=novelty, reference=reference, calibration=rows, method=method,
                          drift_boundaries=boundaries)


def _sweep(axis: Axis, network: nn.Module, metadata: ArtifactMetadata, *, images: list[np.ndarray],
           is_defect: np.ndarray, novelty: NoveltyModel, settings: CalibrationSettings, salt: int,
           baseline_errors: int) -> dict[str, Any]:
    """Score `images` at the axis's severities up to one level past the failure boundary (errors beyond
    the model's own `baseline_errors` on the unperturbed images), then at the limit severity `margin`
    of the way back."""
    pre, di, t = metadata.preprocess, metadata.defective_index, metadata.recommended_threshold
    levels: list[dict[str, Any]] = []
    failure = None
    for value in axis.levels:
        s = score_images(network, pre, _perturbed(images, axis.apply, value, seed=settings.seed, salt=salt),
                         defective_index=di, novelty=novelty)
        esc, fr = _errors(s, is_defect, t)
        levels.append({"severity": value, "escapes": esc, "false_rejects": fr, "scores": s})
        if failure is not None:
            break  # one level past the boundary is enough to see the gate work there
        if (esc + fr) > baseline_errors + settings.max_error_rate * len(images):
            failure = value
    out: dict[str, Any] = {"levels": levels, "failure": failure, "n": len(images), "is_defect": is_defect,
                           "threshold": t}
    if failure is not None:
        at = axis.toward(failure, 1.0 - settings.margin)
        out["limit_severity"] = at
        perturbed = _perturbed(images, axis.apply, at, seed=settings.seed, salt=salt)
        out["limit_scores"] = score_images(network, pre, perturbed, defective_index=di, novelty=novelty)
    log.info("axis %s: failure boundary %s", axis.name, "none in the tested range" if failure is None else failure)
    return out


def _limits(sweeps: dict[str, dict[str, Any]], keep_bound: dict[str, dict[str, float]]
            ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Final limits: per (measure, side) the tightest calibrated value over the axes it guards, held at the
    keep bound when it would cut into it. `derivation` says which rule set each limit."""
    limits = {m: dict(sides) for m, sides in keep_bound.items()}
    derivation = {f"{m}_{s}": "training/mild range" for m in ALL_MEASURES for s in LIMIT_SIDES[m]}
    for axis in AXES:
        sw = sweeps[axis.name]
        if sw["failure"] is None:
            continue
        for measure, side in axis.guards:
            value = float(np.median(sw["limit_scores"].measures[measure]))
            lo, hi = RANGE[measure]
            value = min(max(value, lo), hi)
            key = f"{measure}_{side}"
            current = limits[measure][side]
            keep = keep_bound[measure][side]
            tighter = value > current if side == "min" else value < current
            if not tighter:
                continue
            inside_keep = value > keep if side == "min" else value < keep
            if inside_keep:
                derivation[key] = f"held at the training/mild range ({axis.name} fails inside it)"
                continue
            limits[measure][side] = value
            derivation[key] = f"calibrated on {axis.name}"
    return limits, derivation


def _drift_boundaries(sweeps: dict[str, dict[str, Any]], reference: dict[str, dict[str, float]]
                      ) -> dict[str, dict[str, float]]:
    """Per measure and side, the median value at the nearest failure boundary: where a systematic shift of
    the rolling mean (a camera moved, a lamp ageing) makes the model start to fail, even while single
    frames stay inside the natural spread. Image measures take their guarding axes; novelty takes every
    axis whose failure moves it upward."""
    found: dict[str, dict[str, float]] = {}

    def keep_nearest(measure: str, side: str, value: float) -> None:
        ref = reference[measure]["mean"]
        if (side == "min" and value >= ref) or (side == "max" and value <= ref):
            return
        current = found.setdefault(measure, {}).get(side)
        if current is None or abs(value - ref) < abs(current - ref):
            found[measure][side] = float(value)

    for axis in AXES:
        sw = sweeps[axis.name]
        if sw["failure"] is None:
            continue
        at_failure = next(lv for lv in sw["levels"] if lv["severity"] == sw["failure"])["scores"]
        for measure, side in axis.guards:
            keep_nearest(measure, side, float(np.median(at_failure.measures[measure])))
        keep_nearest("novelty", "max", float(np.median(at_failure.measures["novelty"])))
    return found


def _row(axis: Axis, sw: dict[str, Any], limits: dict[str, dict[str, float]], *,
         derivation: dict[str, str]) -> dict[str, Any]:
    """One line of the calibration table, with the per-level sweep kept for the model card."""
    is_defect = sw["is_defect"]
    levels = []
    errors = passed = 0
    for lv in sw["levels"]:
        s: Scores = lv["scores"]
        gated = outside_mask(limits, s.measures)
        reject = s.p_defect >= sw["threshold"]
        wrong = (is_defect & ~reject) | (~is_defect & reject)
        errors += int(wrong.sum())
        passed += int(np.sum(wrong & ~gated))
        levels.append({"severity": lv["severity"], "escapes": lv["escapes"], "false_rejects": lv["false_rejects"],
                       "image_check": int(gated.sum()), "errors_passed_by_gate": int(np.sum(wrong & ~gated)),
                       "escapes_passed_by_gate": int(np.sum(is_defect & ~reject & ~gated))})
    at_fail = next((lv for lv in levels if lv["severity"] == sw["failure"]), None)
    return {"axis": axis.name, "what": axis.what, "images": sw["n"],
            "failure_severity": sw["failure"], "limit_severity": sw.get("limit_severity"),
            "failure_escapes": at_fail["escapes"] if at_fail else None,
            "failure_false_rejects": at_fail["false_rejects"] if at_fail else None,
            "check": ", ".join(f"{m}_{s}" for m, s in axis.guards) or "novelty only",
            "limits": {f"{m}_{s}": limits[m][s] for m, s in axis.guards},
            "limit_rule": {f"{m}_{s}": derivation[f"{m}_{s}"] for m, s in axis.guards},
            "caught_at_failure": at_fail["image_check"] / sw["n"] if at_fail else None,
            "errors": errors, "errors_passed_by_gate": passed, "levels": levels}


def domain_for_split(network: nn.Module, metadata: ArtifactMetadata, *, data: Path,
                     settings: CalibrationSettings = CalibrationSettings()) -> ValidityDomain:
    """Recover the model's training split from its metadata (seed, validation fraction; the recorded
    validation fingerprint must match) and fit the domain on it: the novelty fit and the kept spread on
    the training part, calibration on the validation part."""
    from types import SimpleNamespace

    from training import data as tdata
    from training.engine import prepare_data

    split = metadata.training.get("split") or {}
    if "seed" not in split or "val_fraction" not in split:
        raise CalibrationError("the model's metadata records no training split (seed, val_fraction): "
                               "cannot tell its training images from held-out ones")
    prepared = prepare_data(SimpleNamespace(data=str(data), seed=int(split["seed"]),
                                            val_fraction=float(split["val_fraction"])))
    recorded = split.get("val_fingerprint")
    if recorded and prepared["split"]["val_fingerprint"] != recorded:
        found = prepared["split"]["val_fingerprint"]
        raise CalibrationError(f"the split recovered from {data} (seed {split['seed']}, val fraction "
                               f"{split['val_fraction']}) is not the one the model was trained with: validation "
                               f"fingerprint {found[:12]}..., recorded {recorded[:12]}...")
    samples, labels = prepared["samples"], prepared["labels"]
    with timed(f"decoding {len(samples)} training-folder images"):
        images = tdata.decode_gray([s.path for s in samples])
    return fit_or_spread(network, metadata, fit_images=[images[i] for i in prepared["train_idx"]],
                         fit_labels=[labels[i] for i in prepared["train_idx"]],
                         candidate_images=[images[i] for i in prepared["val_idx"]],
                         candidate_labels=[labels[i] for i in prepared["val_idx"]], settings=settings)


def fit_or_spread(network: nn.Module, metadata: ArtifactMetadata, *, fit_images: Sequence[np.ndarray],
                  fit_labels: Sequence[int], candidate_images: Sequence[np.ndarray], candidate_labels: Sequence[int],
                  settings: CalibrationSettings = CalibrationSettings()) -> ValidityDomain:
    """`fit_domain`, or, when too few held-out images are not near-copies of training images (tiny data
    sets), limits from the spread of all images, marked uncalibrated and warned about."""
    try:
        return fit_domain(network, metadata, fit_images=fit_images, fit_labels=fit_labels,
                          candidate_images=candidate_images, candidate_labels=candidate_labels, settings=settings)
    except CalibrationError as exc:
        log.warning("validity domain NOT calibrated: %s; limits come from the spread of the %d images "
                    "(the station warns at every start)", exc, len(fit_images) + len(candidate_images))
        from training.validity import spread_domain

        return spread_domain(network, metadata.preprocess, [*fit_images, *candidate_images],
                             labels=[*fit_labels, *candidate_labels], defective_index=metadata.defective_index,
                             training_images=len(fit_images))
