"""Reporting a fault that repeats many times a second: an alarm that does not flap, error lines that do not flood.

A full disk fails a write, frees a little space by pruning, lets the next write through and fails
again: reported naively, the alarm is raised and cleared several times a second and the service log
gets a line per failure. `LatchedAlarm` raises at the first failure (an operator must know at once)
but clears only once the fault has been absent for `clear_after_s` without a break. `RateLimitedLog`
writes the first line of a kind at once, then at most one line per `interval_s` saying how many more
there were. Both are driven by their owner's thread; `tick()` lets time do its part when nothing new
is reported.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

AlarmHook = Callable[[str, str | None], None]


class LatchedAlarm:
    """One named alarm with hysteresis: raised on the first problem, cleared after a quiet period."""

    def __init__(self, name: str, hook: AlarmHook, *, clear_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.hook = hook
        self.clear_after_s = clear_after_s
        self.clock = clock
        self.raised = False
        self.message: str | None = None
        self.raised_count = 0
        self.cleared_count = 0
        self._fine_since: float | None = None

    def update_clear_after(self, clear_after_s: float) -> None:
        """A new quiet period before the alarm clears (live reload); an alarm already quiet counts from
        when it became fine."""
        self.clear_after_s = clear_after_s

    def update(self, problem: str | None) -> None:
        """Report the current state: a problem (raise, or refresh the message) or None (all fine now)."""
        if problem is not None:
            self._fine_since = None
            if not self.raised:
                self.raised = True
                self.raised_count += 1
            if problem != self.message:
                self.message = problem
                self.hook(self.name, problem)  # an alarm already up only has its message refreshed
            return
        if self.raised and self._fine_since is None:
            self._fine_since = self.clock()
        self.tick()

    def tick(self) -> None:
        """Clear the alarm once it has been fine for `clear_after_s` without a break."""
        if self.raised and self._fine_since is not None and self.clock() - self._fine_since >= self.clear_after_s:
            self.raised = False
            self.message = None
            self._fine_since = None
            self.cleared_count += 1
            self.hook(self.name, None)


class RateLimitedLog:
    """Error lines by kind: the first at once, then one per `interval_s` with the count of the rest."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.lines = 0

    def log(self, level: int, kind: str, message: str) -> None:
        now = self.clock()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more like it in the last {self.interval_s:g} s)" if more else ""
        self.logger.log(level, "%s%s", message, suffix)
        self.lines += 1
        self._next[kind] = now + self.interval_s

    def error(self, kind: str, message: str) -> None:
        self.log(logging.ERROR, kind, message)

    def flush(self) -> None:
        """One line per kind that still has suppressed lines (at stop, so no count is lost)."""
        for kind, more in sorted(self._suppressed.items()):
            self.logger.error("%s: %d more error(s) like the last one reported", kind, more)
            self.lines += 1
        self._suppressed.clear()
