"""The supervisor: watches every stage thread, restarts a dead one, and says when the station must be restarted.

Every stage is a `station.stage.Stage`, and the supervisor asks each the same questions: is its thread
alive; if not, did a finite source end (`finished`: done, not dead); if alive, is it hung (`hang()`):
busy in one step for longer than its limit (`service.inference_hang_s` for the inference worker's
scoring of one frame, `service.stall_s` for any other stage), or, while not busy, no heartbeat for
longer than `service.stall_s`. A stage whose thread has exited (an uncaught exception) is restarted
in-process through `Station.restart_stage`, which builds the replacement from the stage registry,
at most `service.max_restarts` times per stage within `service.restart_window_s`. A hung thread
cannot be killed in Python, and a second thread beside it would share its camera or queue, so a hang
is not "restarted": `check()` returns False, the `stage_hung` alarm goes up, the service stops its
watchdog pings and systemd restarts the whole process. When the restart limit is reached the
supervisor gives up: the `supervisor` alarm goes up (alarm output, STATUS=) and pings stop too.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from station.app import Station
    from station.config import ServiceSection

log = logging.getLogger(__name__)

HUNG_ALARM = "stage_hung"
GAVE_UP_ALARM = "supervisor"


class Supervisor:
    def __init__(self, station: Station, *, stall_s: float = 10.0, inference_hang_s: float = 10.0,
                 max_restarts: int = 3, restart_window_s: float = 300.0,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.station = station
        self.stall_ns = int(stall_s * 1e9)
        self.busy_limits_ns = {"inference": int(inference_hang_s * 1e9)}  # other stages: stall_ns
        self.max_restarts = max_restarts
        self.restart_window_ns = int(restart_window_s * 1e9)
        self.clock_ns = clock_ns
        self.restart_times: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        self.restarts_total = 0
        self.hung: dict[str, str] = {}
        self.gave_up: str | None = None  # why, once the supervisor has given up

    @classmethod
    def from_config(cls, station: Station, service: ServiceSection) -> Supervisor:
        return cls(station, stall_s=service.stall_s, inference_hang_s=service.inference_hang_s,
                   max_restarts=service.max_restarts, restart_window_s=service.restart_window_s)

    def update_limits(self, service: ServiceSection) -> None:
        """New thresholds after a reload; the restart history is kept."""
        self.stall_ns = int(service.stall_s * 1e9)
        self.busy_limits_ns = {"inference": int(service.inference_hang_s * 1e9)}
        self.max_restarts = service.max_restarts
        self.restart_window_ns = int(service.restart_window_s * 1e9)

    def busy_limit_ns(self, name: str) -> int:
        """How long one step of stage `name` may take: every inference worker (`inference`, `inference-2`...)
        has the inference limit, the other stages the stall limit."""
        return self.busy_limits_ns.get("inference" if name.startswith("inference") else name, self.stall_ns)

    # ---- one inspection ------------------------------------------------------------------------------
    def check(self) -> bool:
        """Inspect every stage once and restart dead ones within the limit.

        True while every stage is alive and moving and the supervisor has not given up: only then may
        the service tell systemd's watchdog that all is well.
        """
        now = self.clock_ns()
        moving = True
        hung: dict[str, str] = {}
        for name, stage in self.station.stages().items():
            if not stage.is_alive():
                if stage.finished.is_set():
                    continue  # a finite source (replay) ended: done, not dead
                if not self._restart(name, now):
                    moving = False
                continue
            problem = stage.hang(now, stall_ns=self.stall_ns, busy_ns=self.busy_limit_ns(name))
            if problem is not None:
                hung[name] = problem
        self._report_hung(hung)
        return moving and not hung and self.gave_up is None

    def _report_hung(self, hung: dict[str, str]) -> None:
        for name in hung.keys() - self.hung.keys():
            log.critical("stage %s is hung (%s): watchdog pings stop so systemd restarts the service",
                         name, hung[name])
            self.station.record_event("CRITICAL", "stage_hung", f"{name}: {hung[name]}")
        for name in self.hung.keys() - hung.keys():
            log.warning("stage %s is moving again", name)
        if hung or self.hung:
            # An alarm already up only has its message refreshed (no new log line).
            self.station.set_alarm(HUNG_ALARM, "; ".join(f"{k} {v}" for k, v in sorted(hung.items())) or None)
        self.hung = hung

    def _restart(self, name: str, now: int) -> bool:
        """Restart a dead stage if the rate limit allows; False when it stays dead."""
        if self.gave_up is not None:
            return False
        times = self.restart_times[name]
        while times and now - times[0] > self.restart_window_ns:
            times.popleft()
        if len(times) >= self.max_restarts:
            self._give_up(f"stage {name} died {len(times) + 1} times within "
                          f"{self.restart_window_ns / 1e9:g} s (limit {self.max_restarts} restarts)")
            return False
        times.append(now)
        self.restarts_total += 1
        log.error("stage %s has exited; restarting it (%d of %d within %g s)", name, len(times),
                  self.max_restarts, self.restart_window_ns / 1e9)
        try:
            self.station.restart_stage(name)
        except RuntimeError as exc:
            self._give_up(f"stage {name} could not be restarted: {exc}")
            return False
        return True

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        log.critical("supervisor gives up: %s; the station is unhealthy and the watchdog pings stop", why)
        self.station.set_alarm(GAVE_UP_ALARM, f"gave up: {why}")
        self.station.record_event("CRITICAL", "supervisor_gave_up", why)

    def summary(self) -> str:
        """A short phrase for STATUS=."""
        if self.gave_up is not None:
            return f"UNHEALTHY: supervisor gave up ({self.gave_up})"
        if self.hung:
            return "HUNG " + ", ".join(f"{k} ({v})" for k, v in sorted(self.hung.items()))
        return f"stages moving, {self.restarts_total} restart(s)"
