"""plc_handshake against pymodbus's server: part registers, verdict codes, heartbeat, status, faults."""

from __future__ import annotations

import threading
import time

import pytest

from station.actuators import build_actuator
from station.actuators import plc_handshake as hs
from station.actuators.base import ActuatorNotConnected, ActuatorTransportError
from station.testbench.plc_sim import start_sim_serial_server, start_sim_server
from station.config_actuators import ModbusRtuLinkConfig, ModbusTcpLinkConfig, PlcHandshakeActuatorConfig
from station.records import Decision, Reason, Verdict

BASE = 40


def verdict(seq: int, decision: Decision, reason: Reason = Reason.MODEL, p: float | None = 0.5) -> Verdict:
    now = time.monotonic_ns()
    return Verdict(seq=seq, decision=decision, reason=reason, p_defect=p, threshold=0.42,
                   t_capture_ns=now - 30_000_000, t_decided_ns=now, wall_time=time.time(), source="test")


def handshake(port: int, *, heartbeat_ms: float = 50.0):
    link = ModbusTcpLinkConfig(host="127.0.0.1", port=port, timeout_ms=300, reconnect_min_ms=100,
                               reconnect_max_ms=400)
    return build_actuator(PlcHandshakeActuatorConfig(link=link, register_base=BASE, heartbeat_ms=heartbeat_ms))


def part_blocks(plc) -> list[list[int]]:
    """Every part block the PLC received, in order (rebuilt from the per-register write log)."""
    blocks: dict[int, dict[int, int]] = {}
    for t_ns, addr, value in plc.register_writes:
        if BASE + hs.PARTS_SEEN_HI <= addr <= BASE + hs.PART_AGE_MS:
            blocks.setdefault(t_ns, {})[addr - BASE] = value
    return [[b[i] for i in range(hs.PARTS_SEEN_HI, hs.PART_AGE_MS + 1)]
            for _, b in sorted(blocks.items()) if hs.PART_SEQ_LO in b]


def heartbeats(plc) -> list[tuple[int, int]]:
    return [(t, v) for t, a, v in plc.register_writes if a == BASE + hs.HEARTBEAT]


def test_parts_arrive_in_sequence_with_verdict_codes(sim_plc):
    act = handshake(sim_plc.port, heartbeat_ms=1000)
    assert act.owns_timing
    act.open()
    assert sim_plc.register(BASE + hs.READY) == 1
    sent = [
        verdict(7, Decision.OK, p=0.1234),
        verdict(8, Decision.REJECT, p=0.9),
        verdict(9, Decision.REJECT, Reason.TIMEOUT, p=None),
        verdict(70_000, Decision.OK, Reason.BAD_FRAME, p=None),  # seq past 16 bits: hi/lo words
    ]
    for v in sent:
        act.send_verdict(v)
    act.close()
    blocks = part_blocks(sim_plc)
    assert len(blocks) == 4
    idx = {name: off - hs.PARTS_SEEN_HI for name, off in (
        ("seen_lo", hs.PARTS_SEEN_LO), ("rej_lo", hs.REJECTS_LO), ("fs_lo", hs.FAIL_SAFES_LO),
        ("seq_hi", hs.PART_SEQ_HI), ("seq_lo", hs.PART_SEQ_LO), ("verdict", hs.VERDICT_CODE),
        ("reason", hs.REASON_CODE), ("p", hs.P_DEFECT_X10000), ("thr", hs.THRESHOLD_X10000),
        ("age", hs.PART_AGE_MS))}
    got = [{k: b[i] for k, i in idx.items()} for b in blocks]
    assert [(g["seq_hi"] << 16) | g["seq_lo"] for g in got] == [7, 8, 9, 70_000]
    assert [g["verdict"] for g in got] == [hs.VERDICT_PASS, hs.VERDICT_REJECT, hs.VERDICT_FAIL_SAFE_REJECT,
                                           hs.VERDICT_FAIL_SAFE_PASS]
    assert [g["reason"] for g in got] == [0, 0, 1, 3]
    assert [g["p"] for g in got] == [1234, 9000, hs.P_DEFECT_MISSING, hs.P_DEFECT_MISSING]
    assert all(g["thr"] == 4200 for g in got)
    assert all(25 <= g["age"] < 5000 for g in got)
    assert [g["seen_lo"] for g in got] == [1, 2, 3, 4]
    assert [g["rej_lo"] for g in got] == [0, 1, 2, 2]
    assert [g["fs_lo"] for g in got] == [0, 0, 1, 2]
    assert sim_plc.register(BASE + hs.READY) == 0  # close() told the PLC


