"""Cheap image measurements for the validity gate, taken on the very pixels the model sees.

`ImageChecks.measure` reads the model-input image (uint8 grey, the artifact's input size, e.g. 160 x
160: the frame after the preprocessing resize, before normalisation) and returns one number per check:
brightness (mean grey level), contrast (grey-level standard deviation), the clipped-dark and clipped-
bright shares, a focus measure (edge steepness at full over half resolution), a sensor-noise estimate
and the part's position and apparent size. Measuring the model's input rather than the camera frame
makes the checks cost the same at any camera resolution (the resize is already paid for by inference)
and ties the limits to what the model was validated on. Everything is vectorised numpy on a 2 x 2
block-averaged copy where resolution does not matter; about 0.15 ms per frame on one core.
"""

from __future__ import annotations

import math

import numpy as np

# Measures, in the order the trace log and the tables list them. "novelty" is added by the classifier
# (the distance of the network's pooled feature to the training images, `station.validity`).
MEASURES = ("brightness", "contrast", "dark_clip", "bright_clip", "focus", "noise", "part_offset", "part_size")
ALL_MEASURES = (*MEASURES, "novelty")

DARK_LEVEL = 5      # grey levels at or below this count as clipped dark (a covered lens, a dead lamp)
BRIGHT_LEVEL = 250  # at or above: clipped bright (over-exposure)
# The casting's eye (the dark vaned centre of a top view) is its most contrasted structure: pixels
# darker than this share of the median grey level are taken as the part's silhouette.
EYE_LEVEL = 0.4
EDGE_SHARE = 0.02   # focus: the strongest 2 % of gradients are the part's edges
NO_PART_OFFSET = math.sqrt(0.5)  # part_offset when no silhouette is found: a corner, beyond any limit
_add = np.add.reduce


class _Buffers:
    """Work arrays for one image size, reused frame after frame: no allocation, no page faults, and the
    same memory stays warm in the cache (on this station's CPU a frame measured with fresh arrays after
    the core idled cost three times as much)."""

    def __init__(self, h: int, w: int) -> None:
        h2, w2 = h // 2, w // 2
        self.f = np.empty((h, w), np.float32)
        self.square = np.empty((h, w), np.float32)
        self.clip = np.empty((h, w), np.bool_)
        self.b = np.empty((h2, w2), np.float32)
        self.b8 = np.empty((h2, w2), np.uint8)
        self.eye = np.empty((h2, w2), np.bool_)
        self.grad = {(h2 * 2, w2 * 2): _GradientBuffers(h2 * 2, w2 * 2), (h2, w2): _GradientBuffers(h2, w2)}
        self.d2x = np.empty((h2, w2 - 2), np.float32)
        self.d2 = np.empty((h2 - 2, w2 - 2), np.float32)
        self.cx = (np.arange(w2, dtype=np.float64) + 0.5) / w2
        self.cy = (np.arange(h2, dtype=np.float64) + 0.5) / h2


class _GradientBuffers:
    def __init__(self, h: int, w: int) -> None:
        self.gx = np.empty((h - 2, w - 2), np.float32)
        self.gy = np.empty((h - 2, w - 2), np.float32)
        self.strong = np.empty((h - 2) * (w - 2), np.bool_)


