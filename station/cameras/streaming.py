"""What the GenICam camera kinds (Aravis, GenTL) share: triggering, loss detection, timestamps, counters.

`StreamingCamera` implements the camera protocol on top of five small device hooks (open, close,
pop one buffer, fire a software trigger, probe the control channel), so the Aravis and the GenTL
modules only talk to their library. Trigger modes: in `free_run` and `hardware` every frame is a
part; in `software` the camera fires one trigger per part at `trigger.rate_parts_per_s` and every
trigger ends as exactly one `Grab`, a frame or an error (no frame within `trigger.frame_timeout_ms`,
or a trigger that could not be sent), so each triggered part gets a verdict. A loss (silence past
`lost_after_ms`, a failed control read, a stream/device error) raises `CameraLost`, never while a
trigger is still waiting for its frame.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from station.cameras.base import Camera, CameraLost, Grab

_NS_PER_S = 1_000_000_000


@dataclass
class RawFrame:
    """One buffer as a device hook hands it over: a converted image, or what was wrong with it."""

    image: np.ndarray | None
    error: str | None = None
    device_timestamp_ns: int | None = None   # camera clock; None or 0 when the device has none
    arrival_ns: int = 0                      # monotonic ns when the host received it
    frame_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ClockMapper:
    """Maps camera timestamps to the host's monotonic clock.

    The offset is the smallest (arrival - camera time) seen, i.e. the frame with the least transfer
    delay, re-measured every `window_s` so clock drift between camera and host cannot build up. A
    mapped time later than its arrival, or more than `max_lag_ns` before it (camera clock reset or
    jump), re-anchors the offset on that frame.
    """

    def __init__(self, *, window_s: float = 10.0, max_lag_ns: int = 500_000_000) -> None:
        self.window_ns = int(window_s * _NS_PER_S)
        self.max_lag_ns = max_lag_ns
        self.reset()

    def reset(self) -> None:
        self._offset: int | None = None
        self._window_min: int | None = None
        self._window_start = 0

    def to_monotonic(self, device_ns: int | None, arrival_ns: int) -> int:
        if not device_ns or device_ns <= 0:
            return arrival_ns
        delta = arrival_ns - device_ns
        if self._offset is None:
            self._offset, self._window_min, self._window_start = delta, delta, arrival_ns
        self._offset = min(self._offset, delta)
        self._window_min = delta if self._window_min is None else min(self._window_min, delta)
        if arrival_ns - self._window_start >= self.window_ns:
            self._offset, self._window_min, self._window_start = self._window_min, None, arrival_ns
        t = device_ns + self._offset
        if t > arrival_ns or arrival_ns - t > self.max_lag_ns:
            self._offset, self._window_min, self._window_start = delta, delta, arrival_ns
            t = arrival_ns
        return t


class StreamingCamera(Camera):
    """A GenICam-style streaming camera; subclasses provide the device hooks."""

    log = logging.getLogger(__name__)

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.trigger_mode: str = config.trigger.mode
        self._clock = ClockMapper()
        self._ever_opened = False
        self._is_open = False
        self._deferred_loss: str | None = None
        self._pending: tuple[int, int] | None = None   # (trigger number, fired at monotonic ns)
        self._next_due_ns = 0
        self._last_frame_ns = 0
        self._last_alive_ns = 0
        self._last_trigger_missed = False
        self._fps_window_start = 0
        self._fps_window_frames = 0
        self.triggers_fired = 0

    # --- device hooks -----------------------------------------------------------------------------

    @abstractmethod
    def _open_device(self) -> None:
        """Open, configure and start streaming; raise CameraError naming what failed."""

    @abstractmethod
    def _close_device(self) -> None:
        """Stop streaming and release the device; must not raise."""

    @abstractmethod
    def _pop(self, timeout_s: float) -> RawFrame | None:
        """Wait up to `timeout_s` for one buffer; raise CameraLost on a stream/device error."""

    @abstractmethod
    def _fire_software_trigger(self) -> None:
        """Send one software trigger; raise CameraLost when the command fails."""

    @abstractmethod
    def _probe(self) -> None:
        """Read something over the control channel; raise CameraLost when the device does not answer."""

    def _control_lost(self) -> str | None:
        """The library's own report of a lost device (for example a GigE heartbeat failure)."""
        return None

    # --- protocol ---------------------------------------------------------------------------------

    def open(self) -> None:
        self._open_device()
        self._is_open = True
        if self._ever_opened:
            self.counters["reconnects"] += 1
        self._ever_opened = True
        now = time.monotonic_ns()
        self._clock.reset()
        self._deferred_loss = None
        self._pending = None
        self._next_due_ns = now
        self._last_frame_ns = self._last_alive_ns = now
        self._last_trigger_missed = False
        self._fps_window_start, self._fps_window_frames = now, 0

    def finish_pending(self) -> Grab | None:
        """At stop, before close(): the Grab that ends a software trigger still waiting for its frame
        (its frame, or an error once `trigger.frame_timeout_ms` has passed); None when none waits."""
        while self._pending is not None:
            grab = self._grab_triggered(0.1)
            if grab is not None:
                return grab
        return None

    def close(self) -> None:
        if self._pending is not None:
            # The station is stopping (or gave up) with a trigger still waiting: say so in the log.
            self.counters["abandoned_triggers"] += 1
            self.log.warning("%s: closed while software trigger #%d waited for its frame",
                             self.describe(), self._pending[0])
            self._pending = None
        if self._is_open:
            self._is_open = False
            self._close_device()

    def grab(self, timeout_s: float) -> Grab | None:
        if self.trigger_mode == "software":
            return self._grab_triggered(timeout_s)
        return self._grab_streaming(timeout_s)

    # --- free run and hardware trigger: every frame is a part --------------------------------------

    def _grab_streaming(self, timeout_s: float) -> Grab | None:
        self._raise_if_lost()
        try:
            raw = self._pop(timeout_s)
        except CameraLost as exc:
            self._lose(str(exc))
        now = time.monotonic_ns()
        if raw is not None:
            return self._to_grab(raw, now)
        lost_after_ns = int(self.config.lost_after_ms * 1e6)
        if self.trigger_mode == "free_run":
            self.counters["timeouts"] += 1
            if now - self._last_frame_ns > lost_after_ns:
                self._lose(f"no frame for {(now - self._last_frame_ns) / 1e6:.0f} ms "
                           f"(lost_after_ms = {self.config.lost_after_ms:g})")
        elif now - self._last_alive_ns > lost_after_ns:
            # A hardware-triggered camera is silent whenever the line is: ask the device instead.
            try:
                self._probe()
            except CameraLost as exc:
                self._lose(str(exc))
            self._last_alive_ns = now
        return None

    # --- software trigger: one trigger per part, each ends as one Grab -----------------------------

    def _grab_triggered(self, timeout_s: float) -> Grab | None:
        if self._pending is None:
            self._raise_if_lost()
            wait_ns = self._next_due_ns - time.monotonic_ns()
            if wait_ns > timeout_s * _NS_PER_S:
                time.sleep(timeout_s)
                return None
            if wait_ns > 0:
                time.sleep(wait_ns / _NS_PER_S)
            period_ns = int(_NS_PER_S / self.config.trigger.rate_parts_per_s)
            now = time.monotonic_ns()
            self._next_due_ns = max(self._next_due_ns + period_ns, now - period_ns)
            stale = self._discard_queued()
            if stale:
                self.counters["late_frames"] += stale
                self.log.warning("%s: discarded %d frame(s) that came after their trigger's timeout",
                                 self.describe(), stale)
            self.triggers_fired += 1
            self.counters["triggers"] += 1
            number, fired_ns = self.triggers_fired, time.monotonic_ns()
            try:
                self._fire_software_trigger()
            except CameraLost as exc:
                self.counters["trigger_failures"] += 1
                self._deferred_loss = f"software trigger failed: {exc}"
                return Grab(image=None, source=self._source(number), t_capture_ns=fired_ns,
                            error=f"software trigger #{number} could not be sent: {exc}",
                            meta={"trigger": number})
            self._pending = (number, fired_ns)
        number, fired_ns = self._pending
        deadline_ns = fired_ns + int(self.config.trigger.frame_timeout_ms * 1e6)
        remaining_s = max(0.0, (deadline_ns - time.monotonic_ns()) / _NS_PER_S)
        try:
            raw = self._pop(min(timeout_s, remaining_s) or 0.001)
        except CameraLost as exc:
            self._pending = None
            self._deferred_loss = str(exc)
            return Grab(image=None, source=self._source(number), t_capture_ns=fired_ns,
                        error=f"camera lost while software trigger #{number} waited: {exc}",
                        meta={"trigger": number})
        now = time.monotonic_ns()
        if raw is not None:
            self._pending = None
            self._last_trigger_missed = False
            raw.meta["trigger"] = number
            return self._to_grab(raw, now, number=number)
        if now < deadline_ns:
            return None
        self._pending = None
        self._last_trigger_missed = True
        self.counters["timeouts"] += 1
        self.log.warning("%s: no frame within %g ms of software trigger #%d", self.describe(),
                         self.config.trigger.frame_timeout_ms, number)
        return Grab(image=None, source=self._source(number), t_capture_ns=fired_ns,
                    error=f"no frame within {self.config.trigger.frame_timeout_ms:g} ms of software "
                          f"trigger #{number}", meta={"trigger": number})

    def _discard_queued(self) -> int:
        """Drop frames already waiting (late answers to an earlier trigger) before a new trigger."""
        dropped = 0
        while dropped < 64:
            raw = self._pop(0.0)
            if raw is None:
                break
            dropped += 1
        return dropped

    # --- shared -----------------------------------------------------------------------------------

    def _raise_if_lost(self) -> None:
        if self._deferred_loss is not None:
            reason, self._deferred_loss = self._deferred_loss, None
            self._lose(reason)
        reason = self._control_lost()
        if reason is not None:
            self._lose(reason)
        if self.trigger_mode == "software" and self._last_trigger_missed:
            silent_ns = time.monotonic_ns() - self._last_frame_ns
            if silent_ns > self.config.lost_after_ms * 1e6:
                self._lose(f"no frame for {silent_ns / 1e6:.0f} ms of software triggers "
                           f"(lost_after_ms = {self.config.lost_after_ms:g})")

    def _lose(self, reason: str) -> None:
        self.counters["lost"] += 1
        self.log.error("%s: camera lost: %s", self.describe(), reason)
        raise CameraLost(f"{self.describe()}: {reason}")

    def _source(self, number: int | None = None) -> str:
        return f"{self.describe()}#{number}" if number is not None else self.describe()

    def _to_grab(self, raw: RawFrame, now_ns: int, *, number: int | None = None) -> Grab:
        self._last_frame_ns = self._last_alive_ns = now_ns
        arrival = raw.arrival_ns or now_ns
        t_ns = (self._clock.to_monotonic(raw.device_timestamp_ns, arrival)
                if self.config.use_camera_timestamps else arrival)
        meta = dict(raw.meta)
        if raw.frame_id is not None:
            meta["frame_id"] = raw.frame_id
        if raw.device_timestamp_ns:
            meta["device_timestamp_ns"] = raw.device_timestamp_ns
        if raw.error is not None:
            self.counters["bad_frames"] += 1
            return Grab(image=None, source=self._source(number if number else raw.frame_id),
                        t_capture_ns=t_ns, error=raw.error, meta=meta)
        self.counters["frames"] += 1
        self._count_fps(now_ns)
        return Grab(image=raw.image, source=self._source(number if number else raw.frame_id),
                    t_capture_ns=t_ns, meta=meta)

    def _count_fps(self, now_ns: int) -> None:
        self._fps_window_frames += 1
        elapsed = now_ns - self._fps_window_start
        if elapsed >= _NS_PER_S:
            self.counters["fps"] = round(self._fps_window_frames * _NS_PER_S / elapsed, 1)  # type: ignore[assignment]
            self._fps_window_start, self._fps_window_frames = now_ns, 0
