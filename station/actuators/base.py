"""The actuator interface every reject/alarm output implements, its errors, and reconnect backoff.

These are the device drivers: blocking calls, one at a time. In the station each device is driven
by its own `station.output_worker.OutputWorker` thread, which calls `set_output(True)` when a part is
due and `set_output(False)` `pulse_ms` after the device confirmed the on; actuators whose device owns
the timing (the PLC handshake) set `owns_timing = True` and get `send_verdict()` for every part
instead. Errors are
split the way the plant needs them told apart: the transport failed (`ActuatorTransportError`),
the device answered with an error (`ActuatorDeviceError`), or nothing was sent because the link is
down and backing off (`ActuatorNotConnected`).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter

from station.records import Verdict
from station.stage import Stage

log = logging.getLogger(__name__)


class ActuatorError(RuntimeError):
    """Base of every actuator failure."""


class ActuatorTransportError(ActuatorError):
    """Connection refused or lost, timeout, garbled reply: the command may not have arrived."""


class ActuatorDeviceError(ActuatorError):
    """The device answered, with an error (e.g. a Modbus exception reply)."""


class ActuatorNotConnected(ActuatorError):
    """The link is down and the reconnect backoff has not elapsed: nothing was sent."""


class Backoff:
    """When the next reconnect attempt may go out after a failure.

    Idle (nothing waiting to be sent) the delay doubles from `min_s` up to `max_s`, so a PLC that is
    down for hours is not hammered. Busy (a part's command, a pending off or an alarm-lamp change is
    waiting) an attempt may go out every `busy_s` (never later than the idle delay), so the first
    command after the device answers again goes out within about `busy_s`.
    """

    def __init__(self, min_s: float, max_s: float, *, busy_s: float = 0.1) -> None:
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self.busy_s = busy_s
        self._delay_s = min_s
        self._failed_at: float | None = None
        self._wait_s = 0.0  # idle delay that applies after the last failure

    def wait_s(self, *, busy: bool = False, now: float | None = None) -> float:
        """Seconds until the next attempt may go out (0: now)."""
        if self._failed_at is None:
            return 0.0
        now = time.monotonic() if now is None else now
        wait = min(self.busy_s, self._wait_s) if busy else self._wait_s
        return max(0.0, self._failed_at + wait - now)

    def ready(self, *, busy: bool = False, now: float | None = None) -> bool:
        return self.wait_s(busy=busy, now=now) <= 0.0

    def failed(self, now: float | None = None) -> float:
        """Record a failed attempt; return the idle delay before the next one."""
        self._failed_at = time.monotonic() if now is None else now
        self._wait_s = self._delay_s
        self._delay_s = min(self._delay_s * 2, self.max_s)
        return self._wait_s

    def succeeded(self) -> None:
        self._delay_s = self.min_s
        self._failed_at = None
        self._wait_s = 0.0


class Actuator(ABC):
    """One physical output (or PLC link). Implementations must be safe to call from one thread at a time;
    the station guards each actuator with its own lock."""

    kind: str = "abstract"
    owns_timing: bool = False
    # Least time between two attempts while commands wait (after a device error reply the link stays up,
    # so no backoff holds the next try back); drivers set it from their `reconnect_busy_ms`.
    retry_interval_s: float = 0.1
    # A thread of the driver's own that talks to the device beside the output worker (the PLC handshake's
    # heartbeat), named for the supervisor; None: the driver has none.
    io_thread_name: str | None = None

    def __init__(self) -> None:
        # Re-entrant so that an actuator's own housekeeping (tick, heartbeat) may take it whether or not
        # the caller already holds it.
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.connected = False
        self.last_error: str | None = None

    @abstractmethod
    def open(self) -> None:
        """Connect and drive the output off. Raise ActuatorError if the device cannot be reached;
        the station keeps running and later calls reconnect by themselves."""

    def open_safe(self) -> None:
        """Connect and put the device in its safe state before the station can decide anything (the
        first thing `station run` does, before the model loads): an output off, a PLC handshake with
        READY = 0. `mark_ready()` follows once the station decides parts. Raises like `open()`."""
        self.open()

    def mark_ready(self) -> None:
        """The station now decides parts (a handshake tells the PLC, I/O; outputs have nothing to do)."""

    def release(self) -> None:
        """Let go of the device without writing to it (after `open_safe()` by a caller that hands the output
        on to another owner); `close()` is the one that drives the output off."""

    def io_thread(self) -> Stage | None:
        """The driver's own I/O thread while the device is open (the supervisor watches it); None without."""
        return None

    def new_io_thread(self) -> Stage:
        """A fresh, unstarted I/O thread, for the supervisor's restart of one that died."""
        raise NotImplementedError(f"{self.kind} has no I/O thread of its own")

    def adopt_io_thread(self, new: Stage) -> None:
        """Run `new` (from `new_io_thread`, started by the caller next) in place of the thread that died."""
        raise NotImplementedError(f"{self.kind} has no I/O thread of its own")

    def link_wait_s(self, *, busy: bool) -> float:
        """Seconds until a command may try to reconnect a link that is down (0: the link is up or an
        attempt may go out now). `busy`: something is waiting to be sent (see `Backoff`)."""
        return 0.0

    @abstractmethod
    def set_output(self, on: bool) -> None:
        """Drive the output; raise an ActuatorError subclass on failure."""

    def set_alarm_level(self, code: int) -> None:
        """Show the station's alarm code (0: healthy): a plain output is on for any alarm; a PLC handshake
        overrides this to write the code itself (it tells image_quality apart from the other alarms)."""
        self.set_output(code != 0)

    def send_verdict(self, verdict: Verdict) -> None:
        """Hand one part's verdict to a device that owns reject timing (handshake actuators only)."""
        raise NotImplementedError(f"{self.kind} does not take verdicts")

    @abstractmethod
    def close(self) -> None:
        """Drive the output off (best effort, errors logged) and release the device."""

    def describe(self) -> str:
        return self.kind

    def note_failure(self, exc: ActuatorError) -> None:
        self.counters[f"error_{type(exc).__name__}"] += 1
        self.last_error = str(exc)


