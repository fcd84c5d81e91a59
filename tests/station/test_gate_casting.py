"""The shipped model's validity gate on the real casting test images (the figures docs/validity-gate.md quotes).

Real components: the shipped artifact (format 2, gate fitted), the 715 test images read from
../shared/data/casting (never copied into the repository; perturbed copies live in pytest's tmp folder
only), the station's own scoring path (`Preprocess`, image checks, one forward pass for p_defect and the
pooled feature) run in batches, and one real Station run for the alarm. Required in CI (CI=true).
The figures per perturbation and per fault are printed (pytest -s shows them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import REPO, casting_data_dir, query, require_component, run_to_end, write_config

from station.artifact import load_artifact
from station.config_gate import GateLimits
from station.gate import Gate
from station.validity import failed_checks
from training import data as tdata
from training import perturb
from training.validity import score_images

SHIPPED_MODEL = REPO / "models" / "impeller-resnet18.pt"
MILD_SAMPLE = 150    # images per mild perturbation (stratified, seeded)
SEVERE_SAMPLE = 40   # images per severe fault


@pytest.fixture(scope="module")
def casting():
    require_component(SHIPPED_MODEL.is_file(), f"the shipped model {SHIPPED_MODEL}")
    test_dir = casting_data_dir() / "test"
    require_component(test_dir.is_dir(), f"the casting test split {test_dir}")
    artifact = load_artifact(SHIPPED_MODEL)
    assert artifact.validity is not None, "the shipped model carries its validity domain (format 2)"
    meta = artifact.metadata
    scan = tdata.scan_folder(test_dir, class_names=meta.class_names, verify_images=False)
    images = tdata.decode_gray([s.path for s in scan.samples])
    is_defect = np.asarray(scan.labels()) == meta.defective_index
    gate = Gate.build(artifact.validity, GateLimits())

    def verdicts(frames: list[np.ndarray]) -> dict:
        s = score_images(artifact.model, meta.preprocess, frames, defective_index=meta.defective_index,
                         novelty=artifact.validity.novelty)
        failed = [failed_checks(gate.limits, {k: float(v[i]) for k, v in s.measures.items()})
                  for i in range(len(frames))]
        return {"p_defect": s.p_defect, "failed": failed, "gated": np.array([bool(f) for f in failed])}

    return {"artifact": artifact, "images": images, "is_defect": is_defect, "verdicts": verdicts,
            "threshold": meta.recommended_threshold, "samples": scan.samples}


def _sample(is_defect: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = n // 2
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(is_defect), half, replace=False),
                                   rng.choice(np.flatnonzero(~is_defect), n - half, replace=False)]))


@pytest.mark.slow
def test_the_715_test_images_keep_their_verdicts_and_none_fails_the_gate(casting):
    v = casting["verdicts"](casting["images"])
    d, t = casting["is_defect"], casting["threshold"]
    reject = (v["p_defect"] >= t) | v["gated"]
    assert len(d) == 715
    assert int(v["gated"].sum()) == 0, [casting["samples"][i].path.name for i in np.flatnonzero(v["gated"])]
    assert int(np.sum(d & ~reject)) == 0 and int(np.sum(~d & reject)) == 0, "0 escapes, 0 false rejects"


@pytest.mark.slow
def test_mild_variation_stays_inside_the_domain(casting):
    """Lamp drift of a quarter either way, any rotation, slight blur, sensor noise, JPEG: at most 1 % image_check."""
    d, t = casting["is_defect"], casting["threshold"]
    idx = _sample(d, MILD_SAMPLE, seed=11)
    rng = np.random.default_rng(7)
    lines, over = [], []
    for name, _fn, _value in perturb.MILD:
        frames = [perturb.apply_mild(name, casting["images"][i], rng) for i in idx]
        v = casting["verdicts"](frames)
        gated = int(v["gated"].sum())
        reject = (v["p_defect"] >= t) | v["gated"]
        escapes, false_rejects = int(np.sum(d[idx] & ~reject)), int(np.sum(~d[idx] & reject))
        lines.append(f"{name:<28} image_check {gated:>3}/{len(idx)}  escapes {escapes}  false rejects {false_rejects}")
        if gated > 0.01 * len(idx):
            over.append(name)
    print("\nmild variation on the test split:\n" + "\n".join(lines))
    assert not over, f"more than 1 % image_check under mild variation: {over}\n" + "\n".join(lines)


@pytest.mark.slow
def test_severe_faults_never_give_an_ok(casting):
    """Black, white, uniform grey, strongly dimmed, over-exposed, strongly defocused, much closer, far off
    centre, half occluded: no part passes, and the gate itself rejects them (so the alarm can rise)."""
    d = casting["is_defect"]
    idx = _sample(d, SEVERE_SAMPLE, seed=12)
    rng = np.random.default_rng(8)
    lines, passed, ungated = [], [], []
    for name, fn, value in perturb.SEVERE:
        frames = [fn(casting["images"][i], value, rng) for i in idx]
        v = casting["verdicts"](frames)
        ok = int(np.sum((v["p_defect"] < casting["threshold"]) & ~v["gated"]))
        checks = sorted({c for f in v["failed"] for c in f})
        lines.append(f"{name:<44} image_check {int(v['gated'].sum()):>2}/{len(idx)}  ok {ok}  ({', '.join(checks)})")
        if ok:
            passed.append(name)
        if v["gated"].mean() < 0.9:
            ungated.append(name)
    print("\nsevere faults on the test split:\n" + "\n".join(lines))
    assert not passed, f"a part passed under a severe fault: {passed}\n" + "\n".join(lines)
    assert not ungated, f"the gate let 10 % or more through: {ungated}\n" + "\n".join(lines)


@pytest.mark.slow
def test_a_failed_lamp_raises_the_image_quality_alarm_in_a_station_run(casting, tmp_path):
    """Real test images, then the same parts under a lamp at 15 %, then good light again, through the station."""
    d = casting["is_defect"]
    idx = _sample(d, 24, seed=13)
    folder = tmp_path / "frames"
    for n, i in enumerate(idx):
        label = "def_front" if d[i] else "ok_front"
        (folder / label).mkdir(parents=True, exist_ok=True)
        image = casting["images"][i]
        if 8 <= n < 16:
            image = perturb.scale(image, 0.15)
        Image.fromarray(image).save(folder / label / f"{n:03d}.png")
    cfg = load(tmp_path, folder)
    station, summary = run_to_end(cfg, timeout_s=180)
    db = tmp_path / "log" / "trace.sqlite"
    rows = query(db, "SELECT source, decision, reason, gate_failed, label FROM parts ORDER BY seq")
    dark = {f"{n:03d}.png" for n in range(8, 16)}
    for r in rows:
        name = Path(r["source"]).name
        if name in dark:
            assert r["reason"] == "image_check" and r["decision"] == "reject" and "brightness_min" in r["gate_failed"]
        else:
            assert r["reason"] == "model" and r["decision"] == ("reject" if r["label"] == "defective" else "ok")
    assert summary["escapes"] == 0 and summary["fail_safe"] == {"image_check": 8}
    alarms = query(db, "SELECT message FROM events WHERE kind = 'alarm' AND message LIKE 'image_quality%'")
    assert len(alarms) == 1 and summary["gate"]["image_quality_raised"] == 1


def load(tmp_path: Path, folder: Path, *, extra: str = "gate: {alarm: {k: 4, n: 8}}\n"):
    from station.configfile import load_config

    return load_config(write_config(tmp_path / "s.yaml", f"""
