"""`station record`: frames from the configured camera, saved losslessly with their capture metadata.

A recording is a folder that `station replay` plays back unchanged: one PNG per frame in the station
layout (exactly the array the pipeline saw, mono or RGB), `frames.jsonl` with one line per part in
capture order (file, capture time, wall time, source, label, error, camera meta, sha256 of the
pixels) and `recording.json` describing the camera and the run. A broken buffer is recorded as a
line with its `error` and no file, so the replay gives that part the same `bad_frame` verdict.
A camera lost during the recording is reopened with the configured backoff; the recording goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from station.cameras.base import Camera, CameraError, CameraLost, EndOfStream, Grab

log = logging.getLogger(__name__)

MANIFEST = "frames.jsonl"
INFO = "recording.json"
FORMAT = "station-recording/1"


def pixels_sha256(image: np.ndarray) -> str:
    """Digest of the pixel array (shape and bytes), independent of the PNG encoding."""
    digest = hashlib.sha256(f"{image.dtype}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class RecordingSummary:
    out_dir: Path
    parts: int = 0
    images: int = 0
    broken: int = 0
    losses: int = 0
    seconds: float = 0.0
    ended_by: str = ""
    counters: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Grabs from one camera into a recording folder until a part count, a duration, or the source ends."""

    def __init__(self, camera: Camera, out_dir: Path, *, camera_config: Any = None,
                 min_backoff_ms: float = 500.0, max_backoff_ms: float = 10_000.0) -> None:
        self.camera = camera
        self.out_dir = Path(out_dir)
        self.camera_config = camera_config
        self.min_backoff_s = min_backoff_ms / 1000
        self.max_backoff_s = max_backoff_ms / 1000
        self.stop_event = threading.Event()

    def _prepare_folder(self) -> None:
        if (self.out_dir / MANIFEST).exists():
            raise CameraError(f"{self.out_dir} already holds a recording; choose another --out folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _write_info(self, summary: RecordingSummary | None, started_wall: float) -> None:
        info: dict[str, Any] = {"format": FORMAT, "camera": self.camera.describe(), "kind": self.camera.kind,
                                "started_wall_time": started_wall, "manifest": MANIFEST}
        if self.camera_config is not None and hasattr(self.camera_config, "model_dump"):
            info["camera_config"] = _jsonable(self.camera_config.model_dump(mode="json"))
        if summary is not None:
            info.update(parts=summary.parts, images=summary.images, broken=summary.broken,
                        losses=summary.losses, seconds=round(summary.seconds, 3), ended_by=summary.ended_by,
                        counters=_jsonable(summary.counters))
        (self.out_dir / INFO).write_text(json.dumps(info, indent=2) + "\n")

    def run(self, *, parts: int | None = None, seconds: float | None = None) -> RecordingSummary:
        self._prepare_folder()
        started_wall, started = time.time(), time.monotonic()
        summary = RecordingSummary(out_dir=self.out_dir)
        self._write_info(None, started_wall)
        self.camera.open()
        try:
            with (self.out_dir / MANIFEST).open("a", encoding="utf-8") as manifest:
                summary.ended_by = self._loop(manifest, summary, parts=parts, seconds=seconds, started=started)
        finally:
            self.camera.close()
            summary.seconds = time.monotonic() - started
            summary.counters = dict(self.camera.counters)
            self._write_info(summary, started_wall)
        return summary

    def _loop(self, manifest: Any, summary: RecordingSummary, *, parts: int | None, seconds: float | None,
              started: float) -> str:
        while True:
            if self.stop_event.is_set():
                return "stopped"
            if parts is not None and summary.parts >= parts:
                return "parts"
            if seconds is not None and time.monotonic() - started >= seconds:
                return "seconds"
            try:
                grab = self.camera.grab(0.5)
            except EndOfStream:
                return "end_of_stream"
            except CameraLost as exc:
                summary.losses += 1
                log.error("recording: %s; reopening", exc)
                if not self._reopen(deadline=None if seconds is None else started + seconds):
                    return "stopped" if self.stop_event.is_set() else "seconds"
                continue
            if grab is not None:
                self._write(manifest, grab, summary)

    def _reopen(self, *, deadline: float | None) -> bool:
        self.camera.close()
        backoff = self.min_backoff_s
        while not self.stop_event.is_set():
            if deadline is not None and time.monotonic() + backoff > deadline:
                return False
            self.stop_event.wait(backoff)
            try:
                self.camera.open()
                return True
            except CameraError as exc:
                log.warning("recording: reopen failed: %s (next try in %.1f s)", exc, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        return False

    def _write(self, manifest: Any, grab: Grab, summary: RecordingSummary) -> None:
        summary.parts += 1
        index = summary.parts
        entry: dict[str, Any] = {
            "index": index, "file": None,
            "t_capture_ns": grab.t_capture_ns if grab.t_capture_ns is not None else time.monotonic_ns(),
            "wall_time": time.time(), "source": grab.source, "label": grab.label, "error": grab.error,
            "meta": _jsonable(grab.meta)}
        if grab.error is None and grab.image is not None:
            image = np.ascontiguousarray(grab.image)
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
                raise CameraError(f"camera delivered {image.dtype} {image.shape}, not the station layout")
            name = f"{index:06d}.png"
            Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(self.out_dir / name,
                                                                               compress_level=1)
            entry.update(file=name, sha256=pixels_sha256(image), shape=list(image.shape))
            summary.images += 1
        else:
            summary.broken += 1
            if entry["error"] is None:
                entry["error"] = "camera delivered no image"
        manifest.write(json.dumps(entry) + "\n")
        manifest.flush()


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The entries of a recording's frames.jsonl, in capture order; ValueError when malformed."""
    entries = []
    lines = (Path(folder) / MANIFEST).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                # The recorder was killed while writing its last line: that part was never complete.
                log.warning("%s: ignoring the truncated last line %d", folder / MANIFEST, lineno)
                break
            raise ValueError(f"{folder / MANIFEST} line {lineno}: {exc}") from exc
        if not isinstance(entry, dict) or "file" not in entry:
            raise ValueError(f"{folder / MANIFEST} line {lineno}: not a recording entry")
        entries.append(entry)
    return entries
