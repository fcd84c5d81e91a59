"""Actuator config validation: ranges, byte strings, presets, and the serial-port check done at check-config."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from station.actuators import REGISTRY, build_actuator
from station.config_actuators import (
    ActuatorConfig,
    check_actuator_ports,
    parse_byte_string,
)

ADAPTER = TypeAdapter(ActuatorConfig)


def errors(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(data)
    return str(info.value)


def test_every_kind_builds_its_actuator_without_touching_hardware(tmp_path):
    samples = [
        {"kind": "log"},
        {"kind": "modbus_tcp", "host": "10.0.0.5", "coil": 12},
        {"kind": "modbus_rtu", "port": str(tmp_path / "ttyUSB0"), "baudrate": 9600, "parity": "E", "coil": 1},
        {"kind": "plc_handshake", "link": {"transport": "rtu", "port": str(tmp_path / "ttyS1")}},
        {"kind": "plc_handshake", "link": {"transport": "tcp", "host": "plc"}, "register_base": 100},
        {"kind": "serial_relay", "port": str(tmp_path / "ttyUSB9"), "preset": "lctech", "channel": 3},
    ]
    for data in samples:
        # Loading never requires the serial port to exist: a config is checked on any machine.
        act = build_actuator(ADAPTER.validate_python(data))
        assert act.kind == data["kind"]
    assert set(REGISTRY) == {"log", "modbus_tcp", "modbus_rtu", "plc_handshake", "serial_relay"}


def test_ranges_are_checked():
    assert "coil" in errors({"kind": "modbus_tcp", "coil": 65536})
    assert "coil" in errors({"kind": "modbus_rtu", "port": "/dev/ttyUSB0", "coil": -1})
    assert "device_id" in errors({"kind": "modbus_rtu", "port": "/dev/ttyUSB0", "device_id": 248})
    assert "register_base" in errors({"kind": "plc_handshake", "register_base": 65530})
    assert "heartbeat_ms" in errors({"kind": "plc_handshake", "heartbeat_ms": 5})
    assert "baudrate 12345" in errors({"kind": "modbus_rtu", "port": "/dev/ttyUSB0", "baudrate": 12345})
    assert "reconnect_max_ms" in errors({"kind": "modbus_tcp", "reconnect_min_ms": 5000, "reconnect_max_ms": 100})
    assert "transport" in errors({"kind": "plc_handshake", "link": {"transport": "udp"}})
    assert "extra" in errors({"kind": "modbus_tcp", "coil_adress": 3}).lower()


def test_byte_strings_parse_and_errors_name_the_key():
    assert parse_byte_string("A0 01 01 A2", key="on_bytes") == bytes([0xA0, 1, 1, 0xA2])
    assert parse_byte_string("0xa0,0x01", key="on_bytes") == bytes([0xA0, 1])
    assert parse_byte_string("A00101A2", key="on_bytes") == bytes([0xA0, 1, 1, 0xA2])
    msg = errors({"kind": "serial_relay", "port": "/dev/ttyUSB0", "on_bytes": "A0 0G 01", "off_bytes": "00"})
    assert "on_bytes" in msg and "0G" in msg
    msg = errors({"kind": "serial_relay", "port": "/dev/ttyUSB0", "on_bytes": "A0", "off_bytes": "  "})
    assert "off_bytes: empty byte string" in msg


def test_presets_and_generic_commands():
    assert "off_bytes: required with preset 'generic'" in errors(
        {"kind": "serial_relay", "port": "/dev/ttyUSB0", "on_bytes": "01"})
    assert "preset 'lctech' defines the commands" in errors(
        {"kind": "serial_relay", "port": "/dev/ttyUSB0", "preset": "lctech", "on_bytes": "01"})
    cfg = ADAPTER.validate_python({"kind": "serial_relay", "port": "/dev/ttyUSB0", "preset": "lctech"})
    assert (cfg.on_command, cfg.off_command) == (bytes.fromhex("A00101A2"), bytes.fromhex("A00100A1"))


def test_check_actuator_ports_names_key_and_port(tmp_path):
    missing = str(tmp_path / "ttyUSB3")
    cfg = ADAPTER.validate_python({"kind": "plc_handshake", "link": {"transport": "rtu", "port": missing}})
    problems = check_actuator_ports(cfg, key="reject.actuator")
    assert problems == [("reject.actuator.link.port", missing, f"serial port {missing} does not exist "
                                                               f"(is the adapter plugged in?)")]
    present = tmp_path / "ttyUSB4"
    present.write_bytes(b"")
    cfg = ADAPTER.validate_python({"kind": "serial_relay", "port": str(present), "preset": "lctech"})
    assert check_actuator_ports(cfg, key="alarm.actuator") == []
    assert check_actuator_ports(ADAPTER.validate_python({"kind": "modbus_tcp"})) == []


def test_a_tolerance_shorter_than_one_rtu_round_trip_is_refused_with_its_key():
    from station.config import StationConfig

    def station(baudrate: int, tolerance_ms: float) -> dict:
        return {"camera": {"kind": "synthetic"},
                "reject": {"late_tolerance_ms": tolerance_ms,
                           "actuator": {"kind": "modbus_rtu", "port": "/dev/ttyUSB0", "baudrate": baudrate}}}

    with pytest.raises(ValidationError) as info:
        StationConfig.model_validate(station(19200, 5))
    message = str(info.value)
    assert "reject.late_tolerance_ms: 5 ms is shorter than one coil write" in message and "12.0 ms" in message
    StationConfig.model_validate(station(19200, 15))   # room for the round trip
    StationConfig.model_validate(station(115200, 5))   # 4.9 ms on the wire at 115200 Bd 8N1
