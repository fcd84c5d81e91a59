"""A slow PLC end to end: replies held by a delaying TCP proxy in front of pymodbus's own server.

Real components: the station (replay camera at 20 parts/s, every part a reject, a tiny untrained
model), the pymodbus server on 127.0.0.1 that timestamps every coil write, the proxy of
tests/delay_proxy.py holding every reply, and the SQLite trace log. Each row's claim is checked
against the coil timeline the server recorded: what the station says it did must be what the PLC saw.
"""

from __future__ import annotations

import time
from pathlib import Path

from delay_proxy import DelayProxy
from support import make_frames, make_tiny_model, query, run_to_end, write_config

from station.app import Station
from station.configfile import load_config

COIL = 3
PULSE_MS = 20.0
TOLERANCE_MS = 5.0
TIMEOUT_MS = 200.0


def station_yaml(tmp: Path, *, port: int, parts: int) -> Path:
    make_frames(tmp / "frames", defective=parts // 2, ok=parts - parts // 2, size=64)
    make_tiny_model(tmp / "tiny.pt")
    return write_config(tmp / "station.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: replay, path: frames, rate_parts_per_s: 20}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 1}}
decision: {{threshold: 0.000001, deadline_ms: 100}}
reject:
  delay_ms: 200
  pulse_ms: {PULSE_MS}
  late_tolerance_ms: {TOLERANCE_MS}
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {port}, coil: {COIL}, timeout_ms: {TIMEOUT_MS},
             reconnect_min_ms: 50, reconnect_max_ms: 200}}
