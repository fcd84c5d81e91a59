"""Pulse timing benchmark of one actuator: how late do pulses fire, and how wide does the device see them.

`run_pulse_bench` fires `pulses` pulses at a fixed period, each due at a planned monotonic time, through
the station's own path: the reject scheduler hands each part over at its due time to the output's worker
thread (`station.output_worker`), which sends the on, times the off from the on's acknowledgement and
reports the part. It reports lateness percentiles on the host side (fired = the command went out; ack =
the device confirmed it; handoff = the scheduler's own jitter) and, with `simulate=True`, on the server
side too: the simulated PLC on 127.0.0.1 (or, for RTU, behind a socat pty pair) timestamps every coil
write with the same monotonic clock, so its on-edge minus due and off-edge minus on-edge are the lateness
and the width the device saw; for a serial relay a recorder on the board's end of the pty pair
timestamps the on/off byte commands.
For `plc_handshake` (the PLC owns timing) each "pulse" is one verdict write.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import ExitStack
from typing import Any

from station.actuators import build_actuator
from station.actuators.base import Actuator
from station.testbench.serial_pty import SerialBytesRecorder, SocatPtyPair
from station.config_actuators import (
    ModbusRtuActuatorConfig,
    ModbusRtuLinkConfig,
    ModbusTcpActuatorConfig,
    ModbusTcpLinkConfig,
    PlcHandshakeActuatorConfig,
    SerialRelayActuatorConfig,
)
from station.output_worker import OutputWorker
from station.precise_wait import fine_timer_slack_held, spin_until, wait_before
from station.records import ActuationReport, ActuatorResult, Decision, Reason, Verdict
from station.scheduler import RejectScheduler

log = logging.getLogger(__name__)

BENCH_TOLERANCE_MS = 5.0  # the station's default reject.late_tolerance_ms: pulses confirmed later count as late


def _wait_until(t_ns: int) -> None:
    """The bench's own pacing: sleep to SPIN_NS before `t_ns`, spin the rest (as the station's stages do)."""
    pause = wait_before(t_ns, time.monotonic_ns(), float("inf"))
    if pause > 0:
        time.sleep(pause)
    spin_until(t_ns)


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
    raise ValueError(f"no TCP simulation for {getattr(config, 'kind', config)}")


def _simulate(config: Any, stack: ExitStack) -> tuple[Any, Any]:
    """Start the simulated device for `config`; return (config pointed at it, the simulation handle).
    TCP: the pymodbus server on 127.0.0.1. RTU: the pymodbus RTU server behind a socat pty pair.
    Serial relay: a socat pty pair with a byte recorder on the board's end."""
    from station.testbench import plc_sim  # pymodbus's server: imported only when simulating

    if isinstance(config, ModbusRtuActuatorConfig) or (
            isinstance(config, PlcHandshakeActuatorConfig) and isinstance(config.link, ModbusRtuLinkConfig)):
        pair = _pty_pair(stack)
        link = config.link if isinstance(config, PlcHandshakeActuatorConfig) else config
        sim = plc_sim.start_sim_serial_server(pair.b, baudrate=link.baudrate, parity=link.parity,
                                              stopbits=link.stopbits, bytesize=link.bytesize)
        stack.callback(sim.stop)
        if isinstance(config, PlcHandshakeActuatorConfig):
            return config.model_copy(update={"link": link.model_copy(update={"port": pair.a})}), sim
        return config.model_copy(update={"port": pair.a}), sim
    if isinstance(config, SerialRelayActuatorConfig):
        pair = _pty_pair(stack)
        recorder = SerialBytesRecorder(pair.b, baudrate=config.baudrate)
        stack.callback(recorder.close)
        return config.model_copy(update={"port": pair.a}), recorder
    sim = plc_sim.start_sim_server()
    stack.callback(sim.stop)
    return simulated_config(config, sim.port), sim


def _pty_pair(stack: ExitStack) -> SocatPtyPair:
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="station-bench-"))
    pair = SocatPtyPair(folder).start()
    stack.callback(pair.kill)
    return pair


