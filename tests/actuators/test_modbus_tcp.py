"""modbus_tcp coil actuator against pymodbus's own server on 127.0.0.1: pulses seen server-side, faults."""

from __future__ import annotations

import random
import threading
import time

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes
from support import RejectOutput, assert_pulse_timing, reject_verdict

from station.actuators import build_actuator
from station.actuators.base import ActuatorDeviceError, ActuatorNotConnected, ActuatorTransportError
from station.testbench.plc_sim import start_sim_server
from station.config_actuators import ModbusTcpActuatorConfig

PULSE_MS = 25.0


def coil_actuator(port: int, **kw):
    cfg = ModbusTcpActuatorConfig(host="127.0.0.1", port=port, coil=kw.pop("coil", 5), timeout_ms=300,
                                  reconnect_min_ms=kw.pop("reconnect_min_ms", 100), reconnect_max_ms=400, **kw)
    return build_actuator(cfg, name="reject")


def test_100_parts_pulses_seen_by_the_plc_in_order_on_time_and_wide_enough(sim_plc, fire_pulses):
    rng = random.Random(4)
    gap_ns, delay_ns = 50_000_000, 100_000_000  # 20 parts/s, ejector 100 ms after the camera
    t0 = time.monotonic_ns() + 100_000_000
    defective = [rng.random() < 0.3 for _ in range(100)]
    dues = [t0 + i * gap_ns + delay_ns for i, d in enumerate(defective) if d]
    assert 15 < len(dues) < 50

    act = coil_actuator(sim_plc.port)
    act.open()
    outcomes = fire_pulses(act, dues, pulse_ms=PULSE_MS)
    act.close()

    assert [o["result"] for o in outcomes] == ["acknowledged"] * len(dues)
    pulses = sim_plc.pulses(5)
    # open() drove the coil off once (no edge) and every reject made exactly one pulse, in part order.
    assert len(pulses) == len(dues)
    assert_pulse_timing(pulses, dues, pulse_ms=PULSE_MS)
    assert sim_plc.coil(5) is False
    assert all(addr == 5 for _, addr, _ in sim_plc.coil_events)


def test_open_and_close_drive_the_output_off(sim_plc):
    with ModbusTcpClient("127.0.0.1", port=sim_plc.port) as other:
        other.write_coil(5, True, device_id=1)  # latched on by whatever ran before
    assert sim_plc.coil(5) is True
    act = coil_actuator(sim_plc.port)
    act.open()
    assert sim_plc.coil(5) is False
    act.set_output(True)
    assert sim_plc.coil(5) is True
    act.close()
    assert sim_plc.coil(5) is False
    assert sim_plc.coil_events[-1][1:] == (5, False)


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_an_off_that_fails_is_retried_by_the_output_worker_until_the_plc_has_it(sim_plc):
    out = RejectOutput(sim_plc.port, coil=5, pulse_ms=300, reconnect_min_ms=100, reconnect_max_ms=400)
    port = sim_plc.port
    try:
        out.scheduler.submit(reject_verdict(1, time.monotonic_ns() - 50_000_000))
        wait_until(lambda: sim_plc.coil(5))
        sim_plc.stop()  # the PLC goes away while the ejector is out
        wait_until(lambda: any(out.raised("reject_output_stuck")))
        assert out.worker.output_may_be_on
        start_sim_server("127.0.0.1", port, record_into=sim_plc)
        wait_until(lambda: not out.worker.output_may_be_on)
    finally:
        out.close()
    assert sim_plc.coil(5) is False
    assert sim_plc.coil_events[-1][1:] == (5, False)
    assert out.raised("reject_output_stuck")[-1] is None, "the alarm clears once the PLC confirmed the off"
    assert [r.result.value for r in out.reports] == ["acknowledged"]


