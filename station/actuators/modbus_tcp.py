"""The `modbus_tcp` actuator: a coil on a Modbus TCP PLC or I/O module, switched by the reject scheduler."""

from __future__ import annotations

import logging

from pymodbus.client import ModbusTcpClient

from station.actuators.base import Actuator, ActuatorError
from station.actuators.modbus_link import ModbusLink
from station.config_actuators import ModbusTcpActuatorConfig

log = logging.getLogger("station.actuator.modbus_tcp")


class ModbusTcpCoil(Actuator):
    kind = "modbus_tcp"

    def __init__(self, config: ModbusTcpActuatorConfig, *, name: str = "reject") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.link = ModbusLink(
            lambda: ModbusTcpClient(config.host, port=config.port, timeout=config.timeout_ms / 1000.0,
                                    retries=config.retries, reconnect_delay=0, reconnect_delay_max=0),
            endpoint=f"modbus_tcp://{config.host}:{config.port}/{config.device_id}",
            reconnect_min_ms=config.reconnect_min_ms, reconnect_max_ms=config.reconnect_max_ms)

    def describe(self) -> str:
        return f"{self.link.endpoint} coil {self.config.coil}"

    def open(self) -> None:
        self.link.connect()
        self.set_output(False)

    def set_output(self, on: bool) -> None:
        try:
            self.link.call(f"coil {self.config.coil} {'on' if on else 'off'}",
                           lambda c: c.write_coil(self.config.coil, on, device_id=self.config.device_id))
        except ActuatorError as exc:
            self.note_failure(exc)
            self.connected = self.link.connected
            raise
        self.connected = True
        self.counters["on" if on else "off"] += 1

    def close(self) -> None:
        try:
            if self.link.connected or self.link.backoff.ready():
                self.set_output(False)
        except ActuatorError as exc:
            log.error("%s: could not switch the output off on close: %s", self.describe(), exc)
        self.link.drop()
        self.connected = False
