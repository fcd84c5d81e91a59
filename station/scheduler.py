"""The reject scheduler: fires each reject at `t_capture + reject.delay_ms` for `reject.pulse_ms`.

Parts in flight are a heap of timed commands; one thread sleeps until the earliest is due (the
last two milliseconds spun for precision), switches the output and reports fired-at minus due-at
and the actuator's result per part. Pulses that overlap are merged (the output stays on until the
last one ends). An output that fails to switch off raises the `reject_output_stuck` alarm and the
actuator retries the off on every tick until the device confirms it: the ejector is never left
latched on knowingly. Actuators that own the timing themselves
(PLC handshake) get every verdict as soon as it is made instead.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

from station.actuators.base import Actuator, ActuatorError, ActuatorNotConnected
from station.records import MERGED_NOTE, ActuationReport, ActuatorResult, Decision, Verdict

log = logging.getLogger("station.scheduler")

ReportSink = Callable[[ActuationReport], None]
AlarmHook = Callable[[str, str | None], None]  # (alarm name, message or None to clear)

_SPIN_NS = 2_000_000


class RejectScheduler(threading.Thread):
    def __init__(self, actuator: Actuator, *, delay_ms: float, pulse_ms: float, late_tolerance_ms: float,
                 on_report: ReportSink, on_alarm: AlarmHook) -> None:
        super().__init__(name="reject-scheduler", daemon=True)
        self.actuator = actuator
        self.delay_ns = int(delay_ms * 1e6)
        self.pulse_ns = int(pulse_ms * 1e6)
        self.late_tolerance_ns = int(late_tolerance_ms * 1e6)
        self.on_report = on_report
        self.on_alarm = on_alarm
        self.stop_event = threading.Event()
        self.last_beat_ns = time.monotonic_ns()
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, int, Verdict]] = []  # (due_ns, order, seq, verdict)
        self._order = itertools.count()
        self._output_on = False
        self._off_due_ns: int | None = None
        self.pulses = 0
        self.merged = 0
        self.failures = 0

    def update_timing(self, *, delay_ms: float, pulse_ms: float, late_tolerance_ms: float) -> None:
        """Applies to parts submitted from now on (SIGHUP reload)."""
        with self._cond:
            self.delay_ns = int(delay_ms * 1e6)
            self.pulse_ns = int(pulse_ms * 1e6)
            self.late_tolerance_ns = int(late_tolerance_ms * 1e6)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._heap) + (1 if self._off_due_ns is not None else 0)

    def submit(self, verdict: Verdict) -> None:
        if self.actuator.owns_timing:
            due = time.monotonic_ns()
        elif verdict.decision is Decision.REJECT:
            due = verdict.t_capture_ns + self.delay_ns
        else:
            return
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), verdict.seq, verdict))
            self._cond.notify()

    def swap_actuator(self, new: Actuator) -> Actuator:
        """Send every later command to `new` (live reload); return the old actuator.

        A pulse the old output is giving keeps going there until the caller closes it; the next reject
        must switch `new` on itself rather than merge into a pulse on another device.
        """
        with self._cond:
            old, self.actuator = self.actuator, new
            self._output_on = False
        return old

    def adopt(self, old: RejectScheduler) -> None:
        """Take over the commands (and a pending 'off') of a scheduler whose thread died, before start()."""
        with old._cond:
            self._heap, self._order = old._heap, old._order
            self._output_on, self._off_due_ns = old._output_on, old._off_due_ns
            self.pulses, self.merged, self.failures = old.pulses, old.merged, old.failures
            old._heap = []

    def stop(self) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every scheduled command has fired and the output is off."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.in_flight == 0:
                return True
            time.sleep(0.01)
        return self.in_flight == 0

    def run(self) -> None:
        while True:
            self.last_beat_ns = time.monotonic_ns()
            with self._cond:
                if self.stop_event.is_set() and not self._heap and self._off_due_ns is None:
                    return
                next_ns = min([t for t in (self._heap[0][0] if self._heap else None, self._off_due_ns)
                               if t is not None], default=None)
                now = time.monotonic_ns()
                if next_ns is None or next_ns - now > _SPIN_NS:
                    wait_s = 0.2 if next_ns is None else min(0.2, (next_ns - now - _SPIN_NS) / 1e9)
                    self._cond.wait(wait_s)
                    continue
            while time.monotonic_ns() < next_ns:
                pass  # spin the last ~2 ms: Condition.wait overshoots by up to a millisecond
            self._fire_due()

    def _fire_due(self) -> None:
        now = time.monotonic_ns()
        due_items = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now:
                due_items.append(heapq.heappop(self._heap))
            off_due = self._off_due_ns is not None and self._off_due_ns <= now
        for due, _, seq, verdict in due_items:
            if self.actuator.owns_timing:
                self._send_verdict(due, verdict)
            else:
                self._switch_on(due, seq)
        if off_due:
            self._switch_off()

    def _switch_on(self, due_ns: int, seq: int) -> None:
        end_ns = due_ns + self.pulse_ns
        if self._output_on:
            # Overlapping pulses: the ejector is already out; keep it out until this part's pulse ends.
            self.merged += 1
            with self._cond:
                self._off_due_ns = max(self._off_due_ns or 0, end_ns)
            self._report(seq, ActuatorResult.ACKNOWLEDGED, due_ns, time.monotonic_ns(), MERGED_NOTE)
            return
        result, error, fired = self._command(True)
        if result is ActuatorResult.ACKNOWLEDGED:
            self._output_on = True
            self.pulses += 1
            if fired - due_ns > self.late_tolerance_ns:
                result = ActuatorResult.LATE
        if result is not ActuatorResult.NOT_SENT:
            # After a failed "on" the coil may still have switched: schedule the off all the same.
            with self._cond:
                self._off_due_ns = max(self._off_due_ns or 0, end_ns)
        self._report(seq, result, due_ns, fired, error)

    def _switch_off(self) -> None:
        result, error, _ = self._command(False)
        with self._cond:
            # The pulse is over either way: a later reject must send its own "on", never merge into
            # an output whose state is unknown.
            self._output_on = False
            self._off_due_ns = None
        if result is ActuatorResult.ACKNOWLEDGED:
            self.on_alarm("reject_output_stuck", None)
        else:
            # The actuator keeps the off pending and retries it on every tick() until the device
            # confirms; the alarm stays up until then (cleared by the station's housekeeping).
            self.on_alarm("reject_output_stuck", f"reject output could not be switched off: {error}")

    def _send_verdict(self, due_ns: int, verdict: Verdict) -> None:
        start = time.monotonic_ns()
        try:
            with self.actuator.lock:
                self.actuator.send_verdict(verdict)
        except ActuatorNotConnected as exc:
            self._failed(exc)
            self._report(verdict.seq, ActuatorResult.NOT_SENT, due_ns, None, str(exc))
            return
        except ActuatorError as exc:
            self._failed(exc)
            self._report(verdict.seq, ActuatorResult.FAILED, due_ns, start, str(exc))
            return
        self.on_alarm("reject_actuator", None)
        fired = time.monotonic_ns()
        late = fired - due_ns > self.late_tolerance_ns
        self._report(verdict.seq, ActuatorResult.LATE if late else ActuatorResult.ACKNOWLEDGED, due_ns, fired, None)

    def _command(self, on: bool) -> tuple[ActuatorResult, str | None, int]:
        fired = time.monotonic_ns()
        try:
            with self.actuator.lock:
                self.actuator.set_output(on)
        except ActuatorNotConnected as exc:
            self._failed(exc)
            return ActuatorResult.NOT_SENT, str(exc), fired
        except ActuatorError as exc:
            self._failed(exc)
            return ActuatorResult.FAILED, str(exc), fired
        self.on_alarm("reject_actuator", None)
        return ActuatorResult.ACKNOWLEDGED, None, fired

    def _failed(self, exc: ActuatorError) -> None:
        self.failures += 1
        self.on_alarm("reject_actuator", f"{self.actuator.describe()}: {exc}")

    def _report(self, seq: int, result: ActuatorResult, due_ns: int | None, fired_ns: int | None,
                error: str | None) -> None:
        self.on_report(ActuationReport(seq=seq, result=result, due_ns=due_ns, fired_ns=fired_ns, error=error))
