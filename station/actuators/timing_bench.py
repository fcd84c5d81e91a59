"""Pulse timing benchmark of one actuator: how late do pulses fire, and how wide does the device see them.

`run_pulse_bench` fires `pulses` pulses at a fixed period, each due at a planned monotonic time, with the
same wait-then-spin timing the reject scheduler uses, and reports lateness percentiles on the host side
(fired = the command started; ack = the device confirmed it) and, with `simulate=True`, on the server
side too: the simulated PLC on 127.0.0.1 timestamps every coil write with the same monotonic clock, so
its on-edge minus due and off-edge minus on-edge are the lateness and the width the device saw.
For `plc_handshake` (the PLC owns timing) each "pulse" is one verdict write.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from station.actuators import build_actuator
from station.actuators.base import Actuator, ActuatorError
from station.config_actuators import ModbusTcpActuatorConfig, ModbusTcpLinkConfig, PlcHandshakeActuatorConfig
from station.records import Decision, Reason, Verdict

log = logging.getLogger("station.actuator.bench")

_SPIN_NS = 2_000_000  # spin the last 2 ms: sleep() overshoots by up to a millisecond


def _wait_until(t_ns: int) -> None:
    while True:
        left = t_ns - time.monotonic_ns()
        if left <= 0:
            return
        if left > _SPIN_NS:
            time.sleep((left - _SPIN_NS) / 1e9)


def percentiles(values_ms: list[float]) -> dict[str, float | int | None]:
    if not values_ms:
        return {"n": 0, "p50": None, "p99": None, "max": None, "min": None}
    v = sorted(values_ms)

    def pct(q: float) -> float:
        return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]

    return {"n": len(v), "p50": round(pct(0.50), 3), "p99": round(pct(0.99), 3), "max": round(v[-1], 3),
            "min": round(v[0], 3)}


def simulated_config(config: Any, port: int) -> Any:
    """The same actuator config, pointed at the simulated PLC on 127.0.0.1:port."""
    if isinstance(config, ModbusTcpActuatorConfig):
        return config.model_copy(update={"host": "127.0.0.1", "port": port})
    if isinstance(config, PlcHandshakeActuatorConfig) and isinstance(config.link, ModbusTcpLinkConfig):
        return config.model_copy(update={"link": config.link.model_copy(update={"host": "127.0.0.1", "port": port})})
    raise ValueError(f"--simulate supports modbus_tcp and plc_handshake over tcp, not {getattr(config, 'kind', config)}")


def run_pulse_bench(actuator_config: Any, *, pulses: int = 1000, pulse_ms: float = 10.0, gap_ms: float = 25.0,
                    simulate: bool = False, sim: Any = None) -> dict[str, Any]:
    """Fire `pulses` pulses of `pulse_ms`, one every `gap_ms`; return lateness/width statistics in ms.

    `simulate`: start the simulated PLC on 127.0.0.1 and point the config at it. `sim`: an already running
    `SimPlcHandle` the config points at (tests), used for the server-side figures.
    """
    if pulse_ms >= gap_ms:
        raise ValueError(f"pulse_ms ({pulse_ms:g}) must be shorter than gap_ms ({gap_ms:g})")
    own_sim = None
    if simulate and sim is None:
        from station.actuators.sim_server import start_sim_server

        own_sim = sim = start_sim_server()
        actuator_config = simulated_config(actuator_config, sim.port)
    actuator: Actuator = build_actuator(actuator_config, name="bench")
    try:
        with actuator.lock:
            actuator.open()
        result = _bench(actuator, sim, pulses=pulses, pulse_ns=int(pulse_ms * 1e6), gap_ns=int(gap_ms * 1e6))
    finally:
        with actuator.lock:
            actuator.close()
        if own_sim is not None:
            own_sim.stop()
    result.update(kind=actuator.kind, target=actuator.describe(), pulses=pulses, pulse_ms=pulse_ms, gap_ms=gap_ms,
                  simulated=sim is not None)
    return result


def _bench(actuator: Actuator, sim: Any, *, pulses: int, pulse_ns: int, gap_ns: int) -> dict[str, Any]:
    fire_ms: list[float] = []
    ack_ms: list[float] = []
    off_fire_ms: list[float] = []
    dues: list[int] = []
    failures = 0
    events_before = len(sim.register_writes if actuator.owns_timing else sim.coil_events) if sim else 0
    t0 = time.monotonic_ns() + 200_000_000
    for i in range(pulses):
        due = t0 + i * gap_ns
        dues.append(due)
        _wait_until(due)
        fired = time.monotonic_ns()
        try:
            with actuator.lock:
                if actuator.owns_timing:
                    actuator.send_verdict(_bench_verdict(i, fired))
                else:
                    actuator.set_output(True)
        except ActuatorError as exc:
            failures += 1
            log.warning("pulse %d on: %s", i, exc)
        ack = time.monotonic_ns()
        fire_ms.append((fired - due) / 1e6)
        ack_ms.append((ack - due) / 1e6)
        if actuator.owns_timing:
            continue
        _wait_until(due + pulse_ns)
        fired_off = time.monotonic_ns()
        try:
            with actuator.lock:
                actuator.set_output(False)
        except ActuatorError as exc:
            failures += 1
            log.warning("pulse %d off: %s", i, exc)
        off_fire_ms.append((fired_off - due - pulse_ns) / 1e6)
    out: dict[str, Any] = {
        "host_fire_lateness_ms": percentiles(fire_ms),
        "host_ack_lateness_ms": percentiles(ack_ms),
        "failures": failures,
    }
    if off_fire_ms:
        out["host_off_lateness_ms"] = percentiles(off_fire_ms)
    if sim is not None:
        out.update(_server_side(actuator, sim, dues, events_before, pulse_ns))
    return out


def _server_side(actuator: Actuator, sim: Any, dues: list[int], events_before: int, pulse_ns: int) -> dict[str, Any]:
    if actuator.owns_timing:
        from station.actuators.plc_handshake import PART_SEQ_LO

        address = getattr(actuator, "config").register_base + PART_SEQ_LO
        seen = [t for t, a, _v in sim.register_writes[events_before:] if a == address]
        return {"server_write_lateness_ms": percentiles([(t - d) / 1e6 for t, d in zip(seen, dues)]),
                "server_writes": len(seen)}
    coil = getattr(actuator, "config").coil
    edges: list[tuple[int, int]] = []
    state, on_ns = False, 0
    for t_ns, address, value in sim.coil_events[events_before:]:
        if address != coil or value == state:
            continue
        if value:
            on_ns = t_ns
        else:
            edges.append((on_ns, t_ns))
        state = value
    on_late = [(on - due) / 1e6 for (on, _off), due in zip(edges, dues)]
    widths = [(off - on) / 1e6 for on, off in edges]
    return {"server_on_lateness_ms": percentiles(on_late), "server_width_ms": percentiles(widths),
            "server_width_error_ms": percentiles([abs(w - pulse_ns / 1e6) for w in widths]),
            "server_pulses": len(edges)}


def _bench_verdict(i: int, now_ns: int) -> Verdict:
    reject = i % 2 == 1
    return Verdict(seq=i, decision=Decision.REJECT if reject else Decision.OK, reason=Reason.MODEL,
                   p_defect=0.9 if reject else 0.1, threshold=0.5, t_capture_ns=now_ns, t_decided_ns=now_ns,
                   wall_time=time.time(), source="bench")


def format_result(result: dict[str, Any]) -> str:
    """The benchmark as a small text table."""
    lines = [f"actuator {result['kind']} -> {result['target']}"
             f"{' (simulated PLC on 127.0.0.1)' if result['simulated'] else ''}",
             f"{result['pulses']} pulses of {result['pulse_ms']:g} ms every {result['gap_ms']:g} ms, "
             f"failures: {result['failures']}",
             f"{'measure (ms)':<28}{'n':>6}{'p50':>9}{'p99':>9}{'max':>9}"]
    for key in ("host_fire_lateness_ms", "host_ack_lateness_ms", "host_off_lateness_ms", "server_on_lateness_ms",
                "server_width_ms", "server_width_error_ms", "server_write_lateness_ms"):
        if key in result:
            s = result[key]
            fmt = (lambda x: f"{x:9.3f}" if x is not None else f"{'-':>9}")
            lines.append(f"{key.removesuffix('_ms'):<28}{s['n']:>6}{fmt(s['p50'])}{fmt(s['p99'])}{fmt(s['max'])}")
    return "\n".join(lines)
