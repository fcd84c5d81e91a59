"""The `plc_slow` alarm: raised by one device reply slower than the part tolerance, cleared by a run of timely ones.

A reply slower than `reject.late_tolerance_ms` means an on sent exactly at its due time would be
confirmed late, so the alarm rises at the first one (the parts concerned are logged `late` by the
pulse book). It clears only after `reject.plc_slow_clear_after` replies in a row came within the
tolerance, so a PLC that is slow every other scan does not make the alarm flap. The monitor only
judges what it is told; the reject output's worker feeds it every reply's round trip.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

ALARM = "plc_slow"

AlarmHook = Callable[[str, str | None], None]


class SlowReplyMonitor:
    def __init__(self, *, tolerance_ns: int, clear_after: int, on_alarm: AlarmHook, device: str) -> None:
        self.tolerance_ns = tolerance_ns
        self.clear_after = clear_after
        self.on_alarm = on_alarm
        self.device = device
        self.raised = False
        self.timely_in_a_row = 0
        self.slow_replies = 0
        self.worst_ms = 0.0

    def update(self, *, tolerance_ns: int, clear_after: int) -> None:
        """New limits (reload); an alarm that is up stays up until the new run of timely replies."""
        self.tolerance_ns, self.clear_after = tolerance_ns, clear_after

    def reply(self, round_trip_ns: int) -> None:
        """One request answered `round_trip_ns` after it went out."""
        if round_trip_ns > self.tolerance_ns:
            self.slow_replies += 1
            self.timely_in_a_row = 0
            self.worst_ms = max(self.worst_ms, round_trip_ns / 1e6)
            if not self.raised:
                self.raised = True
                self.on_alarm(ALARM, f"{self.device} answered in {round_trip_ns / 1e6:.1f} ms, slower than the "
                                     f"{self.tolerance_ns / 1e6:g} ms tolerance: rejects are confirmed late")
            return
        self.timely_in_a_row += 1
        if self.raised and self.timely_in_a_row >= self.clear_after:
            self.raised = False
            log.warning("%s: %d timely replies in a row (worst slow reply was %.1f ms)", self.device,
                        self.timely_in_a_row, self.worst_ms)
            self.worst_ms = 0.0
            self.on_alarm(ALARM, None)