def test_heartbeat_ticks_with_no_parts_and_stops_on_close(sim_plc):
    act = handshake(sim_plc.port, heartbeat_ms=50)
    act.open()
    time.sleep(0.8)
    beats = [v for _, v in heartbeats(sim_plc)]
    assert len(set(beats)) >= 5, beats  # ~16 expected; >= 5 survives a loaded box
    assert beats == sorted(beats)  # a counter going up
    assert sim_plc.register(BASE + hs.READY) == 1
    act.close()
    assert not any(t.name.endswith("plc-heartbeat") for t in threading.enumerate())
    stopped_at = len(heartbeats(sim_plc))
    last = sim_plc.register(BASE + hs.HEARTBEAT)
    time.sleep(0.3)
    assert len(heartbeats(sim_plc)) == stopped_at  # silence: what the PLC's watchdog looks for
    assert sim_plc.register(BASE + hs.HEARTBEAT) == last
    assert sim_plc.register(BASE + hs.READY) == 0


def test_close_while_the_caller_holds_the_lock_does_not_deadlock(sim_plc):
    act = handshake(sim_plc.port, heartbeat_ms=20)
    act.open()
    time.sleep(0.1)
    with act.lock:  # how the station closes it
        act.close()
    assert act._thread is None


def test_alarm_output_sets_the_alarm_code(sim_plc):
    act = handshake(sim_plc.port, heartbeat_ms=1000)
    act.open()
    with act.lock:
        act.set_output(True)
    assert sim_plc.register(BASE + hs.ALARM_CODE) == hs.ALARM_STATION_UNHEALTHY
    with act.lock:
        act.set_output(False)
    assert sim_plc.register(BASE + hs.ALARM_CODE) == hs.ALARM_NONE
    act.close()


def test_plc_lost_and_back_heartbeat_reconnects(sim_plc):
    port = sim_plc.port
    act = handshake(port, heartbeat_ms=50)
    act.open()
    act.send_verdict(verdict(1, Decision.OK))
    sim_plc.stop()
    with pytest.raises((ActuatorTransportError, ActuatorNotConnected)):
        act.send_verdict(verdict(2, Decision.REJECT))
    time.sleep(0.2)
    assert act.counters["heartbeat_failed"] >= 1
    start_sim_server("127.0.0.1", port, record_into=sim_plc)
    restarted = time.monotonic_ns()
    deadline = time.monotonic() + 5
    while not any(t > restarted for t, _ in heartbeats(sim_plc)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(t > restarted for t, _ in heartbeats(sim_plc)), "heartbeat did not resume after the PLC came back"
    assert sim_plc.register(BASE + hs.READY) == 1
    act.send_verdict(verdict(3, Decision.REJECT))
    act.close()
    seqs = [b[hs.PART_SEQ_LO - hs.PARTS_SEEN_HI] for b in part_blocks(sim_plc)]
    assert seqs == [1, 3]  # part 2 was reported undelivered to the caller, not silently dropped
    assert sim_plc.register(BASE + hs.PARTS_SEEN_LO) == 3  # the PLC still learns it was counted


def test_handshake_over_rtu(pty_pair):
    plc = start_sim_serial_server(pty_pair.b, baudrate=115200)
    link = ModbusRtuLinkConfig(port=pty_pair.a, baudrate=115200, timeout_ms=300)
    act = build_actuator(PlcHandshakeActuatorConfig(link=link, register_base=BASE, heartbeat_ms=50))
    try:
        act.open()
        act.send_verdict(verdict(5, Decision.REJECT))
        time.sleep(0.4)
        act.close()
    finally:
        plc.stop()
    assert plc.register(BASE + hs.PART_SEQ_LO) == 5
    assert plc.register(BASE + hs.VERDICT_CODE) == hs.VERDICT_REJECT
    assert len({v for _, v in heartbeats(plc)}) >= 3


def test_sample_plc_logic_ejects_rejects_and_trips_its_watchdog_when_the_station_stops(sim_plc):
    plc = sim_plc.emulate_handshake_plc(register_base=BASE, coil=9, delay_ms=150, pulse_ms=30, watchdog_ms=300)
    act = handshake(sim_plc.port, heartbeat_ms=50)
    act.open()
    sent_ns = {}
    for seq, decision in enumerate([Decision.OK, Decision.REJECT, Decision.OK, Decision.REJECT], start=1):
        v = verdict(seq, decision)  # captured 30 ms ago
        sent_ns[seq] = v.t_capture_ns
        act.send_verdict(v)
        time.sleep(0.06)
    time.sleep(0.4)
    assert not plc.line_stopped  # heartbeat alive through parts and idle time
    act.close()
    deadline = time.monotonic() + 3
    while not plc.line_stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert plc.line_stopped and len(plc.watchdog_trips) == 1
    assert plc.rejects_fired == [2, 4]
    pulses = sim_plc.pulses(9)
    assert len(pulses) == 2
    for (on_ns, off_ns), seq in zip(pulses, (2, 4)):
        # PLC-timed from PART_AGE_MS: capture + delay, to within the ms resolution of the age register
        assert -5 <= (on_ns - sent_ns[seq]) / 1e6 - 150 <= 30
        assert 25 <= (off_ns - on_ns) / 1e6 <= 60
    assert plc.missed_parts == 0
