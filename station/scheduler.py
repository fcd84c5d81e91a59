"""The reject scheduler: hands each reject to the reject output at `t_capture + reject.delay_ms`, exactly.

Parts in flight are a heap of due times; one thread sleeps until the earliest is due (the last two
milliseconds spun for precision) and hands the part to the reject output's worker
(`station.output_worker`), which does the device I/O, the pulse width, merging and the per-part
report. This thread never waits for a device, so a slow or dead PLC cannot delay when the next part
is handed over; how late each hand-over was (the scheduler's own jitter, apart from the device's)
is kept in `handoff_lateness_ms`. Actuators whose device owns the timing (PLC handshake) get every
verdict as soon as it is made instead, with the time the part reaches the ejector as its deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque

from station.output_worker import OutputWorker
from station.precise_wait import SPIN_NS, spin_until, wait_before
from station.records import Decision, Verdict
from station.stage import IDLE_WAIT_S, Stage

log = logging.getLogger(__name__)

JITTER_WINDOW = 10_000


class RejectScheduler(Stage):
    timing_critical = True

    def __init__(self, worker: OutputWorker, *, delay_ms: float) -> None:
        super().__init__("reject-scheduler")
        self.worker = worker
        self.delay_ns = int(delay_ms * 1e6)
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, int]] = []  # (due_ns, order, seq)
        self._order = itertools.count()
        self.handoff_lateness_ms: deque[float] = deque(maxlen=JITTER_WINDOW)

    def update_timing(self, *, delay_ms: float, pulse_ms: float, late_tolerance_ms: float,
                      plc_slow_clear_after: int) -> None:
        """Applies to parts submitted from now on (SIGHUP reload); pulse and tolerance to the output's next command."""
        with self._cond:
            self.delay_ns = int(delay_ms * 1e6)
        self.worker.update_timing(pulse_ms=pulse_ms, late_tolerance_ms=late_tolerance_ms,
                                  plc_slow_clear_after=plc_slow_clear_after)

    @property
    def in_flight(self) -> int:
        """Parts whose command is not done: scheduled here, or waiting at / being sent by the output."""
        with self._cond:
            scheduled = len(self._heap)
        return scheduled + self.worker.pending

    def submit(self, verdict: Verdict) -> None:
        if self.worker.owns_timing:
            now = time.monotonic_ns()
            self.worker.send_verdict(verdict, due_ns=now, deadline_ns=verdict.t_capture_ns + self.delay_ns)
            return
        if verdict.decision is not Decision.REJECT:
            return
        with self._cond:
            heapq.heappush(self._heap, (verdict.t_capture_ns + self.delay_ns, next(self._order), verdict.seq))
            self._cond.notify()

    def swap_worker(self, new: OutputWorker) -> OutputWorker:
        """Hand every later part to `new` (live reload of the reject actuator); return the old worker, which
        finishes the pulse it is giving on its own device before the caller stops it."""
        with self._cond:
            old, self.worker = self.worker, new
        return old

    def adopt(self, old: Stage) -> None:
        """Take over the parts of a scheduler whose thread died, before start()."""
        assert isinstance(old, RejectScheduler)
        with old._cond:
            self._heap, self._order = old._heap, old._order
            self.handoff_lateness_ms = old.handoff_lateness_ms
            old._heap = []

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every scheduled part has been handed over and its command is done."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.in_flight == 0:
                return True
            time.sleep(0.01)
        return self.in_flight == 0

    def step(self) -> bool:
        with self._cond:
            if self.stop_event.is_set() and not self._heap:
                return False  # every scheduled part was handed over
            now = time.monotonic_ns()
            next_ns = self._heap[0][0] if self._heap else None
            if next_ns is None or next_ns - now > SPIN_NS:
                self._cond.wait(IDLE_WAIT_S if next_ns is None else wait_before(next_ns, now, IDLE_WAIT_S))
                return True
        spin_until(next_ns)  # the last stretch: a condition wait can wake late
        self._hand_over_due()
        return True

    def _hand_over_due(self) -> None:
        now = time.monotonic_ns()
        with self._cond:
            due_items = []
            while self._heap and self._heap[0][0] <= now:
                due_items.append(heapq.heappop(self._heap))
            worker = self.worker
        for due_ns, _, seq in due_items:
            worker.request_pulse(seq, due_ns)
            self.handoff_lateness_ms.append((time.monotonic_ns() - due_ns) / 1e6)
