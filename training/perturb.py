"""Camera and lighting faults, simulated on camera frames at increasing severity.

Each `Axis` is one way a station's picture goes wrong (a dimmed or over-driven lamp, a black-level
shift, haze on the lens, defocus, sensor noise, the camera moved closer or farther or sideways, an
object in front of the lens, heavy JPEG compression), with a nominal value, a grid of severities from
barely noticeable to gross, and the image checks expected to guard it. `MILD` is the variation a plant
sees on a good day (lamp drift of a fifth either way, any rotation of the part, slight blur, sensor
noise, JPEG), which must stay inside the validity domain; `SEVERE` are the faults that must never
produce an `ok`. Frames are uint8 grey HxW arrays; calibration and the tests share these functions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

Perturb = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _clip(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def background(a: np.ndarray) -> int:
    """The background grey: median of the frame's border pixels."""
    return int(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))


def scale(a: np.ndarray, s: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Lamp brightness (or exposure time / gain) times s."""
    return _clip(a.astype(np.float32) * s)


def offset(a: np.ndarray, o: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Black level / stray light: o grey levels added (negative: a darker black level), clipped."""
    return _clip(a.astype(np.float32) + o)


def haze(a: np.ndarray, c: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Veiling glare or a fogged lens: contrast around the mean multiplied by c (< 1)."""
    f = a.astype(np.float32)
    m = float(f.mean())
    return _clip(m + c * (f - m))


def blur(a: np.ndarray, sigma_px: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Defocus: Gaussian blur of sigma_px camera pixels."""
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma_px)))


