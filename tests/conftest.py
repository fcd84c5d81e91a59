"""Shared test fixtures: thread-leak guard, tiny untrained models, labelled frame folders, component checks.

Real components only: the simulated PLC is pymodbus's own server on 127.0.0.1, logs are real SQLite
files, frames are real image files. `require_component` skips a test outside CI when a component
(socat, Aravis, ...) is missing, and fails it when CI=true.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_component(available: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a real component the test needs is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing; CI must provide it (see .ci/run)")
    pytest.skip(f"{what} is not installed here")


def casting_data_dir() -> Path:
    return Path(os.environ.get("CASTING_DATA_DIR", REPO.parent / "shared" / "data" / "casting"))


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every test must stop every thread it started (DESIGN.md: no thread outlives the station)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    names = sorted(t.name for t in extra)
    pytest.fail(f"threads left running after the test: {names}")


def make_tiny_model(path: Path, *, threshold: float = 0.5, input_size: int = 64, seed: int = 0) -> Path:
    """An untrained TinyNet artifact: real file format, real loading path, meaningless verdicts."""
    import torch

    from station.artifact import ArtifactMetadata, TinyNet, save_artifact
    from station.preprocess import Preprocess

    torch.manual_seed(seed)
    model = TinyNet(2).eval()
    meta = ArtifactMetadata(architecture="tinynet", class_names=("def_front", "ok_front"),
                            defective_class="def_front", preprocess=Preprocess(input_size=input_size),
                            recommended_threshold=threshold, model_name="tiny-test")
    save_artifact(path, model, meta)
    return path


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny.pt")


def make_frames(folder: Path, *, defective: int, ok: int, size: int = 96, seed: int = 0) -> Path:
    """Labelled frames rendered by the station's own renderer (never casting images)."""
    from station.cameras.synthetic import render_impeller

    rng = np.random.default_rng(seed)
    for label, count, is_def in (("def_front", defective, True), ("ok_front", ok, False)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(render_impeller(rng, size, defective=is_def)).save(folder / label / f"{label}_{i:04d}.png")
    return folder


@pytest.fixture
def sim_plc():
    from station.actuators.sim_server import start_sim_server

    plc = start_sim_server("127.0.0.1", 0)
    yield plc
    plc.stop()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
