"""The PLC goes away mid-run and comes back on the same port: how soon does the first reject pulse go out?

Real components: the station (replay camera at 20 parts/s, every part a reject, a tiny untrained model),
pymodbus's own server on 127.0.0.1, stopped and started again, which timestamps every coil write, and the
SQLite trace log. The reconnect settings are the shipped defaults (reconnect_min_ms 200, reconnect_max_ms
5000, reconnect_busy_ms 100): with rejects waiting, an attempt goes out every 100 ms, not after a
doubling backoff that had grown to seconds.
"""

from __future__ import annotations

import time

from support import make_frames, make_tiny_model, query, write_config

from station.testbench.plc_sim import start_sim_server
from station.app import Station
from station.configfile import load_config

COIL = 4


def test_first_pulse_goes_out_right_after_the_plc_answers_again_and_the_output_goes_off_first(tmp_path, sim_plc):
    make_frames(tmp_path / "frames", defective=60, ok=60, size=64)
    make_tiny_model(tmp_path / "tiny.pt")
    port = sim_plc.port
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: replay, path: frames, rate_parts_per_s: 20}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 1}}
decision: {{threshold: 0.000001, deadline_ms: 100}}
reject:
  delay_ms: 200
  pulse_ms: 20
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {port}, coil: {COIL}, timeout_ms: 200}}
tracelog: {{dir: log, images: none}}
"""))
    station = Station(cfg)
    station.start()
    try:
        while station.stats.parts < 20:
            time.sleep(0.02)
        sim_plc.stop()
        time.sleep(2.5)  # 50 rejects due while the PLC is away
        start_sim_server("127.0.0.1", port, record_into=sim_plc)
        back_ns = time.monotonic_ns()  # the server is listening from here on
        assert station.wait_source_finished(timeout_s=120)
    finally:
        station.stop()
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT * FROM parts ORDER BY seq")
    after = [(t, on) for t, address, on in sim_plc.coil_events if address == COIL and t >= back_ns]
    first_on_ns = next(t for t, on in after if on)
    gap_ms = (first_on_ns - back_ns) / 1e6
    print(f"\nPLC back -> first reject pulse at the PLC: {gap_ms:.0f} ms")
    assert gap_ms <= 400, f"first pulse {gap_ms:.0f} ms after the PLC answered again"
    assert after[0] == (after[0][0], False), "the output is switched off first after a reconnect"
    assert len(rows) == 120
    down = [r for r in rows if r["actuator_result"] in ("failed", "not_sent")]
    assert down and all(r["actuator_error"] for r in down)
    delivered_after = [r for r in rows if r["due_ns"] > first_on_ns]
    assert delivered_after and all(r["actuator_result"] in ("acknowledged", "late") for r in delivered_after)
    assert not sim_plc.coil(COIL)
