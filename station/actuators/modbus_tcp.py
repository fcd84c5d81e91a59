"""The `modbus_tcp` actuator: a coil on a Modbus TCP PLC or I/O module, switched by the reject scheduler."""

from __future__ import annotations

from station.actuators.modbus_link import ModbusCoil, tcp_link
from station.config_actuators import ModbusTcpActuatorConfig


class ModbusTcpCoil(ModbusCoil):
    kind = "modbus_tcp"

    def __init__(self, config: ModbusTcpActuatorConfig, *, name: str = "reject") -> None:
        super().__init__(config, tcp_link(config), name=name)
