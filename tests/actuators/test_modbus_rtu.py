"""modbus_rtu coil actuator over a socat pty pair, pymodbus's RTU server on the device end."""

from __future__ import annotations

import time

import pytest
from support import assert_pulse_timing

from station.actuators import build_actuator
from station.actuators.base import ActuatorNotConnected, ActuatorTransportError
from station.testbench.plc_sim import start_sim_serial_server
from station.config_actuators import ModbusRtuActuatorConfig

PULSE_MS = 30.0


def rtu_actuator(port: str):
    cfg = ModbusRtuActuatorConfig(port=port, baudrate=115200, device_id=1, coil=2, timeout_ms=300,
                                  reconnect_min_ms=100, reconnect_max_ms=400)
    return build_actuator(cfg, name="reject")


def test_rtu_pulses_seen_by_the_plc(pty_pair, fire_pulses):
    plc = start_sim_serial_server(pty_pair.b, baudrate=115200)
    act = rtu_actuator(pty_pair.a)
    try:
        act.open()
        t0 = time.monotonic_ns() + 100_000_000
        dues = [t0 + i * 100_000_000 for i in range(20)]  # 10 parts/s, every one a reject
        outcomes = fire_pulses(act, dues, pulse_ms=PULSE_MS)
        act.close()
    finally:
        plc.stop()
    assert [o["result"] for o in outcomes] == ["acknowledged"] * 20
    pulses = plc.pulses(2)
    assert len(pulses) == 20
    assert_pulse_timing(pulses, dues, pulse_ms=PULSE_MS)
    assert plc.coil(2) is False


def test_missing_serial_port_names_the_port(tmp_path):
    port = str(tmp_path / "ttyUSB-missing")
    act = rtu_actuator(port)
    with pytest.raises(ActuatorTransportError, match=f"serial port {port} does not exist"):
        act.open()
    act.close()


def test_serial_port_disappears_then_comes_back(pty_pair, retry_off):
    plc = start_sim_serial_server(pty_pair.b, baudrate=115200)
    act = rtu_actuator(pty_pair.a)
    try:
        act.open()
        act.set_output(True)
        act.set_output(False)
        plc.stop()
        pty_pair.kill()  # USB adapter unplugged: both ends vanish
        with pytest.raises(ActuatorTransportError):
            act.set_output(True)
        with pytest.raises((ActuatorNotConnected, ActuatorTransportError)):
            act.set_output(False)
        assert act.state is None
        pty_pair.start()  # plugged back in, same device path
        plc = start_sim_serial_server(pty_pair.b, baudrate=115200, record_into=plc)
        retry_off(act)
        assert act.state is False
        act.set_output(True)
        act.set_output(False)
        act.close()
    finally:
        plc.stop()
    assert len(plc.pulses(2)) == 2
    assert plc.coil(2) is False
    assert act.link.reconnects >= 1