tracelog: {{dir: log, images: none}}
""")


def coil_timeline(plc) -> list[tuple[int, bool]]:
    """(t_ns, state) at each change of the coil, as the server saw it."""
    changes, state = [], False
    for t_ns, address, value in list(plc.coil_events):
        if address == COIL and value != state:
            changes.append((t_ns, value))
            state = value
    return changes


def state_at(timeline: list[tuple[int, bool]], t_ns: int) -> bool:
    state = False
    for change_ns, value in timeline:
        if change_ns > t_ns:
            break
        state = value
    return state


def on_throughout(timeline: list[tuple[int, bool]], start_ns: int, end_ns: int) -> bool:
    """Whether the server had the coil on during the whole of [start_ns, end_ns]."""
    return state_at(timeline, start_ns) and not any(start_ns < t <= end_ns and not v for t, v in timeline)


def longest_on_ms(timeline: list[tuple[int, bool]], end_ns: int) -> float:
    longest, on_since = 0, None
    for t_ns, value in [*timeline, (end_ns, False)]:
        if value and on_since is None:
            on_since = t_ns
        elif not value and on_since is not None:
            longest, on_since = max(longest, t_ns - on_since), None
    return longest / 1e6


def alarms_raised(db: Path) -> list[str]:
    return [r["message"].split(":")[0] for r in query(db, "SELECT message FROM events WHERE kind = 'alarm'")]


def unfounded_claims(rows, timeline: list[tuple[int, bool]]) -> list[int]:
    """Rows whose success the server's coil timeline contradicts: an `acknowledged` part needs the coil on
    from due + tolerance to due + pulse; a `late` one a full-width pulse from when it was confirmed."""
    tol_ns, pulse_ns = int(TOLERANCE_MS * 1e6), int(PULSE_MS * 1e6)
    bad = []
    for r in rows:
        if r["actuator_result"] == "acknowledged":
            window = (r["due_ns"] + tol_ns, r["due_ns"] + pulse_ns)
        elif r["actuator_result"] == "late":
            window = (r["fired_ns"], r["fired_ns"] + pulse_ns - 1_000_000)
        else:
            continue
        if not on_throughout(timeline, *window):
            bad.append(r["seq"])
    return bad


def test_plc_answering_in_150_ms_no_row_claims_a_pulse_the_plc_did_not_see_on_time(tmp_path, sim_plc):
    with DelayProxy(sim_plc.port, hold_ms=150) as proxy:
        cfg = load_config(station_yaml(tmp_path, port=proxy.port, parts=60))
        station, _ = run_to_end(cfg, timeout_s=120)
    db = tmp_path / "log" / "trace.sqlite"
    rows = query(db, "SELECT * FROM parts ORDER BY seq")
    timeline = coil_timeline(sim_plc)
    assert len(rows) == 60 and all(r["decision"] == "reject" for r in rows)
    assert all(r["actuator_result"] != "none" for r in rows), "every reject says what became of its pulse"
    assert not unfounded_claims(rows, timeline), "rows claim a pulse the PLC did not see on time"
    late = [r for r in rows if r["actuator_result"] == "late"]
    assert late, "a PLC answering in 150 ms cannot confirm 20 ms pulses within 5 ms"
    assert "plc_slow" in alarms_raised(db)
    # Nothing but the device held the commands back: at most one request in flight (an off), then the on.
    delivered = [r for r in rows if r["actuator_result"] in ("acknowledged", "late")]
    worst_ms = max((r["fired_ns"] - r["due_ns"]) / 1e6 for r in delivered)
    assert worst_ms <= 2 * 150 + 100, f"a part was confirmed {worst_ms:.0f} ms after due"
    # The scheduler's own timing did not wait for the PLC: every part was handed over at its due time.
    jitter = sorted(station.scheduler.handoff_lateness_ms)
    assert len(jitter) == 60 and jitter[len(jitter) // 2] <= 2.0 and jitter[-1] <= 60.0, jitter[-5:]
    assert not sim_plc.coil(COIL), "output off after stop"
    print(f"\n150 ms PLC: {len(delivered) - len(late)} acknowledged, {len(late)} late, "
          f"{len(rows) - len(delivered)} failed/not sent; {sum(on for _, on in timeline)} pulses at the PLC; "
          f"worst confirmation {worst_ms:.0f} ms after due; scheduler hand-over p50 {jitter[30]:.2f} ms")


def test_plc_turning_slower_than_the_timeout_mid_run_never_leaves_the_coil_on(tmp_path, sim_plc):
    with DelayProxy(sim_plc.port, hold_ms=0) as proxy:
        cfg = load_config(station_yaml(tmp_path, port=proxy.port, parts=60))
        station = Station(cfg)
        station.start()
        try:
            deadline = time.monotonic() + 60
            while sum(1 for _, _, on in sim_plc.coil_events if on) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            proxy.hold_ms = 400  # from now on every reply comes after the 200 ms timeout
            slow_from_ns = time.monotonic_ns()
            assert station.wait_source_finished(timeout_s=120)
        finally:
            station.stop()
    db = tmp_path / "log" / "trace.sqlite"
    rows = query(db, "SELECT * FROM parts ORDER BY seq")
    timeline = coil_timeline(sim_plc)
    end_ns = sim_plc.coil_events[-1][0]
    on_ms = sum((b - a) / 1e6 for (a, on), (b, _) in zip(timeline, [*timeline[1:], (end_ns, False)])
                if on and b > slow_from_ns)
    assert len(rows) == 60
    assert not unfounded_claims(rows, timeline)
    after = [r for r in rows if r["due_ns"] > slow_from_ns + 50_000_000]
    assert after and not any(r["actuator_result"] in ("acknowledged", "late") for r in after), \
        "no reply came within the timeout: nothing may be claimed as delivered"
    assert longest_on_ms(timeline, end_ns) <= TIMEOUT_MS + PULSE_MS + 150, "the coil was left on"
    assert on_ms <= 0.2 * (end_ns - slow_from_ns) / 1e6, f"coil on {on_ms:.0f} ms while the PLC was slow"
    assert not sim_plc.coil(COIL)
    assert {"reject_actuator", "reject_output_stuck"} <= set(alarms_raised(db))
    results = sorted({r["actuator_result"] for r in after})
    print(f"\nPLC slower than the timeout: longest coil-on {longest_on_ms(timeline, end_ns):.0f} ms, coil on "
          f"{on_ms:.0f} of {(end_ns - slow_from_ns) / 1e6:.0f} ms while slow; rows due after: {results}")
