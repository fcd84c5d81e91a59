"""The capture thread: camera grabs become numbered parts, queued for inference or failed safe.

Every grab that stands for a part gets the next `seq`, is registered with the decision module
(which starts its deadline) and then either goes onto the bounded inference queue or, when the
frame is broken or the queue is full, straight to a fail-safe verdict. A camera that is lost is
closed and reopened with capped backoff while the alarm is up; the service keeps running.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Callable

from station.actuators.base import Backoff
from station.cameras.base import Camera, CameraError, CameraLost, EndOfStream, Grab
from station.decision import DecisionMaker
from station.preprocess import FrameFormatError, check_image
from station.records import Frame, Reason
from station.stage import Stage

log = logging.getLogger(__name__)

AlarmHook = Callable[[str, str | None], None]


class CaptureThread(Stage):
    busy_doing = "waiting for the camera"

    def __init__(self, camera: Camera, frames: queue.Queue, decision: DecisionMaker, *, first_seq: int,
                 on_alarm: AlarmHook, expected_size: tuple[int | None, int | None] = (None, None),
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0) -> None:
        super().__init__("capture")
        self.camera = camera
        self.frames = frames
        self.decision = decision
        self.next_seq = first_seq
        self.on_alarm = on_alarm
        self.expected_w, self.expected_h = expected_size
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self.is_open = False
        self.captured = 0
        self.overruns = 0
        self.bad_frames = 0
        self.reconnects = 0

    def update_frame_size(self, *, width_px: int | None, height_px: int | None) -> None:
        """The frame size check from the next frame on (live reload); None: that side is not checked."""
        self.expected_w, self.expected_h = width_px, height_px

    def adopt(self, old: Stage) -> None:
        """Numbering goes on where the dead thread stopped (seq stays unique), and so do the counters."""
        assert isinstance(old, CaptureThread)
        self.next_seq = old.next_seq
        self.captured, self.overruns, self.bad_frames, self.reconnects = (
            old.captured, old.overruns, old.bad_frames, old.reconnects)

    def open_camera(self) -> bool:
        try:
            with self.busy():
                self.camera.open()
        except CameraError as exc:
            delay = self.backoff.failed()
            self.on_alarm("camera", f"{self.camera.describe()}: {exc} (retry in {delay:.1f} s)")
            log.error("camera %s cannot be opened: %s; retry in %.1f s", self.camera.describe(), exc, delay)
            return False
        if self.reconnects:
            log.warning("camera %s reopened", self.camera.describe())
        self.backoff.succeeded()
        self.is_open = True
        self.on_alarm("camera", None)
        return True

    def step(self) -> bool:
        if self.stop_event.is_set():
            return False
        if not self.is_open:
            if not (self.backoff.ready() and self.open_camera()):
                self.stop_event.wait(0.1)
            return True
        if self.camera.paced_by_pipeline and self.frames.full():
            time.sleep(0.001)  # replay as fast as possible: wait for the pipeline, not overrun
            return True
        try:
            with self.busy():
                grab = self.camera.grab(timeout_s=0.5)
        except EndOfStream:
            log.info("camera %s: end of stream after %d parts", self.camera.describe(), self.captured)
            return self.finish()
        except CameraLost as exc:
            self._lost(exc)
            return True
        if grab is not None:
            self.take(grab)
        return True

    def cleanup(self) -> None:
        # A software trigger still waiting for its frame is a part too: it gets its row.
        if self.is_open:
            pending = self.camera.finish_pending()
            if pending is not None:
                self.take(pending)
        self.camera.close()
        self.is_open = False

    def _lost(self, exc: CameraError) -> None:
        self.reconnects += 1
        self.is_open = False
        self.camera.close()
        delay = self.backoff.failed()
        self.on_alarm("camera", f"camera lost: {exc} (reopening in {delay:.1f} s)")
        log.error("camera %s lost: %s; reopening in %.1f s", self.camera.describe(), exc, delay)

    def take(self, grab: Grab) -> Frame:
        """Turn one grab into a registered part and route it."""
        t_ns = grab.t_capture_ns if grab.t_capture_ns is not None else time.monotonic_ns()
        frame = Frame(seq=self.next_seq, t_capture_ns=t_ns, wall_time=time.time(), image=grab.image,
                      source=grab.source, label=grab.label, error=grab.error, meta=grab.meta)
        self.next_seq += 1
        self.captured += 1
        self.decision.register(frame)
        problem = frame.error or self._image_problem(frame)
        if problem is not None:
            self.bad_frames += 1
            self.decision.fail_safe(frame, Reason.BAD_FRAME, problem)
            return frame
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            self.overruns += 1
            log.warning("part %d: inference queue full (overrun)", frame.seq)
            self.decision.fail_safe(frame, Reason.OVERRUN, "inference queue full")
        return frame

    def _image_problem(self, frame: Frame) -> str | None:
        if frame.image is None:
            return "camera delivered no image"
        try:
            check_image(frame.image)
        except FrameFormatError as exc:
            return str(exc)
        h, w = frame.image.shape[:2]
        if (self.expected_w and w != self.expected_w) or (self.expected_h and h != self.expected_h):
            return f"frame is {w}x{h} px, expected {self.expected_w or w}x{self.expected_h or h}"
        return None
