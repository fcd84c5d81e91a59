"""The camera protocol every camera kind implements, and the records and errors it uses.

The capture thread calls `grab(timeout_s)` in a loop. A camera returns a `Grab` (an image, or an
`error` for a broken buffer that still stands for a part), `None` when nothing arrived within the
timeout, raises `CameraLost` when the device is gone (the capture thread reopens it with backoff),
and `EndOfStream` when a finite source (replay, a limited synthetic run) is exhausted.
Images are converted to the station layout (uint8 HxW mono or HxWx3 RGB) inside the camera module,
through `station.cameras.pixels`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class CameraError(RuntimeError):
    """The camera cannot be opened or configured."""


class CameraLost(CameraError):
    """The camera stopped answering (unplugged, network loss, stream error)."""


class EndOfStream(Exception):
    """A finite source has delivered its last frame."""


@dataclass(frozen=True)
class Grab:
    image: np.ndarray | None
    source: str
    t_capture_ns: int | None = None  # monotonic ns; None: the capture thread stamps it on arrival
    label: str | None = None          # "defective" | "ok" when the source knows it
    error: str | None = None          # a broken buffer: the part gets a `bad_frame` verdict
    meta: dict[str, Any] = field(default_factory=dict)


class Pacer:
    """Paces a recorded or rendered source at `rate` parts/s like a conveyor; `None`: no pacing at all.

    Parts stay on the time grid through small delays, but a conveyor never bunches parts up: after a
    stall (a busy machine that held the capture thread) the grid starts again from now, so two parts
    are never closer than 0.9 of the pitch. Bunched parts would overlap their reject pulses, which no
    real line at this rate does.
    """

    _SLIP = 0.1  # lateness, as a fraction of the pitch, still caught up on the grid

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next_due = 0.0

    def start(self) -> None:
        self._next_due = time.monotonic()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next part is due; False if that is further away than `timeout_s`."""
        if self.rate is None:
            return True
        wait = self._next_due - time.monotonic()
        if wait > timeout_s:
            time.sleep(timeout_s)
            return False
        if wait > 0:
            time.sleep(wait)
        pitch = 1.0 / self.rate
        now = time.monotonic()
        if now - self._next_due > self._SLIP * pitch:
            self._next_due = now + pitch  # after a stall: the next part one pitch from now
        else:
            self._next_due += pitch
        return True


class Camera(ABC):
    kind: str = "abstract"
    # True for sources that may wait for the pipeline (replay as fast as possible): the capture
    # thread then waits for queue room instead of declaring an overrun.
    paced_by_pipeline: bool = False

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    @abstractmethod
    def open(self) -> None:
        """Open and configure the device; raise CameraError with what went wrong."""

    @abstractmethod
    def grab(self, timeout_s: float) -> Grab | None:
        """Wait up to `timeout_s` for the next frame."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; must not raise."""

    def describe(self) -> str:
        return self.kind

    def finish_pending(self) -> Grab | None:
        """At stop, before close(): a part the camera has started but not delivered yet (a software
        trigger waiting for its frame), as its Grab; None when there is none (most cameras)."""
        return None