def run_pulse_bench(actuator_config: Any, *, pulses: int = 1000, pulse_ms: float = 10.0, gap_ms: float = 25.0,
                    simulate: bool = False, sim: Any = None) -> dict[str, Any]:
    """Fire `pulses` pulses of `pulse_ms`, one every `gap_ms`; return lateness/width statistics in ms.

    `simulate`: start the simulated device and point the config at it (RTU and serial relay need socat).
    `sim`: an already running `SimPlcHandle` / `SerialBytesRecorder` the config points at, for the
    server-side figures.
    """
    if pulse_ms >= gap_ms:
        raise ValueError(f"pulse_ms ({pulse_ms:g}) must be shorter than gap_ms ({gap_ms:g})")
    with ExitStack() as stack:
        if simulate and sim is None:
            actuator_config, sim = _simulate(actuator_config, stack)
        actuator: Actuator = build_actuator(actuator_config, name="bench")
        try:
            with actuator.lock:
                actuator.open()
            result = _bench(actuator, sim, pulses=pulses, pulse_ns=int(pulse_ms * 1e6), gap_ns=int(gap_ms * 1e6))
        finally:
            with actuator.lock:
                actuator.close()
    result.update(kind=actuator.kind, target=actuator.describe(), pulses=pulses, pulse_ms=pulse_ms, gap_ms=gap_ms,
                  simulated=sim is not None)
    return result


def _bench(actuator: Actuator, sim: Any, *, pulses: int, pulse_ns: int, gap_ns: int) -> dict[str, Any]:
    reports: list[ActuationReport] = []
    worker = OutputWorker(actuator, role="reject", pulse_ms=pulse_ns / 1e6, late_tolerance_ms=BENCH_TOLERANCE_MS,
                          plc_slow_clear_after=20, on_report=reports.append, on_alarm=_log_alarm, opened=True)
    # Coils: each part is handed over at capture + 0 ms. A handshake verdict goes out when it is made, with
    # the ejector (capture + delay) as its deadline: give it a second, as a real line would have.
    scheduler = RejectScheduler(worker, delay_ms=1000.0 if actuator.owns_timing else 0.0)
    events_before = _event_count(actuator, sim)
    t0 = time.monotonic_ns() + 200_000_000
    dues = [t0 + i * gap_ns for i in range(pulses)]
    worker.start()
    scheduler.start()
    try:
        with fine_timer_slack_held():  # this thread paces the handshake's verdicts as the scheduler paces pulses
            for i, due in enumerate(dues):
                if actuator.owns_timing:  # the verdict goes out when it is made: make it at the planned time
                    _wait_until(due)
                scheduler.submit(_bench_verdict(i, due, reject=i % 2 == 1 or not actuator.owns_timing))
        scheduler.drain(pulses * gap_ns / 1e9 + 10.0)
    finally:
        scheduler.stop()
        scheduler.join(5.0)
        worker.stop()
        worker.join(5.0)
    by_seq = {r.seq: r for r in reports}
    delivered = [r for r in reports if r.result in (ActuatorResult.ACKNOWLEDGED, ActuatorResult.LATE)]
    out: dict[str, Any] = {
        "host_fire_lateness_ms": percentiles([(r.sent_ns - r.due_ns) / 1e6 for r in delivered
                                              if r.sent_ns is not None and r.due_ns is not None]),
        "host_ack_lateness_ms": percentiles([r.lateness_ms for r in delivered if r.lateness_ms is not None]),
        "failures": len(reports) - len(delivered) + (pulses - len(by_seq)),
        "late": sum(r.result is ActuatorResult.LATE for r in reports),
        # A part due while the previous pulse is still verifiably on (a stalled machine) rides on it.
        "merged": sum(r.merged for r in reports),
    }
    if not actuator.owns_timing:
        out["scheduler_handoff_ms"] = percentiles(list(scheduler.handoff_lateness_ms))
    if sim is not None:
        if not actuator.owns_timing:  # one on-edge per part that sent its own on: pair the edges with those
            dues = [dues[r.seq] for r in sorted(reports, key=lambda r: r.seq)
                    if r.sent_ns is not None and not r.merged]
        out.update(_server_side(actuator, sim, dues, events_before, pulse_ns))
    return out


