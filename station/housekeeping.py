"""Housekeeping: the stage that keeps the alarm output in step with health, and writes the summary line.

Every 100 ms it reads the station's alarm code and hands it to each output that shows it: the alarm
lamp's worker (on while any alarm is up) and a PLC handshake's reject worker, whose ALARM_CODE
register tells image_quality apart from the other alarms. It only queues the wanted level; the
output workers do the I/O and keep at it until the device confirms. Every
`station.summary_interval_s` it logs the summary line (counters, the gate, health). It is a
`station.stage.Stage` like the others, busy while it updates the outputs: if it hangs, the alarm
output stops following health, so the supervisor must see it (the `stage_hung` alarm, and the
watchdog pings stop so systemd restarts the service).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Callable

from station.actuators.plc_handshake import ALARM_IMAGE_QUALITY, ALARM_STATION_UNHEALTHY
from station.gate import ALARM as IMAGE_QUALITY_ALARM
from station.output_worker import OutputWorker
from station.stage import Stage

log = logging.getLogger(__name__)

TICK_S = 0.1  # how soon the alarm output follows a change of health


def alarm_code(alarms: Mapping[str, str]) -> int:
    """The code an alarm output shows for the active alarms (a PLC handshake's ALARM_CODE; a lamp is on for
    any code but 0): bit 0 an alarm other than image_quality (station unhealthy), bit 1 image_quality (the
    camera cannot see: stop the line). 0 when healthy."""
    code = ALARM_IMAGE_QUALITY if IMAGE_QUALITY_ALARM in alarms else 0
    if any(name != IMAGE_QUALITY_ALARM for name in alarms):
        code |= ALARM_STATION_UNHEALTHY
    return code


class Housekeeping(Stage):
    busy_doing = "updating the alarm output"

    def __init__(self, *, alarms: Callable[[], Mapping[str, str]], outputs: Callable[[], list[OutputWorker]],
                 summary: Callable[[], str], summary_interval_s: float) -> None:
        super().__init__("housekeeping")
        self.alarms = alarms
        self.outputs = outputs
        self.summary = summary
        self.summary_interval_s = summary_interval_s
        self._next_summary = time.monotonic() + summary_interval_s

    def update_summary_interval(self, summary_interval_s: float) -> None:
        """Summary lines every `summary_interval_s` from the next one on (live reload)."""
        self._next_summary += summary_interval_s - self.summary_interval_s
        self.summary_interval_s = summary_interval_s

    def adopt(self, old: Stage) -> None:
        """The summary lines keep their rhythm across a restart."""
        assert isinstance(old, Housekeeping)
        self.summary_interval_s, self._next_summary = old.summary_interval_s, old._next_summary

    def step(self) -> bool:
        if self.stop_event.wait(TICK_S):
            return False
        with self.busy():
            self.sync_alarm_output()
            if time.monotonic() >= self._next_summary:
                self._next_summary = max(self._next_summary + self.summary_interval_s, time.monotonic())
                log.info("summary: %s", self.summary())
        return True

    def sync_alarm_output(self) -> None:
        code = alarm_code(self.alarms())
        for worker in self.outputs():
            worker.set_level(code)