def noise(a: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: Gaussian, sigma grey levels (a high gain, a failing sensor)."""
    return _clip(a.astype(np.float32) + rng.normal(0.0, sigma, a.shape).astype(np.float32))


def zoom(a: np.ndarray, z: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Camera moved closer (z > 1: the centre 1/z of the view fills the frame) or farther (z < 1:
    the view shrinks, the new border is the background grey)."""
    h, w = a.shape
    im = Image.fromarray(a)
    if z >= 1.0:
        cw, ch = w / z, h / z
        x0, y0 = (w - cw) / 2, (h - ch) / 2
        return np.asarray(im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))
    small = im.resize((max(1, round(w * z)), max(1, round(h * z))), Image.BILINEAR)
    out = Image.new("L", (w, h), background(a))
    out.paste(small, ((w - small.size[0]) // 2, (h - small.size[1]) // 2))
    return np.asarray(out)


def shift(a: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """The part off centre by f of the frame width, in a random direction; the revealed border is the
    mirrored background (more belt), not a flat strip."""
    h, w = a.shape
    angle = rng.uniform(0.0, 2.0 * np.pi)
    dx, dy = int(round(f * w * np.cos(angle))), int(round(f * h * np.sin(angle)))
    pad = max(abs(dx), abs(dy), 1)
    padded = np.pad(a, pad, mode="reflect")
    return padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w].copy()


def occlusion(a: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """Something dark in front of the lens (a cover, a hand, a bracket) over f of the frame, from a random side."""
    out = a.copy()
    h, w = a.shape
    side = int(rng.integers(4))
    if side == 0:
        out[:, :round(f * w)] = 0
    elif side == 1:
        out[:, w - round(f * w):] = 0
    elif side == 2:
        out[:round(f * h), :] = 0
    else:
        out[h - round(f * h):, :] = 0
    return out


def jpeg(a: np.ndarray, quality: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """JPEG compression at `quality` (a camera or frame grabber set to save bandwidth)."""
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L"))


def rotate(a: np.ndarray, degrees: float, _rng: np.random.Generator | None = None) -> np.ndarray:
    """The part turned on the belt; the exposed corners take the background grey (as in training)."""
    return np.asarray(Image.fromarray(a).rotate(degrees, resample=Image.BILINEAR, fillcolor=background(a)))


@dataclass(frozen=True)
class Axis:
    """One fault direction: severities run from `nominal` (no fault) through `levels` (ever worse)."""

    name: str
    what: str
    nominal: float
    levels: tuple[float, ...]
    apply: Perturb
    guards: tuple[tuple[str, str], ...]   # (measure, side) expected to catch it
    multiplicative: bool = False          # interpolate severities on a log scale

    def toward(self, boundary: float, fraction: float) -> float:
        """The severity `fraction` of the way from nominal to `boundary`."""
        if self.multiplicative:
            return float(np.exp(np.log(self.nominal) + fraction * (np.log(boundary) - np.log(self.nominal))))
        return float(self.nominal + fraction * (boundary - self.nominal))


AXES: tuple[Axis, ...] = (
    Axis("lamp_dim", "lamp brightness x", 1.0, (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1), scale,
         (("brightness", "min"), ("contrast", "min")), multiplicative=True),
    Axis("lamp_bright", "lamp brightness x", 1.0, (1.1, 1.2, 1.3, 1.4, 1.5, 1.7, 2.0, 2.5, 3.0), scale,
         (("brightness", "max"), ("bright_clip", "max")), multiplicative=True),
    Axis("stray_light", "grey levels added", 0.0, (10, 20, 30, 40, 60, 80, 100, 130, 160), offset,
         (("brightness", "max"), ("bright_clip", "max"))),
    Axis("black_level", "grey levels added", 0.0, (-10, -20, -30, -40, -60, -80, -100, -130), offset,
         (("brightness", "min"), ("dark_clip", "max"))),
    Axis("haze", "contrast x", 1.0, (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2), haze,
         (("contrast", "min"),), multiplicative=True),
    Axis("defocus", "blur sigma px", 0.0, (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0), blur, (("focus", "min"),)),
    Axis("sensor_noise", "noise sigma", 0.0, (3, 6, 10, 15, 20, 30, 45, 60), noise, (("noise", "max"),)),
    Axis("camera_closer", "zoom x", 1.0, (1.03, 1.06, 1.1, 1.15, 1.2, 1.3, 1.5, 1.8), zoom,
         (("part_size", "max"),), multiplicative=True),
    Axis("camera_farther", "zoom x", 1.0, (0.97, 0.94, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5), zoom,
         (("part_size", "min"),), multiplicative=True),
    Axis("part_off_centre", "shift, frame share", 0.0, (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3), shift,
         (("part_offset", "max"),)),
    Axis("occlusion", "frame share covered", 0.0, (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6), occlusion,
         (("dark_clip", "max"),)),
    Axis("jpeg", "JPEG quality", 95.0, (70, 50, 30, 20, 10, 5), jpeg, ()),
)
AXES_BY_NAME = {a.name: a for a in AXES}

# Mild, realistic variation that must stay inside the domain: (name, function, severity or None = random).
MILD: tuple[tuple[str, Perturb, float | None], ...] = (
    ("lamp -20%", scale, 0.8),
    ("lamp +20%", scale, 1.2),
    ("any rotation", rotate, None),
    ("slight blur (sigma 0.7 px)", blur, 0.7),
    ("sensor noise (sigma 4)", noise, 4.0),
    ("JPEG quality 50", jpeg, 50.0),
)


def apply_mild(name: str, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for label, fn, value in MILD:
        if label == name:
            return fn(a, float(rng.uniform(0, 360)) if value is None else value, rng)
    raise KeyError(name)


def _uniform(level: int) -> Perturb:
    return lambda a, _v, _rng: np.full_like(a, level)


# Faults that must never give an `ok`: (name, function, severity).
SEVERE: tuple[tuple[str, Perturb, float], ...] = (
    ("black frame (lens covered)", _uniform(0), 0.0),
    ("white frame (lamp flash, sensor saturated)", _uniform(255), 0.0),
    ("uniform grey (no part, no focus)", _uniform(128), 0.0),
    ("strongly dimmed (lamp x0.15)", scale, 0.15),
    ("over-exposed (lamp x3)", scale, 3.0),
    ("strongly defocused (sigma 8 px)", blur, 8.0),
    ("camera much closer (zoom x1.5)", zoom, 1.5),
    ("part far off centre (shift 0.3)", shift, 0.3),
    ("half occluded", occlusion, 0.5),
)
