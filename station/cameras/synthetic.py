"""The `synthetic` camera: impeller-like top views rendered by the station itself, for the built-in demo.

No dataset and no hardware needed. Each frame is a top view of a cast impeller (machined ring,
dark vaned eye, bright hub) on a light table; a configurable share of parts gets a defect drawn on
it (blow holes, a chipped rim, a burr), and another share arrives as a broken buffer, the way a
camera glitch would, so the demo shows the fail-safe reject too. A `lens_cover` episode makes a run of
frames nearly black (a covered lens), which the validity gate must catch. These renders stand in for a camera in demos and benchmarks only; they are
not the casting images and the model was never trained on them, so the verdicts they get say
nothing about accuracy.
"""

from __future__ import annotations

import time

import numpy as np

from station.cameras.base import Camera, EndOfStream, Grab, Pacer
from station.config_cameras import SyntheticCameraConfig


def render_impeller(rng: np.random.Generator, size: int, *, defective: bool) -> np.ndarray:
    """Render one uint8 HxW frame: a machined ring around a dark vaned eye and a bright hub, lit from
    a random side, on a brushed table."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.normal(0, size * 0.015, 2)
    dx, dy = xx - c[0], yy - c[1]
    r = np.hypot(dx, dy) / (size / 2)
    ang = np.arctan2(dy, dx)
    light = rng.uniform(0, 2 * np.pi)
    # brushed light-grey table
    img = 185 + 10 * np.sin((xx + yy) * 0.9 + rng.uniform(0, 6)) * rng.uniform(0.2, 0.6) + 15 * (1 - yy / size)
    shade = np.cos(ang - light)
    ring = (r >= 0.55) & (r < 0.82)
    img[ring] = 175 + 45 * shade[ring] - 30 * (r[ring] - 0.55)
    lip = (r >= 0.50) & (r < 0.55)
    img[lip] = 215 + 20 * shade[lip]
    eye = (r >= 0.24) & (r < 0.50)
    vanes = np.cos(7 * (ang + 1.8 * r)) > 0.55
    img[eye] = 45 + 10 * shade[eye]
    img[eye & vanes] = 80 + 15 * shade[eye & vanes]
    hub = (r >= 0.15) & (r < 0.24)
    img[hub] = 200 + 30 * shade[hub]
    hole = r < 0.15
    img[hole] = 160 + 10 * shade[hole]
    edge_shadow = (r >= 0.82) & (r < 0.86)
    img[edge_shadow] = img[edge_shadow] * 0.75
    if defective:
        kind = rng.integers(0, 3)
        if kind == 0:      # blow holes / pinholes on the machined ring
            for _ in range(int(rng.integers(2, 7))):
                rr, aa = rng.uniform(0.58, 0.8), rng.uniform(0, 2 * np.pi)
                px, py = c[0] + rr * size / 2 * np.cos(aa), c[1] + rr * size / 2 * np.sin(aa)
                rad = rng.uniform(0.008, 0.022) * size
                img[np.hypot(xx - px, yy - py) < rad] = 40
        elif kind == 1:    # chipped rim
            a0 = rng.uniform(-np.pi, np.pi)
            d = np.angle(np.exp(1j * (ang - a0)))
            img[(np.abs(d) < rng.uniform(0.15, 0.35)) & (r > 0.7) & (r < 0.86)] = 190
        else:              # burr / flash on the outer edge
            a0 = rng.uniform(-np.pi, np.pi)
            d = np.angle(np.exp(1j * (ang - a0)))
            img[(np.abs(d) < rng.uniform(0.2, 0.5)) & (r >= 0.82) & (r < 0.93)] = 120
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def covered_lens(rng: np.random.Generator, size: int) -> np.ndarray:
    """What a camera sees through a lens cap: nearly black, a faint glow at one edge, sensor noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    glow = 6.0 * np.exp(-xx / (0.3 * size))
    return np.clip(3.0 + glow + rng.normal(0, 1.5, (size, size)), 0, 255).astype(np.uint8)


class SyntheticCamera(Camera):
    kind = "synthetic"

    def __init__(self, config: SyntheticCameraConfig) -> None:
        super().__init__()
        self.config = config
        self.rate = config.rate_parts_per_s
        self.paced_by_pipeline = self.rate is None
        self._rng = np.random.default_rng(config.seed)
        self._delivered = 0
        self._pacer = Pacer(self.rate)

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
        if self._rng.random() < self.config.broken_ratio:
            self._delivered += 1
            self.counters["frames"] += 1
            self.counters["bad_frames"] += 1
            return Grab(image=None, source=f"synthetic#{self._delivered}", t_capture_ns=t_ns,
                        error="simulated broken buffer (camera glitch)")
        defective = bool(self._rng.random() < self.config.defect_ratio)
        image = render_impeller(self._rng, self.config.size_px, defective=defective)
        self._delivered += 1
        self.counters["frames"] += 1
        meta = {"rendered_defect": defective}
        cover = self.config.lens_cover
        if cover is not None and cover.first_part <= self._delivered < cover.first_part + cover.parts:
            # The part is there (and may be defective) but the camera sees the inside of a lens cap.
            image = covered_lens(self._rng, self.config.size_px)
            meta["lens_covered"] = True
            self.counters["lens_covered"] += 1
        return Grab(image=image, source=f"synthetic#{self._delivered}", t_capture_ns=t_ns, meta=meta)

    def close(self) -> None:
        pass