class ImageChecks:
    """Measures model-input images; keeps its work arrays between frames (one set per image size), so one
    instance serves one thread at a time (each Classifier has its own, used by its inference worker)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], _Buffers] = {}

    def measure(self, pixels: np.ndarray) -> dict[str, float]:
        """Every measure of `pixels` (uint8 HxW grey, or HxWx3 whose channel mean is used)."""
        if pixels.ndim == 3:
            pixels = pixels.mean(axis=2).astype(np.uint8)
        buf = self._buffers.get(pixels.shape)
        if buf is None:
            buf = self._buffers[pixels.shape] = _Buffers(*pixels.shape)
        n = pixels.size
        f = buf.f
        np.copyto(f, pixels, casting="unsafe")
        # np.add.reduce(...) / n is what ndarray.mean computes (the same float32 pairwise sum, the same
        # float32 division), without mean()'s Python-level argument handling: a hot path.
        mean = float(_add(f, axis=None) / n)
        var = max(0.0, float(_add(np.square(f, out=buf.square), axis=None) / n) - mean * mean)
        # 2 x 2 block means: averaging halves the sensor noise before the noise and silhouette measures.
        h2, w2 = buf.b.shape
        f = f[:h2 * 2, :w2 * 2]
        b = np.add(f[0::2, 0::2], f[1::2, 0::2], out=buf.b)
        b += f[0::2, 1::2]
        b += f[1::2, 1::2]
        b *= 0.25
        np.copyto(buf.b8, b, casting="unsafe")
        median = float(np.bincount(buf.b8.ravel(), minlength=256).cumsum().searchsorted(b.size / 2))
        return {
            "brightness": mean,
            "contrast": math.sqrt(var),
            "dark_clip": np.count_nonzero(np.less_equal(pixels, DARK_LEVEL, out=buf.clip)) / n,
            "bright_clip": np.count_nonzero(np.greater_equal(pixels, BRIGHT_LEVEL, out=buf.clip)) / n,
            "focus": _edge_strength(f, buf.grad[f.shape]) / max(_edge_strength(b, buf.grad[b.shape]), 1e-6),
            "noise": _noise(b, buf),
            **_part(b, buf, median=median),
        }


def _part(b: np.ndarray, buf: _Buffers, *, median: float) -> dict[str, float]:
    """Centre offset (share of the frame width from the frame centre) and apparent size (equivalent
    diameter of the dark silhouette, share of the frame width) of the part."""
    mask = np.less(b, EYE_LEVEL * median, out=buf.eye)
    count = int(np.count_nonzero(mask))
    if count == 0:
        return {"part_offset": NO_PART_OFFSET, "part_size": 0.0}
    cx = float(_add(mask, axis=0) @ buf.cx) / count
    cy = float(_add(mask, axis=1) @ buf.cy) / count
    return {"part_offset": math.hypot(cx - 0.5, cy - 0.5),
            "part_size": 2.0 * math.sqrt(count / mask.size / math.pi)}


def _edge_strength(img: np.ndarray, buf: _GradientBuffers) -> float:
    """RMS of the strongest 2 % of central-difference gradients: the part's edges, not its flat areas."""
    gx = np.subtract(img[1:-1, 2:], img[1:-1, :-2], out=buf.gx)
    gy = np.subtract(img[2:, 1:-1], img[:-2, 1:-1], out=buf.gy)
    np.multiply(gx, gx, out=gx)
    np.multiply(gy, gy, out=gy)
    gx += gy
    mag2 = gx.ravel()
    k = max(1, int(mag2.size * EDGE_SHARE))
    # The exact top k without partitioning every pixel: a strided sample gives a threshold safely below the
    # k-th largest value (its 95th percentile), then only the few pixels above it are partitioned.
    sample = mag2[::7]
    j = int(sample.size * 0.95)
    floor = float(np.partition(sample, j)[j])
    strong = mag2[np.greater_equal(mag2, floor, out=buf.strong)]
    if strong.size < k:
        strong = mag2
    top = np.partition(strong, strong.size - k)[strong.size - k:]
    return math.sqrt(float(_add(top, axis=None) / top.size))


# focus = _edge_strength(model-input pixels) / _edge_strength(2 x 2 block average): how much steeper the
# part's edges are at full resolution than at half. A sharp edge is about as steep per pixel at both
# scales (ratio near 1); an edge blurred over several pixels is only half as steep per fine pixel (ratio
# toward 0.5). As a ratio it does not move with lamp brightness or contrast, and sensor noise barely
# moves it, because the strongest 2 % of gradients are the part's edges (measured on the casting test
# images: unchanged up to noise sigma 10), unlike the variance of the Laplacian, which noise inflates.


def _noise(b: np.ndarray, buf: _Buffers) -> float:
    """Sensor-noise standard deviation in grey levels (Immerkaer's operator, made robust to edges).

    The separable second difference [1 -2 1] x [1 -2 1] cancels flat areas and straight ramps; on pure
    Gaussian noise of sigma s its output is Gaussian with standard deviation 6 s. Edges only add large
    outputs, so the estimate uses the smaller half: for a Gaussian, the mean absolute value below the
    median is 0.3248 x its standard deviation. (The median itself would move in coarse quantised steps on
    8-bit images.) The block averaging halved the noise: the result is doubled to report the noise of the
    model-input pixels.
    """
    d2x = np.multiply(b[:, 1:-1], 2.0, out=buf.d2x)
    np.subtract(b[:, :-2], d2x, out=d2x)
    d2x += b[:, 2:]
    d2 = np.multiply(d2x[1:-1], 2.0, out=buf.d2)
    np.subtract(d2x[:-2], d2, out=d2)
    d2 += d2x[2:]
    flat = np.abs(d2, out=d2).ravel()
    m = flat.size // 2
    lower = np.partition(flat, m)[:m]
    return 2.0 * float(_add(lower, axis=None) / m) / (0.3248 * 6.0)
