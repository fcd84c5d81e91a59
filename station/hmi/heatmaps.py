"""Grad-CAM heat maps for the HMI: computed on demand in the HMI process, cached next to the image.

The model is the artifact the station runs (`model.path` of the same YAML), loaded lazily on the
first request (torch is imported only then) and checked against the part's row: a part decided by
another model file (the model changed since) gets no heat map rather than a misleading one. Torch
gets one thread so the HMI never competes with the station for the cores. The overlay is written as
`<image>.heatmap.png` beside the part's image; heat maps whose image the station's disk budget has
pruned are removed by `sweep_orphans`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

SUFFIX = ".heatmap.png"


class HeatmapUnavailable(RuntimeError):
    """No heat map for this part; the message says why (shown to the user)."""


def heatmap_path(image: Path) -> Path:
    return image.with_name(image.stem + SUFFIX)


class HeatmapService:
    def __init__(self, model_path: Path, *, enabled: bool = True) -> None:
        self.model_path = Path(model_path)
        self.enabled = enabled
        self._lock = threading.Lock()  # one Grad-CAM at a time: it is CPU work beside the station
        self._artifact: Any = None
        self._load_error: str | None = None
        self.computed = 0
        self.cache_hits = 0

    def _load(self) -> Any:
        if self._artifact is None and self._load_error is None:
            import torch

            from station.artifact import ModelArtifactError, load_artifact

            torch.set_num_threads(1)
            try:
                self._artifact = load_artifact(self.model_path)
            except ModelArtifactError as exc:
                self._load_error = str(exc)
                log.error("heat maps unavailable: %s", exc)
        if self._artifact is None:
            raise HeatmapUnavailable(f"the model could not be loaded: {self._load_error}")
        return self._artifact

    def get(self, image: Path, *, model_sha256: str | None) -> Path | bytes:
        """The cached heat-map file, or the PNG bytes when the image folder cannot take the cache file."""
        if not self.enabled:
            raise HeatmapUnavailable("heat maps are switched off (hmi.heatmaps: false)")
        cached = heatmap_path(image)
        if cached.is_file():
            self.cache_hits += 1
            return cached
        with self._lock:
            if cached.is_file():
                return cached
            png = self._compute(image, model_sha256)
            tmp = cached.with_name(cached.name + ".tmp")
            try:
                tmp.write_bytes(png)
                os.replace(tmp, cached)
            except OSError as exc:
                log.warning("heat map for %s not cached (%s); served from memory", image.name, exc.strerror or exc)
                return png
            return cached

    def _compute(self, image: Path, model_sha256: str | None) -> bytes:
        artifact = self._load()
        if model_sha256 and model_sha256 != artifact.sha256:
            raise HeatmapUnavailable(f"the part was decided by model file {model_sha256[:12]}; the station's model "
                                     f"file is now {artifact.sha256[:12]}")
        try:
            with Image.open(image) as im:
                gray = np.asarray(im.convert("L"))
        except (OSError, UnidentifiedImageError) as exc:
            raise HeatmapUnavailable(f"image {image.name} cannot be read: {exc}") from exc
        from station.gradcam import grad_cam, heat_overlay

        x = artifact.metadata.preprocess.to_tensor(gray)
        cam = grad_cam(artifact.model, x, artifact.metadata.defective_index)
        self.computed += 1
        import io

        buf = io.BytesIO()
        Image.fromarray(heat_overlay(gray, cam)).save(buf, format="PNG", compress_level=3)
        return buf.getvalue()


def sweep_orphans(images_dir: Path) -> int:
    """Remove heat maps whose image is gone (pruned by the station's disk budget); return how many."""
    removed = 0
    if not images_dir.is_dir():
        return 0
    for heat in images_dir.rglob(f"*{SUFFIX}"):
        stem = heat.name[: -len(SUFFIX)]
        if not any(heat.with_name(stem + ext).exists() for ext in (".png", ".jpeg")):
            try:
                heat.unlink()
                removed += 1
            except OSError as exc:
                log.warning("orphan heat map %s not removed: %s", heat, exc)
    return removed
