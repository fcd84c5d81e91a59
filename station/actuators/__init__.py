"""Reject and alarm actuators behind one interface (`station.actuators.base.Actuator`).

`build_actuator` maps a config's `kind` to its module; each kind is one module, imported only when
used so a station without, say, a serial relay never imports pyserial.
"""

from __future__ import annotations

import importlib

from station.actuators.base import Actuator

# kind -> "module:class"
REGISTRY = {
    "log": "station.actuators.log_output:LogActuator",
    "modbus_tcp": "station.actuators.modbus_tcp:ModbusTcpCoil",
    "modbus_rtu": "station.actuators.modbus_rtu:ModbusRtuCoil",
    "plc_handshake": "station.actuators.plc_handshake:PlcHandshake",
    "serial_relay": "station.actuators.serial_relay:SerialRelay",
}


def build_actuator(config: object, *, name: str = "reject") -> Actuator:
    kind = getattr(config, "kind")
    module_name, _, class_name = REGISTRY[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config, name=name)
