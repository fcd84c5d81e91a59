"""The `opencv` camera: V4L2 devices, video files and network streams (RTSP/HTTP) through OpenCV.

A video file is read on the capture thread, frame by frame, paced at `rate_parts_per_s` (or as fast
as the pipeline takes them) and ends the run at its last frame unless `loop` is set. A live source
(device or stream) is read by a small reader thread, because `VideoCapture.read()` has no timeout:
frames wait in a short queue (the oldest is dropped and counted when the station falls behind), a
failed read or `lost_after_ms` of silence raises `CameraLost`, and `close()` joins the reader.
OpenCV delivers BGR; frames are converted to the station's RGB layout in `pixels`.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

from station.cameras.base import Camera, CameraError, CameraLost, EndOfStream, Grab, Pacer
from station.cameras.pixels import check_declared_size, to_station_image
from station.config_cameras import OpenCvCameraConfig

log = logging.getLogger(__name__)

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def load_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise CameraError("the opencv camera needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def _bgr_to_station(frame: Any) -> Any:
    if frame.ndim == 2:
        return to_station_image(frame, "mono8")
    if frame.shape[2] == 4:
        return to_station_image(frame, "bgra8")
    return to_station_image(frame, "bgr8")


class OpenCvCamera(Camera):
    kind = "opencv"

    def __init__(self, config: OpenCvCameraConfig, *, rate_parts_per_s: float | None | str = "config") -> None:
        super().__init__()
        self.config = config
        source = config.source
        self.is_device = source.isdigit() or source.startswith("/dev/")
        self.is_file = not self.is_device and not _URL.match(source)
        self.rate = config.rate_parts_per_s if rate_parts_per_s == "config" else rate_parts_per_s
        self.paced_by_pipeline = self.is_file and self.rate is None
        self._cap: Any = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._frames: queue.Queue[tuple[int, Any] | None] = queue.Queue(maxsize=config.queue_frames)
        self._reader_error: str | None = None
        self._ever_opened = False
        self._pacer = Pacer(self.rate)
        self._last_frame_ns = 0
        self._fps_start_ns = 0
        self._fps_frames = 0

    def describe(self) -> str:
        what = "device" if self.is_device else "file" if self.is_file else "stream"
        return f"opencv {what} {self.config.source}"

    def open(self) -> None:
        cv2 = load_cv2()
        cfg = self.config
        if self.is_file and not Path(cfg.source).is_file():
            raise CameraError(f"video file {cfg.source} does not exist")
        backend = {"auto": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG,
                   "gstreamer": cv2.CAP_GSTREAMER}[cfg.backend]
        target: int | str = int(cfg.source) if cfg.source.isdigit() else cfg.source
        params: list[int] = []
        if not self.is_file:
            # Bound the blocking calls of network/device backends that honour these (FFmpeg does).
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.lost_after_ms),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.lost_after_ms)]
        cap = cv2.VideoCapture(target, backend, params)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"OpenCV cannot open {cfg.source} (backend {cfg.backend})")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
                            (cv2.CAP_PROP_FPS, cfg.frame_rate_hz)):
            if value is not None and not self.is_file and not cap.set(prop, value):
                log.warning("%s: the device refused %s = %s", self.describe(), prop, value)
        # The size the source declares, before a frame is decoded (0 x 0: a stream that says nothing yet).
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width > 0 and height > 0:
            try:
                check_declared_size(width, height, what=cfg.source)
            except ValueError as exc:
                cap.release()
                raise CameraError(str(exc)) from None
        self._cap = cap
        if self._ever_opened:
            self.counters["reconnects"] += 1
        self._ever_opened = True
        now = time.monotonic_ns()
        self._pacer.start()
        self._last_frame_ns = self._fps_start_ns = now
        self._fps_frames = 0
        if not self.is_file:
            self._reader_error = None
            self._stop.clear()
            self._frames = queue.Queue(maxsize=cfg.queue_frames)
            self._reader = threading.Thread(target=self._read_loop, name="opencv-reader", daemon=True)
            self._reader.start()
        log.info("opened %s", self.describe())

    # --- live sources: a reader thread, because read() cannot time out ----------------------------

    def _read_loop(self) -> None:
        cap = self._cap
        while not self._stop.is_set():
            ok, frame = cap.read()
            stamp = time.monotonic_ns()
            if not ok or frame is None:
                self._reader_error = "read failed (device unplugged or stream ended)"
                return
            try:
                self._frames.put_nowait((stamp, frame))
            except queue.Full:
                try:
                    self._frames.get_nowait()
                    self.counters["dropped"] += 1
                except queue.Empty:
                    pass
                self._frames.put_nowait((stamp, frame))

    def _grab_live(self, timeout_s: float) -> Grab | None:
        try:
            item = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            item = None
        now = time.monotonic_ns()
        if item is None:
            self.counters["timeouts"] += 1
            silent_ms = (now - self._last_frame_ns) / 1e6
            if self._reader_error is not None:
                self._lose(self._reader_error)
            if silent_ms > self.config.lost_after_ms:
                self._lose(f"no frame for {silent_ms:.0f} ms (lost_after_ms = {self.config.lost_after_ms:g})")
            return None
        stamp, frame = item
        return self._deliver(frame, stamp, source=self.describe())

    def _lose(self, reason: str) -> None:
        self.counters["lost"] += 1
        log.error("%s: camera lost: %s", self.describe(), reason)
        raise CameraLost(f"{self.describe()}: {reason}")

    # --- video files: read on the caller's thread, paced ------------------------------------------

    def _grab_file(self, timeout_s: float) -> Grab | None:
        cv2 = load_cv2()
        if not self._pacer.wait(timeout_s):
            return None
        ok, frame = self._cap.read()
        if not ok:
            if not self.config.loop:
                raise EndOfStream
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if not ok:
                raise EndOfStream
        index = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        return self._deliver(frame, time.monotonic_ns(), source=f"{self.config.source}#{index}",
                             meta={"video_pos_ms": float(self._cap.get(cv2.CAP_PROP_POS_MSEC))})

    def _deliver(self, frame: Any, stamp_ns: int, *, source: str, meta: dict[str, Any] | None = None) -> Grab:
        self._last_frame_ns = stamp_ns
        try:
            image = _bgr_to_station(frame)
        except ValueError as exc:
            self.counters["corrupt"] += 1
            return Grab(image=None, source=source, t_capture_ns=stamp_ns, error=f"corrupt frame: {exc}")
        self.counters["frames"] += 1
        self._fps_frames += 1
        elapsed = stamp_ns - self._fps_start_ns
        if elapsed >= 1_000_000_000:
            self.counters["fps"] = round(self._fps_frames * 1e9 / elapsed, 1)  # type: ignore[assignment]
            self._fps_start_ns, self._fps_frames = stamp_ns, 0
        return Grab(image=image, source=source, t_capture_ns=stamp_ns, meta=meta or {})

    def grab(self, timeout_s: float) -> Grab | None:
        if self._cap is None:
            raise CameraLost(f"{self.describe()}: not open")
        return self._grab_file(timeout_s) if self.is_file else self._grab_live(timeout_s)

    def close(self) -> None:
        self._stop.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(timeout=max(1.0, self.config.lost_after_ms / 1000))
            if reader.is_alive():
                log.warning("%s: reader still blocked in read() after close; it ends with the next read",
                            self.describe())
        if self._cap is not None and (reader is None or not reader.is_alive()):
            self._cap.release()
        self._cap = None
