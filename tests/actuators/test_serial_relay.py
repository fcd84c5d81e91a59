"""serial_relay over a socat pty pair: the exact bytes a relay board would get, their timing, a vanishing port."""

from __future__ import annotations

import time

import pytest
from support import assert_pulse_timing

from station.actuators import build_actuator
from station.actuators.base import ActuatorNotConnected, ActuatorTransportError
from station.testbench.serial_pty import SerialBytesRecorder
from station.config_actuators import SerialRelayActuatorConfig

ON = bytes.fromhex("A0 01 01 A2")
OFF = bytes.fromhex("A0 01 00 A1")
PULSE_MS = 40.0


def relay(port: str, **kw):
    cfg = SerialRelayActuatorConfig(port=port, reconnect_min_ms=100, reconnect_max_ms=400, **kw)
    return build_actuator(cfg, name="reject")


def test_lctech_preset_sends_exact_bytes_with_the_pulse_timing(pty_pair, fire_pulses):
    board = SerialBytesRecorder(pty_pair.b)
    act = relay(pty_pair.a, preset="lctech", channel=1)
    try:
        act.open()
        t0 = time.monotonic_ns() + 100_000_000
        dues = [t0 + i * 150_000_000 for i in range(5)]
        outcomes = fire_pulses(act, dues, pulse_ms=PULSE_MS)
        act.close()
        board.wait_for(4 * (1 + 5 * 2 + 1))
    finally:
        board.close()
    assert [o["result"] for o in outcomes] == ["acknowledged"] * 5
    # off on open, five on/off pulses, off on close: nothing else on the wire.
    assert board.data == OFF + (ON + OFF) * 5 + OFF
    ons, offs = board.command_times(ON), board.command_times(OFF)[1:6]
    assert_pulse_timing(list(zip(ons, offs)), dues, pulse_ms=PULSE_MS)


def test_generic_bytes_from_the_yaml(pty_pair):
    board = SerialBytesRecorder(pty_pair.b)
    act = relay(pty_pair.a, preset="generic", on_bytes="FE 05 00 00 FF 00", off_bytes="0xFE,0x05,0x00,0x00,0x00,0x00",
                baudrate=115200)
    try:
        act.open()
        act.set_output(True)
        act.close()
        board.wait_for(18)
    finally:
        board.close()
    assert board.data == bytes.fromhex("FE0500000000 FE050000FF00 FE0500000000")


def test_lctech_channel_two_checksum(pty_pair):
    board = SerialBytesRecorder(pty_pair.b)
    act = relay(pty_pair.a, preset="lctech", channel=2)
    try:
        act.open()
        act.set_output(True)
        act.close()
        board.wait_for(12)
    finally:
        board.close()
    assert board.data == bytes.fromhex("A0 02 00 A2  A0 02 01 A3  A0 02 00 A2")


def test_missing_port_is_a_clear_error_naming_it(tmp_path):
    port = str(tmp_path / "ttyUSB7")
    act = relay(port, preset="lctech")
    with pytest.raises(ActuatorTransportError, match=f"serial port {port} does not exist"):
        act.open()
    act.close()


def test_port_vanishes_mid_run_then_recovers(pty_pair, retry_off):
    board = SerialBytesRecorder(pty_pair.b)
    act = relay(pty_pair.a, preset="lctech")
    act.open()
    act.set_output(True)
    act.set_output(False)
    board.wait_for(12)
    board.close()
    assert board.data == OFF + ON + OFF
    pty_pair.kill()  # USB relay unplugged
    with pytest.raises(ActuatorTransportError, match="failed"):
        act.set_output(True)
    assert not act.connected
    with pytest.raises((ActuatorNotConnected, ActuatorTransportError)):
        act.set_output(False)  # backing off, or the port is still missing
    assert act.state is None, "after a failed write the relay's state is unknown"
    pty_pair.start()  # plugged back in
    board = SerialBytesRecorder(pty_pair.b)
    try:
        retry_off(act)  # the off goes out first, through the reopen backoff
        assert act.state is False
        act.set_output(True)
        act.set_output(False)
        act.close()
        board.wait_for(16)
    finally:
        board.close()
    assert board.data == OFF + ON + OFF + OFF
    assert act.counters["reconnects"] == 1
