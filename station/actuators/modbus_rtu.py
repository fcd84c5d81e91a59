"""The `modbus_rtu` actuator: a coil on a Modbus RTU (RS-485/RS-232) PLC or relay module.

Same behaviour as `modbus_tcp` over a serial line: the port missing or vanishing is a transport error
(reconnect with capped backoff), an exception reply is a device error.
"""

from __future__ import annotations

from station.actuators.modbus_link import ModbusCoil, rtu_link
from station.config_actuators import ModbusRtuActuatorConfig


class ModbusRtuCoil(ModbusCoil):
    kind = "modbus_rtu"

    def __init__(self, config: ModbusRtuActuatorConfig, *, name: str = "reject") -> None:
        super().__init__(config, rtu_link(config), name=name)
