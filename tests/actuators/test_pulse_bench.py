"""The pulse timing benchmark (`station bench --actuator`) measures real pulses on the simulated PLC: every pulse
counted server-side, widths timed from the on's acknowledgement, handshake verdict writes, a relay board's bytes."""

from __future__ import annotations

import pytest

from station.config_actuators import ModbusTcpActuatorConfig, PlcHandshakeActuatorConfig
from station.testbench.pulse_bench import format_result, percentiles, run_pulse_bench


def test_percentiles():
    s = percentiles([float(i) for i in range(1, 101)])
    assert (s["n"], s["p50"], s["p99"], s["max"], s["min"]) == (100, 51.0, 99.0, 100.0, 1.0)
    assert percentiles([])["p50"] is None


def test_coil_bench_counts_every_pulse_server_side():
    result = run_pulse_bench(ModbusTcpActuatorConfig(coil=4), pulses=30, pulse_ms=10, gap_ms=30, simulate=True)
    assert result["failures"] == 0 and result["simulated"]
    # One pulse at the PLC per part that sent its own on (a stalled machine makes a part ride on the previous one).
    assert result["server_pulses"] == 30 - result["merged"]
    assert result["host_ack_lateness_ms"]["n"] == 30 and result["host_fire_lateness_ms"]["n"] == 30 - result["merged"]
    assert 0 <= result["server_on_lateness_ms"]["p50"] < 20
    assert 10 <= result["server_width_ms"]["p50"] < 30, "the off is timed from the on's acknowledgement"
    assert "server_width" in format_result(result)


def test_handshake_bench_counts_verdict_writes():
    result = run_pulse_bench(PlcHandshakeActuatorConfig(heartbeat_ms=1000), pulses=20, gap_ms=20, simulate=True)
    assert result["server_writes"] == 20 and result["failures"] == 0


def test_pulse_must_fit_in_the_gap():
    with pytest.raises(ValueError, match="pulse_ms"):
        run_pulse_bench(ModbusTcpActuatorConfig(), pulses=1, pulse_ms=30, gap_ms=20)


def test_serial_relay_bench_times_the_bytes_on_the_board_end(pty_pair):
    from station.config_actuators import SerialRelayActuatorConfig

    # pty_pair only stands for "socat is here" (skip/fail policy); the bench makes its own pair.
    cfg = SerialRelayActuatorConfig(port="simulated", preset="lctech", baudrate=115200)
    result = run_pulse_bench(cfg, pulses=10, pulse_ms=10, gap_ms=40, simulate=True)
    assert result["server_pulses"] == 10 - result["merged"] and result["failures"] == 0
    assert abs(result["server_width_ms"]["p50"] - 10) < 20