def _log_alarm(name: str, message: str | None) -> None:
    if message is not None:
        log.warning("alarm %s: %s", name, message)


def _event_count(actuator: Actuator, sim: Any) -> int:
    if sim is None:
        return 0
    if isinstance(sim, SerialBytesRecorder):
        return len(sim.chunks)
    return len(sim.register_writes if actuator.owns_timing else sim.coil_events)


def _edges_widths(edges: list[tuple[int, int]], dues: list[int], pulse_ns: int) -> dict[str, Any]:
    on_late = [(on - due) / 1e6 for (on, _off), due in zip(edges, dues)]
    widths = [(off - on) / 1e6 for on, off in edges]
    return {"server_on_lateness_ms": percentiles(on_late), "server_width_ms": percentiles(widths),
            "server_width_error_ms": percentiles([abs(w - pulse_ns / 1e6) for w in widths]),
            "server_pulses": len(edges)}


def _server_side(actuator: Actuator, sim: Any, dues: list[int], events_before: int, pulse_ns: int) -> dict[str, Any]:
    if isinstance(sim, SerialBytesRecorder):
        relay = getattr(actuator, "config")
        sim.wait_for(len(sim.data) + 1, timeout_s=0.3)  # let the last off arrive
        ons = sim.command_times(relay.on_command)
        offs = sim.command_times(relay.off_command)[1:]  # the first off is open()'s
        return _edges_widths(list(zip(ons, offs)), dues, pulse_ns)
    if actuator.owns_timing:
        from station.actuators.plc_handshake import PART_SEQ_LO

        address = getattr(actuator, "config").register_base + PART_SEQ_LO
        seen = [t for t, a, _v in sim.register_writes[events_before:] if a == address]
        return {"server_write_lateness_ms": percentiles([(t - d) / 1e6 for t, d in zip(seen, dues)]),
                "server_writes": len(seen)}
    edges = [p for p in sim.pulses(getattr(actuator, "config").coil, since=events_before) if p[1] >= 0]
    return _edges_widths(edges, dues, pulse_ns)


def _bench_verdict(i: int, now_ns: int, *, reject: bool) -> Verdict:
    return Verdict(seq=i, decision=Decision.REJECT if reject else Decision.OK, reason=Reason.MODEL,
                   p_defect=0.9 if reject else 0.1, threshold=0.5, t_capture_ns=now_ns, t_decided_ns=now_ns,
                   wall_time=time.time(), source="bench")


def format_result(result: dict[str, Any]) -> str:
    """The benchmark as a small text table."""
    lines = [f"actuator {result['kind']} -> {result['target']}"
             f"{' (simulated device)' if result['simulated'] else ''}",
             f"{result['pulses']} pulses of {result['pulse_ms']:g} ms every {result['gap_ms']:g} ms, "
             f"failures: {result['failures']}, confirmed later than {BENCH_TOLERANCE_MS:g} ms: {result['late']}, "
             f"merged into the previous pulse: {result['merged']}",
             f"{'measure (ms)':<28}{'n':>6}{'p50':>9}{'p99':>9}{'max':>9}"]
    for key in ("scheduler_handoff_ms", "host_fire_lateness_ms", "host_ack_lateness_ms", "server_on_lateness_ms",
                "server_width_ms", "server_width_error_ms", "server_write_lateness_ms"):
        if key in result:
            s = result[key]
            fmt = (lambda x: f"{x:9.3f}" if x is not None else f"{'-':>9}")
            lines.append(f"{key.removesuffix('_ms'):<28}{s['n']:>6}{fmt(s['p50'])}{fmt(s['p99'])}{fmt(s['max'])}")
    return "\n".join(lines)
