"""Near-copies: images of the same physical part that the published casting data holds several times.

The data set was augmented before publication (rotations, flips, brightness changes, re-crops), so a
random split leaves copies of one part on both sides. Two images count as near-copies when, at 64 x 64
px grey (PIL's default bicubic resize) and under the best of the 8 rotations/flips, their normalised
cross-correlation (the Pearson correlation of the pixels) is at least `NEAR_COPY_NCC` (0.995; the
data's SOURCE.md reports 217 of the 715 test images with such a copy in train/, this code finds 218).
`max_ncc` gives, for each query image, its best match in a reference set; calibration and the "novel"
test figures use only images whose best match among the training images stays below the threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

NEAR_COPY_NCC = 0.995
SIZE = 64


def thumbnail(image: np.ndarray | Path) -> np.ndarray:
    """64 x 64 float32 grey thumbnail of an image file or a uint8 grey array."""
    if isinstance(image, np.ndarray):
        im = Image.fromarray(image)
    else:
        with Image.open(image) as src:
            im = src.convert("L")
    return np.asarray(im.convert("L").resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32)


def _normalised(thumbs: np.ndarray) -> torch.Tensor:
    v = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    v = v - v.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return torch.from_numpy(v / np.maximum(norms, 1e-6))


def _dihedral(thumbs: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(thumbs, k // 2, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if k % 2 else out)


def max_ncc(queries: np.ndarray, references: np.ndarray, *, exclude_self: bool = False,
            chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each query thumbnail (N x 64 x 64), the highest NCC to any reference thumbnail under the 8
    rotations/flips, and that reference's index. `exclude_self`: queries and references are the same
    set, an image is not its own copy."""
    refs = _normalised(references)
    best = torch.full((len(queries),), -2.0)
    arg = torch.zeros(len(queries), dtype=torch.long)
    for k in range(8):
        q = _normalised(_dihedral(queries, k))
        for start in range(0, len(q), chunk):
            sim = q[start:start + chunk] @ refs.T
            if exclude_self and k == 0:
                rows = torch.arange(start, min(start + chunk, len(q)))
                sim[rows - start, rows] = -2.0
            m, i = sim.max(dim=1)
            sl = slice(start, start + len(m))
            better = m > best[sl]
            best[sl] = torch.where(better, m, best[sl])
            arg[sl] = torch.where(better, i, arg[sl])
    return best.numpy(), arg.numpy()


def group_near_copies(thumbs: np.ndarray, *, threshold: float = NEAR_COPY_NCC) -> np.ndarray:
    """Group ids (N,) such that near-copies (NCC >= threshold, any rotation/flip) share a group."""
    n = len(thumbs)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    refs = _normalised(thumbs)
    for k in range(8):
        q = _normalised(_dihedral(thumbs, k))
        sim = q @ refs.T
        pairs = torch.nonzero(sim >= threshold).numpy()
        for a, b in pairs:
            if a != b:
                ra, rb = find(int(a)), find(int(b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def novel_mask(queries: Sequence[Path] | np.ndarray, references: np.ndarray, *,
               threshold: float = NEAR_COPY_NCC) -> tuple[np.ndarray, np.ndarray]:
    """(novel, best_ncc): which queries have no near-copy among the reference thumbnails."""
    q = queries if isinstance(queries, np.ndarray) else np.stack([thumbnail(p) for p in queries])
    best, _ = max_ncc(q, references)
    log.info("near-copies: %d of %d images have a copy (NCC >= %g) among %d references",
             int((best >= threshold).sum()), len(q), threshold, len(references))
    return best < threshold, best