class SwitchedOutput(Actuator):
    """An on/off output (coil, relay): blocking writes through a transport with a reconnect backoff.

    Subclasses provide `_connect()`, `_write(on)`, `_disconnect()`, `_link_up()` and `_backoff()`.
    `state` is what the device last confirmed (None: unknown, after a failed write). Retrying an off
    that failed, and sending no on before that off is confirmed, is the policy of the station's
    output worker (`station.output_worker`), which owns the device while the station runs;
    `close()` makes its own attempts to leave the output off.
    """

    close_attempts = 2

    def __init__(self) -> None:
        super().__init__()
        self.state: bool | None = None  # last state the device confirmed; None: unknown

    @abstractmethod
    def _connect(self) -> None:
        """Open the transport now, ignoring any backoff; raise ActuatorError on failure."""

    @abstractmethod
    def _write(self, on: bool) -> None:
        """Send one on/off command (reconnecting when the backoff allows); raise ActuatorError."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the transport; never raises."""

    @abstractmethod
    def _link_up(self) -> bool:
        """Whether the transport is open right now."""

    @abstractmethod
    def _backoff(self) -> Backoff:
        """The reconnect backoff of the transport."""

    def link_wait_s(self, *, busy: bool) -> float:
        return 0.0 if self._link_up() else self._backoff().wait_s(busy=busy)

    def open(self) -> None:
        try:
            self._connect()
        except ActuatorError as exc:
            self.note_failure(exc)
            self.connected = False
            raise
        self.set_output(False)

    def set_output(self, on: bool) -> None:
        try:
            self._write(on)
        except ActuatorError as exc:
            self.note_failure(exc)
            self.connected = self._link_up()
            self.state = None
            raise
        self.connected = True
        self.state = on
        self.counters["on" if on else "off"] += 1

    def release(self) -> None:
        self._disconnect()
        self.connected = False

    def close(self) -> None:
        for attempt in range(self.close_attempts):
            try:
                if not self._link_up():
                    self._connect()
                self.set_output(False)
                break
            except ActuatorError as exc:
                self.note_failure(exc)
                if attempt + 1 == self.close_attempts:
                    log.error("%s: could not switch the output off on close; it may still be ON: %s",
                              self.describe(), exc)
        self._disconnect()
        self.connected = False
