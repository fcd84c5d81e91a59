"""The `replay` camera: recorded frames (a folder of images or a video file) fed through the pipeline.

Labels come from the sub-folder names (`def_front`/`ok_front` by default, or the YAML mapping).
A file that cannot be decoded still stands for a part: it is delivered as a broken `Grab` so the
part gets a `bad_frame` verdict, exactly as a corrupt camera buffer would.
A folder written by `station record` (it holds `frames.jsonl`) is played in its recorded order with
its recorded labels, and its broken parts are delivered as broken `Grab`s again.
"""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from station.cameras.base import Camera, CameraError, EndOfStream, Grab, Pacer
from station.cameras.pixels import check_declared_size, to_station_image
from station.cameras.recorder import MANIFEST, read_manifest
from station.config_cameras import ReplayCameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm"}


def list_frames(folder: Path, *, order: str = "sorted", seed: int = 0) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if order == "shuffled":
        random.Random(seed).shuffle(files)
    return files


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to the station layout; raise ValueError/OSError when it cannot be.
    The size the file declares is checked first: an oversized image is never decoded."""
    with warnings.catch_warnings():
        # PIL warns about sizes past its own bomb limit; the station's limit below is stricter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)  # reads the header only
    with img:
        check_declared_size(*img.size, what=path.name)
        img.load()
        if img.mode in ("L", "RGB"):
            return np.asarray(img).copy()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return to_station_image(np.asarray(img), "mono16" if img.mode.startswith("I;16") else "mono32")
        return np.asarray(img.convert("RGB")).copy()


class ReplayCamera(Camera):
    kind = "replay"

    def __init__(self, config: ReplayCameraConfig) -> None:
        super().__init__()
        self.config = config
        self.rate = config.rate_parts_per_s
        self.paced_by_pipeline = self.rate is None
        self._files: list[Path] = []
        self._entries: list[dict] | None = None   # a `station record` manifest, when the folder has one
        self._video = None
        self._index = 0
        self._delivered = 0
        self._pacer = Pacer(self.rate)

    def describe(self) -> str:
        pace = "as fast as possible" if self.rate is None else f"{self.rate:g} parts/s"
        return f"replay {self.config.path} ({pace})"

    def open(self) -> None:
        path = self.config.path
        if path.is_dir() and (path / MANIFEST).is_file():
            try:
                self._entries = read_manifest(path)
            except (OSError, ValueError) as exc:
                raise CameraError(f"cannot read the recording manifest in {path}: {exc}") from exc
            # A recording replays as recorded: its order is part of what was captured.
            self._files = [path / e["file"] if e.get("file") else path / f"<broken part {e.get('index')}>"
                           for e in self._entries]
            if not self._files:
                raise CameraError(f"recording {path} holds no parts")
        elif path.is_dir():
            self._files = list_frames(path, order=self.config.order, seed=self.config.seed)
            if not self._files:
                raise CameraError(f"replay folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            # A video plays through the opencv camera's file mode, unpaced: this camera paces it.
            from station.cameras.opencv_cam import OpenCvCamera
            from station.config_cameras import OpenCvCameraConfig

            video = OpenCvCamera(OpenCvCameraConfig(source=str(path), loop=self.config.loop), rate_parts_per_s=None)
            video.open()
            self._video = video
        elif path.is_file():
            raise CameraError(f"replay path {path} is neither a folder of images nor a video "
                              f"({', '.join(sorted(VIDEO_SUFFIXES))})")
        else:
            raise CameraError(f"replay path {path} does not exist")
        self._index = 0
        self._pacer.start()

    def _label_for(self, path: Path) -> str | None:
        for part in reversed(path.relative_to(self.config.path).parts[:-1]):
            if part in self.config.labels:
                return self.config.labels[part]
        return None

    def grab(self, timeout_s: float) -> Grab | None:
        if self.config.limit is not None and self._delivered >= self.config.limit:
            raise EndOfStream
        if not self._pacer.wait(timeout_s):
            return None
        grab = self._next_video() if self._video is not None else self._next_file()
        self._delivered += 1
        self.counters["frames"] += 1
        return grab

    def _next_file(self) -> Grab:
        if self._index >= len(self._files):
            if not self.config.loop:
                raise EndOfStream
            self._index = 0
        path = self._files[self._index]
        self._index += 1
        if self._entries is not None:
            return self._recorded(self._entries[self._index - 1], path)
        source = str(path)
        label = self._label_for(path)
        try:
            image = load_image(path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            self.counters["bad_files"] += 1
            log.warning("replay: cannot decode %s: %s", path, exc)
            return Grab(image=None, source=source, label=label, error=f"cannot decode {path.name}: {exc}")
        return Grab(image=image, source=source, label=label)

    def _recorded(self, entry: dict, path: Path) -> Grab:
        meta = {"recorded_t_capture_ns": entry.get("t_capture_ns"), "recorded_source": entry.get("source"),
                "recorded_meta": entry.get("meta") or {}}
        label = entry.get("label")
        if not entry.get("file"):
            return Grab(image=None, source=str(path), label=label, meta=meta,
                        error=entry.get("error") or "recorded as a broken part")
        try:
            image = load_image(path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            self.counters["bad_files"] += 1
            log.warning("replay: cannot decode %s: %s", path, exc)
            return Grab(image=None, source=str(path), label=label, meta=meta,
                        error=f"cannot decode {path.name}: {exc}")
        return Grab(image=image, source=str(path), label=label, meta=meta)

    def _next_video(self) -> Grab:
        grab = self._video.grab(timeout_s=1.0)
        if grab is None:
            raise EndOfStream
        return grab

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
