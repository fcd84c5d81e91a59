"""The station driving the other actuator kinds end to end: PLC handshake registers and the alarm output.

Real components: pymodbus's own server on 127.0.0.1 (register and coil writes timestamped server-side),
an SQLite trace log, a tiny untrained model.
"""

from __future__ import annotations

import time

from support import make_frames, make_tiny_model, query, run_to_end, write_config

from station.actuators.plc_handshake import PART_SEQ_LO, READY, VERDICT_CODE
from station.app import Station
from station.configfile import load_config


def test_handshake_gets_every_verdict_in_order_and_the_heartbeat_stops_with_the_station(tmp_path, sim_plc):
    make_frames(tmp_path / "frames", defective=10, ok=10, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    base = 100
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: replay, path: frames, rate_parts_per_s: 20}}
model: {{path: tiny.pt, device: cpu}}
decision: {{deadline_ms: 100}}
reject:
  delay_ms: 300
  pulse_ms: 20
  actuator:
    kind: plc_handshake
    link: {{transport: tcp, host: 127.0.0.1, port: {sim_plc.port}}}
    register_base: {base}
    heartbeat_ms: 50
tracelog: {{dir: log}}
"""))
    run_to_end(cfg, timeout_s=60)
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT seq, decision, actuator_result FROM parts ORDER BY seq")
    assert len(rows) == 20
    assert all(r[2] in ("acknowledged", "late") for r in rows), "every part's verdict reached the PLC"
    writes = list(sim_plc.register_writes)
    seqs = [v for (_, a, v) in writes if a == base + PART_SEQ_LO]
    codes = [v for (_, a, v) in writes if a == base + VERDICT_CODE]
    assert seqs == [r[0] for r in rows], "the PLC saw every part, in order"
    assert codes == [2 if r[1] == "reject" else 1 for r in rows]
    heartbeat_writes = [t for (t, a, _) in writes if a == base]
    assert len(heartbeat_writes) >= 10
    # READY: 0 from the first write at start-up (before the model loads), 1 once parts are decided, 0 on stop.
    ready = [v for (_, a, v) in writes if a == base + READY]
    assert ready[0] == 0 and 1 in ready and ready[-1] == 0
    first_ready_ns = next(t for (t, a, v) in writes if a == base + READY and v == 1)
    first_part_ns = next(t for (t, a, _) in writes if a == base + PART_SEQ_LO)
    assert first_ready_ns < first_part_ns
    count = len(sim_plc.register_writes)
    time.sleep(0.3)
    assert len([1 for (_, a, _) in sim_plc.register_writes[count:] if a == base]) == 0, \
        "the heartbeat stops with the station"


def test_alarm_output_follows_health_when_the_reject_plc_is_down(tmp_path, sim_plc):
    make_frames(tmp_path / "frames", defective=3, ok=3, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 10}}
camera: {{kind: replay, path: frames, rate_parts_per_s: 10}}
model: {{path: tiny.pt, device: cpu}}
decision: {{threshold: 0.000001, deadline_ms: 100}}
reject:
  delay_ms: 200
  pulse_ms: 20
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: 1, coil: 0, timeout_ms: 50}}
alarm:
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {sim_plc.port}, coil: 7}}
tracelog: {{dir: log}}
"""))
    station = Station(cfg)
    station.start()
    try:
        assert station.wait_source_finished(timeout_s=60)
        deadline = time.monotonic() + 5
        while not sim_plc.coil(7) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim_plc.coil(7), "stack light on while the reject PLC is unreachable"
        assert "reject_actuator" in station.health.alarms()
    finally:
        summary = station.stop()
    assert summary["actuator"].get("failed", 0) + summary["actuator"].get("not_sent", 0) == 6
    assert not sim_plc.coil(7), "outputs are switched off on stop"