def test_server_stopped_and_restarted_mid_run(sim_plc):
    port = sim_plc.port
    out = RejectOutput(port, coil=5, pulse_ms=PULSE_MS, delay_ms=0, reconnect_min_ms=100, reconnect_max_ms=400)
    t0 = time.monotonic_ns() + 50_000_000
    dues = [t0 + i * 50_000_000 for i in range(50)]  # 2.5 s of rejects at 20 parts/s
    restarted_ns: list[int] = []

    def outage() -> None:
        time.sleep(0.7)
        sim_plc.stop()
        time.sleep(0.6)
        start_sim_server("127.0.0.1", port, record_into=sim_plc)
        restarted_ns.append(time.monotonic_ns())

    fault = threading.Thread(target=outage, name="test-outage")
    fault.start()
    try:
        for seq, due in enumerate(dues, start=1):
            out.scheduler.submit(reject_verdict(seq, due))
        fault.join()
        assert out.scheduler.drain(5)
    finally:
        fault.join()
        out.close()
    outcomes = sorted(out.reports, key=lambda r: r.seq)
    # Nothing lost: one outcome per part; parts during the outage are marked, with the reason.
    assert [r.seq for r in outcomes] == list(range(1, 51))
    undelivered = [r for r in outcomes if r.result.value not in ("acknowledged", "late")]
    assert undelivered and all(r.error for r in undelivered)
    assert out.worker.actuator.counters["error_ActuatorTransportError"] >= 1
    assert out.worker.actuator.link.reconnects >= 1
    # Recovery: the parts due from 200 ms after the restart on all went out, one pulse each (or riding on one).
    settled = restarted_ns[0] + 200_000_000
    late_parts = [r for r in outcomes if r.due_ns >= settled]
    assert late_parts and all(r.result.value in ("acknowledged", "late") for r in late_parts)
    own = [r for r in late_parts if not r.merged]
    assert len([p for p in sim_plc.pulses(5) if p[0] >= settled]) == len(own)
    # Every confirmed "on" reached the PLC; an unconfirmed one at most may have (its reply lost).
    acked = sum(r.result.value in ("acknowledged", "late") and not r.merged for r in outcomes)
    failed = sum(r.result.value == "failed" for r in outcomes)
    on_writes = sum(1 for _, _, value in sim_plc.coil_events if value)
    assert acked <= on_writes <= acked + failed
    assert sim_plc.coil(5) is False


def test_exception_replies_are_device_errors_and_keep_the_link():
    plc = start_sim_server("127.0.0.1", 0, coils=16)
    try:
        act = coil_actuator(plc.port, coil=100)  # beyond the PLC's 16 coils
        with pytest.raises(ActuatorDeviceError, match="exception code 2"):
            act.open()
        assert act.link.connected and act.link.transport_errors == 0
        act.close()

        act = coil_actuator(plc.port, coil=3)
        act.open()
        act.set_output(True)
        plc.fail_writes_with = ExcCodes.DEVICE_FAILURE
        with pytest.raises(ActuatorDeviceError, match="exception code 4"):
            act.set_output(False)
        assert act.state is None and act.link.connected, "the device answered: the link stays"
        plc.fail_writes_with = None
        act.set_output(False)
        assert act.state is False and plc.coil(3) is False
        assert act.link.device_errors == 1 and act.link.reconnects == 0
        act.close()
    finally:
        plc.stop()


def test_plc_down_at_start_then_reconnects_with_backoff(sim_plc):
    port = sim_plc.port
    sim_plc.stop()
    act = coil_actuator(port, reconnect_min_ms=300)
    with pytest.raises(ActuatorTransportError, match=f"127.0.0.1:{port}"):
        act.open()
    with pytest.raises(ActuatorNotConnected):
        act.set_output(True)  # inside the backoff: nothing sent, and it says so
    start_sim_server("127.0.0.1", port, record_into=sim_plc)
    time.sleep(0.35)
    act.set_output(False)  # the off that open() could not deliver goes out first
    assert act.state is False
    act.set_output(True)
    act.set_output(False)
    act.close()
    assert len(sim_plc.pulses(5)) == 1


def test_garbage_reply_is_a_transport_error():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def garbage() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(256)
            conn.sendall(b"\xde\xad\xbe\xef not modbus at all\r\n")
            time.sleep(0.5)

    t = threading.Thread(target=garbage, name="test-garbage")
    t.start()
    act = coil_actuator(port)
    try:
        with pytest.raises(ActuatorTransportError):
            act.open()
        assert not act.link.connected and act.link.device_errors == 0
    finally:
        act.link.drop()
        t.join()
        srv.close()


def test_an_alarm_lamp_wanted_on_is_never_switched_off_by_a_retry(sim_plc):
    """An off failed (PLC away), then the station wants the lamp on again: once the PLC is back the worker
    writes the wanted on, never the stale off."""
    port = sim_plc.port
    lamp = RejectOutput(port, role="alarm", coil=5, reconnect_min_ms=100, reconnect_max_ms=400)
    try:
        lamp.worker.set_level(True)
        wait_until(lambda: sim_plc.coil(5))
        sim_plc.stop()
        lamp.worker.set_level(False)
        wait_until(lambda: lamp.worker.failures >= 1)
        lamp.worker.set_level(True)
        events = len(sim_plc.coil_events)
        start_sim_server("127.0.0.1", port, record_into=sim_plc)
        wait_until(lambda: len(sim_plc.coil_events) > events)
        time.sleep(0.3)
    finally:
        lamp.close()
    written = [value for _, address, value in sim_plc.coil_events[events:] if address == 5]
    assert written[0] is True and False not in written[:-1], written  # close() switches it off at the end
    assert any(lamp.raised("alarm_output"))
