"""The `log` actuator: writes every output change to the station log instead of driving hardware."""

from __future__ import annotations

import logging

from station.actuators.base import Actuator
from station.config_actuators import LogActuatorConfig

log = logging.getLogger(__name__)


class LogActuator(Actuator):
    kind = "log"

    def __init__(self, config: LogActuatorConfig, *, name: str = "reject") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.state = False

    def open(self) -> None:
        self.state = False
        self.connected = True
        log.info("%s output (log only) opened, off", self.name)

    def set_output(self, on: bool) -> None:
        self.state = on
        self.counters["on" if on else "off"] += 1
        log.debug("%s output would switch %s", self.name, "ON" if on else "off")

    def close(self) -> None:
        self.state = False
        self.connected = False
        log.info("%s output (log only) closed, off", self.name)
