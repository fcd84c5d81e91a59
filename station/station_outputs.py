"""The station's outputs: the reject and alarm devices, the worker thread of each, and their live swaps.

`StationOutputs` builds each configured output (`reject.actuator`, `alarm.actuator`), registers its
`OutputWorker` as a stage (`reject_output`, `alarm_output`) in the station's `StageRegistry`, and the
driver's own I/O thread too where it has one (a PLC handshake's heartbeat: `reject_plc_heartbeat`),
so the supervisor watches and restarts them like every other stage. It starts them first of all
(a killed station may have left the ejector on) and waits, boundedly, until each has driven its device
safe; it stops and closes them last. A live reload hands it a new, opened actuator of the same kind:
the new worker takes over from the next command, the old one finishes the pulse it is giving, and the
old actuator comes back to the caller to close. Which outputs show the station's alarm code is
`alarm_outputs()` (housekeeping drives them).
"""

from __future__ import annotations

import logging
from typing import Callable

from station.actuators import build_actuator
from station.actuators.base import Actuator
from station.config import StationConfig
from station.output_worker import AlarmHook, OutputWorker, ReportSink
from station.stage import Stage
from station.stage_registry import StageRegistry, StageSpec

log = logging.getLogger(__name__)

# How long start-up waits for each output's first attempt to drive it safe before loading the model.
OPEN_WAIT_S = 5.0
ROLES = ("reject", "alarm")


class StationOutputs:
    def __init__(self, stages: StageRegistry, *, config: Callable[[], StationConfig], on_report: ReportSink,
                 on_alarm: AlarmHook, reject_worker_changed: Callable[[OutputWorker], None]) -> None:
        self._stages = stages
        self._config = config  # the station's current config (a reload replaces it)
        self._on_report = on_report
        self._on_alarm = on_alarm
        self._reject_worker_changed = reject_worker_changed  # the scheduler hands later parts to this one

    def worker(self, role: str) -> OutputWorker | None:
        thread = self._stages.get(f"{role}_output")
        assert thread is None or isinstance(thread, OutputWorker)
        return thread

    def actuator(self, role: str) -> Actuator | None:
        worker = self.worker(role)
        return worker.actuator if worker is not None else None

    def alarm_outputs(self) -> list[OutputWorker]:
        """The outputs that show the alarm code: the alarm lamp (on while any alarm is up), and a PLC
        handshake reject link, whose ALARM_CODE register tells image_quality apart from the others."""
        reject = self.worker("reject")
        return [w for w in (self.worker("alarm"), reject if reject is not None and reject.owns_timing else None)
                if w is not None]

    # ---- start and stop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Build every configured output with its worker and wait (boundedly) until each drove its device safe."""
        cfg = self._config()
        self._register(build_actuator(cfg.reject.actuator, name="reject"), "reject")
        if cfg.alarm.actuator is not None:
            self._register(build_actuator(cfg.alarm.actuator, name="alarm"), "alarm")
        workers = []
        for role in ROLES:
            if f"{role}_output" in self._stages.names():
                worker = self._stages.build(f"{role}_output")
                assert isinstance(worker, OutputWorker)
                worker.start()
                workers.append(worker)
        for worker in workers:
            if not worker.wait_opened(OPEN_WAIT_S):
                log.error("%s output %s: no answer within %g s at start; going on, its worker keeps trying",
                          worker.role, worker.actuator.describe(), OPEN_WAIT_S)

    def stop(self) -> None:
        """Stop the output workers, then close each output (drives it off) from this thread."""
        for worker in (w for w in map(self.worker, ROLES) if w is not None):
            if worker.is_alive():
                worker.stop()
                worker.join(timeout=5.0)
            with worker.actuator.lock:
                worker.actuator.close()

    def _register(self, actuator: Actuator, role: str) -> None:
        name = f"{role}_output"

        def current_actuator() -> Actuator:
            # The actuator of the worker in place (a reload may have swapped it); the first one at start.
            return self.actuator(role) or actuator

        def adopt(new: Stage, dead: Stage) -> None:
            # It may have died inside a command: the new worker re-establishes the output (off first).
            new.adopt(dead)
            if role == "reject":
                assert isinstance(new, OutputWorker)
                self._reject_worker_changed(new)

        self._stages.register(name, StageSpec(factory=lambda: self.new_worker(current_actuator(), role),
                                              adopt=adopt))
        if actuator.io_thread_name is not None:
            # The driver's own I/O thread (a handshake heartbeat): the driver starts and stops it with the device.
            self._stages.register(f"{role}_{actuator.io_thread_name}", StageSpec(
                factory=lambda: current_actuator().new_io_thread(),
                adopt=lambda new, _dead: current_actuator().adopt_io_thread(new),
                current=lambda: current_actuator().io_thread()))

    def new_worker(self, actuator: Actuator, role: str, *, opened: bool = False) -> OutputWorker:
        r = self._config().reject
        return OutputWorker(actuator, role=role, pulse_ms=r.pulse_ms, late_tolerance_ms=r.late_tolerance_ms,
                            plc_slow_clear_after=r.plc_slow_clear_after, on_report=self._on_report,
                            on_alarm=self._on_alarm, opened=opened)

    # ---- live swaps (reload) -------------------------------------------------------------------------
    def replace_alarm(self, actuator: Actuator, *, level: int) -> Actuator | None:
        """Drive the alarm lamp through `actuator` (opened by the caller) from now on, starting at `level`;
        return the previous actuator, its worker stopped, for the caller to close."""
        worker = self.new_worker(actuator, "alarm", opened=True)
        worker.set_level(level)
        worker.start()
        previous = self._stages.replace("alarm_output", worker)
        if previous is None:
            return None
        assert isinstance(previous, OutputWorker)
        previous.stop()
        previous.join(timeout=5.0)
        return previous.actuator

    def replace_reject(self, actuator: Actuator, *, finish_s: float) -> Actuator:
        """Send every later reject to `actuator` (opened by the caller); the previous output finishes the
        pulse it is giving (up to `finish_s`), its worker stops, and it is returned for the caller to close."""
        worker = self.new_worker(actuator, "reject", opened=True)
        worker.start()
        worker.mark_ready()
        previous = self._stages.replace("reject_output", worker)
        self._reject_worker_changed(worker)
        assert isinstance(previous, OutputWorker)
        if not previous.drain(finish_s):
            log.warning("the previous reject output had not finished its commands after %.1f s", finish_s)
        previous.stop()
        previous.join(timeout=5.0)
        return previous.actuator
