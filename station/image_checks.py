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


class ImageChecks:
    """Measures one model-input image; keeps its small lookup tables between frames."""

    def __init__(self) -> None:
        self._coords: dict[int, np.ndarray] = {}

    def _centres(self, n: int) -> np.ndarray:
        coords = self._coords.get(n)
        if coords is None:
            coords = self._coords[n] = (np.arange(n, dtype=np.float64) + 0.5) / n
        return coords

    def measure(self, pixels: np.ndarray) -> dict[str, float]:
        """Every measure of `pixels` (uint8 HxW grey, or HxWx3 whose channel mean is used)."""
        if pixels.ndim == 3:
            pixels = pixels.mean(axis=2).astype(np.uint8)
        n = pixels.size
        f = pixels.astype(np.float32)
        mean = float(f.mean())
        var = max(0.0, float(np.square(f).mean()) - mean * mean)
        # 2 x 2 block means: averaging halves the sensor noise before the noise and silhouette measures.
        h2, w2 = pixels.shape[0] // 2, pixels.shape[1] // 2
        f = f[:h2 * 2, :w2 * 2]
        b = (f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2]) * 0.25
        median = float(np.bincount(b.astype(np.uint8).ravel(), minlength=256).cumsum().searchsorted(b.size / 2))
        return {
            "brightness": mean,
            "contrast": math.sqrt(var),
            "dark_clip": np.count_nonzero(pixels <= DARK_LEVEL) / n,
            "bright_clip": np.count_nonzero(pixels >= BRIGHT_LEVEL) / n,
            "focus": _edge_strength(f) / max(_edge_strength(b), 1e-6),
            "noise": _noise(b),
            **self._part(b, median=median),
        }

    def _part(self, b: np.ndarray, *, median: float) -> dict[str, float]:
        """Centre offset (share of the frame width from the frame centre) and apparent size (equivalent
        diameter of the dark silhouette, share of the frame width) of the part."""
        mask = b < EYE_LEVEL * median
        count = int(np.count_nonzero(mask))
        if count == 0:
            return {"part_offset": NO_PART_OFFSET, "part_size": 0.0}
        cx = float(mask.sum(axis=0) @ self._centres(mask.shape[1])) / count
        cy = float(mask.sum(axis=1) @ self._centres(mask.shape[0])) / count
        return {"part_offset": math.hypot(cx - 0.5, cy - 0.5),
                "part_size": 2.0 * math.sqrt(count / mask.size / math.pi)}


def _edge_strength(img: np.ndarray) -> float:
    """RMS of the strongest 2 % of central-difference gradients: the part's edges, not its flat areas."""
    gx = img[1:-1, 2:] - img[1:-1, :-2]
    gy = img[2:, 1:-1] - img[:-2, 1:-1]
    mag2 = (gx * gx + gy * gy).ravel()
    k = max(1, int(mag2.size * EDGE_SHARE))
    # The exact top k without partitioning every pixel: a strided sample gives a threshold safely below the
    # k-th largest value (its 95th percentile), then only the few pixels above it are partitioned.
    sample = mag2[::7]
    floor = float(np.partition(sample, int(sample.size * 0.95))[int(sample.size * 0.95)])
    strong = mag2[mag2 >= floor]
    if strong.size < k:
        strong = mag2
    top = np.partition(strong, strong.size - k)[strong.size - k:]
    return math.sqrt(float(top.mean()))


# focus = _edge_strength(model-input pixels) / _edge_strength(2 x 2 block average): how much steeper the
# part's edges are at full resolution than at half. A sharp edge is about as steep per pixel at both
# scales (ratio near 1); an edge blurred over several pixels is only half as steep per fine pixel (ratio
# toward 0.5). As a ratio it does not move with lamp brightness or contrast, and sensor noise barely
# moves it, because the strongest 2 % of gradients are the part's edges (measured on the casting test
# images: unchanged up to noise sigma 10), unlike the variance of the Laplacian, which noise inflates.


def _noise(b: np.ndarray) -> float:
    """Sensor-noise standard deviation in grey levels (Immerkaer's operator, made robust to edges).

    The separable second difference [1 -2 1] x [1 -2 1] cancels flat areas and straight ramps; on pure
    Gaussian noise of sigma s its output is Gaussian with standard deviation 6 s. Edges only add large
    outputs, so the estimate uses the smaller half: for a Gaussian, the mean absolute value below the
    median is 0.3248 x its standard deviation. (The median itself would move in coarse quantised steps on
    8-bit images.) The block averaging halved the noise: the result is doubled to report the noise of the
    model-input pixels.
    """
    d2x = b[:, :-2] - 2.0 * b[:, 1:-1] + b[:, 2:]
    d2 = np.abs(d2x[:-2] - 2.0 * d2x[1:-1] + d2x[2:]).ravel()
    m = d2.size // 2
    lower = np.partition(d2, m)[:m]
    return 2.0 * float(lower.mean()) / (0.3248 * 6.0)