camera: {{kind: replay, path: {folder}, rate_parts_per_s: null, order: sorted}}
model: {{path: {SHIPPED_MODEL}, device: cpu, warmup_runs: 0, backend: onnxruntime}}
decision: {{deadline_ms: 2000}}
reject: {{delay_ms: 2500, pulse_ms: 5, actuator: {{kind: log}}}}
tracelog: {{dir: log, images: none}}
""" + extra))


@pytest.mark.slow
def test_a_camera_moved_five_percent_closer_passes_single_frames_but_raises_drift(casting, tmp_path):
    """5 % closer is inside the natural spread of part sizes, so single frames pass the gate, but the
    rolling mean of part_size crosses half the way to the calibrated failure boundary: a drift warning."""
    d = casting["is_defect"]
    folder = tmp_path / "frames"
    for n, i in enumerate(_sample(d, 40, seed=14)):
        label = "def_front" if d[i] else "ok_front"
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(perturb.zoom(casting["images"][i], 1.05)).save(folder / label / f"{n:03d}.png")
    cfg = load(tmp_path, folder, extra="gate: {drift: {window_parts: 30}, alarm: {k: 4, n: 8}}\n")
    _, summary = run_to_end(cfg, timeout_s=180)
    db = tmp_path / "log" / "trace.sqlite"
    drift = query(db, "SELECT message FROM events WHERE kind = 'drift' AND message LIKE 'part_size%'")
    assert drift and "where the model starts to misjudge parts" in drift[0]["message"], drift
    assert summary["fail_safe"].get("image_check", 0) <= 2, "single frames stay inside the per-frame limits"
    assert summary["gate"]["image_quality_raised"] == 0
