"""The `synthetic` camera: impeller-like top views rendered by the station itself, for the built-in demo.

No dataset and no hardware needed. Each frame is a grey cast disc with a hub, a bore and curved
vanes on a light background; a configurable share of parts gets a defect drawn on it (blow holes,
a chipped rim, a burr). These renders stand in for a camera in demos and benchmarks only; they are
not the casting images and the model was never trained on them, so the verdicts they get say
nothing about accuracy.
"""

from __future__ import annotations

import time

import numpy as np

from station.cameras.base import Camera, EndOfStream, Grab, Pacer
from station.config_cameras import SyntheticCameraConfig


def render_impeller(rng: np.random.Generator, size: int, *, defective: bool) -> np.ndarray:
    """Render one uint8 HxW frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.normal(0, size * 0.01, 2)
    dx, dy = xx - c[0], yy - c[1]
    r = np.hypot(dx, dy) / (size / 2)
    theta = np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)
    img = np.full((size, size), 205.0, np.float32)
    disc = r < 0.86
    img[disc] = 110 + 25 * r[disc]
    vanes = disc & (r > 0.32) & (np.cos(6 * (theta + 1.4 * r)) > 0.82)
    img[vanes] = 150
    img[(r > 0.18) & (r < 0.30)] = 135   # hub
    img[r < 0.12] = 60                     # bore
    img[(r > 0.83) & (r < 0.86)] = 170     # machined rim
    if defective:
        kind = rng.integers(0, 3)
        if kind == 0:      # blow holes
            for _ in range(int(rng.integers(2, 6))):
                rr, aa = rng.uniform(0.35, 0.8), rng.uniform(0, 2 * np.pi)
                px, py = c[0] + rr * size / 2 * np.cos(aa), c[1] + rr * size / 2 * np.sin(aa)
                rad = rng.uniform(0.012, 0.03) * size
                img[np.hypot(xx - px, yy - py) < rad] = 35
        elif kind == 1:    # chipped rim
            a0 = rng.uniform(-np.pi, np.pi)
            ang = np.angle(np.exp(1j * (np.arctan2(dy, dx) - a0)))
            img[(np.abs(ang) < rng.uniform(0.12, 0.3)) & (r > 0.7) & (r < 0.86)] = 205
        else:              # burr / flash on the edge
            a0 = rng.uniform(-np.pi, np.pi)
            ang = np.angle(np.exp(1j * (np.arctan2(dy, dx) - a0)))
            img[(np.abs(ang) < 0.25) & (r >= 0.86) & (r < 0.95)] = 120
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticCamera(Camera):
    kind = "synthetic"

    def __init__(self, config: SyntheticCameraConfig, *, rate_parts_per_s: float | None | str = "config") -> None:
        super().__init__()
        self.config = config
        self.rate = config.rate_parts_per_s if rate_parts_per_s == "config" else rate_parts_per_s
        self.paced_by_pipeline = self.rate is None
        self._rng = np.random.default_rng(config.seed)
        self._delivered = 0
        self._pacer = Pacer(self.rate)

    @property
    def expected_frames(self) -> int | None:
        return self.config.limit

    def describe(self) -> str:
        pace = "as fast as possible" if self.rate is None else f"{self.rate:g} parts/s"
        return f"synthetic impeller renderer ({pace})"

    def open(self) -> None:
        self._pacer.start()

    def grab(self, timeout_s: float) -> Grab | None:
        if self.config.limit is not None and self._delivered >= self.config.limit:
            raise EndOfStream
        if not self._pacer.wait(timeout_s):
            return None
        t_ns = time.monotonic_ns()
        defective = bool(self._rng.random() < self.config.defect_ratio)
        image = render_impeller(self._rng, self.config.size_px, defective=defective)
        self._delivered += 1
        self.counters["frames"] += 1
        return Grab(image=image, source=f"synthetic#{self._delivered}", t_capture_ns=t_ns,
                    meta={"rendered_defect": defective})

    def close(self) -> None:
        pass
