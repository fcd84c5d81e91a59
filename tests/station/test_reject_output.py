"""The reject scheduler and the output workers against pymodbus's own server on 127.0.0.1 (coil writes
timestamped server-side): pulse width from the actual on, one slow device delaying nothing else, device
error replies told apart from transport faults, and the plc_slow hysteresis.
"""

from __future__ import annotations

import time

from delay_proxy import DelayProxy
from support import RejectOutput, reject_verdict

from station.testbench.plc_sim import start_sim_server
from station.records import ActuatorResult
from station.reply_monitor import SlowReplyMonitor

COIL = 2
PULSE_MS = 20.0
DELAY_MS = 50.0
verdict = reject_verdict


def output(port: int, *, role: str = "reject", coil: int = COIL) -> RejectOutput:
    return RejectOutput(port, role=role, coil=coil, pulse_ms=PULSE_MS, delay_ms=DELAY_MS)


def sleep_until(t_ns: int) -> None:
    time.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))


def test_a_late_on_still_gives_a_full_width_pulse(sim_plc):
    out = output(sim_plc.port)
    try:
        t0 = time.monotonic_ns() + 50_000_000
        for seq in range(1, 9):
            at = t0 + seq * 100_000_000
            sleep_until(at)
            # Handed over 12 ms after its due time, as when a loaded machine stalls the timing thread.
            out.scheduler.submit(verdict(seq, at - int((DELAY_MS + 12) * 1e6)))
        assert out.scheduler.drain(5)
    finally:
        out.close()
    pulses = sim_plc.pulses(COIL)
    widths_ms = [(off - on) / 1e6 for on, off in pulses]
    assert len(pulses) == 8
    assert min(widths_ms) >= PULSE_MS, f"pulses shorter than {PULSE_MS} ms at the PLC: {widths_ms}"
    assert max(widths_ms) <= PULSE_MS + 50, widths_ms  # the on's round trip, not a stuck output
    assert [r.result for r in out.reports] == [ActuatorResult.LATE] * 8
    assert all(12 <= r.lateness_ms < 100 for r in out.reports)
    # The off went out pulse_ms after the device confirmed the on, not pulse_ms after the part was due.
    for (on_ns, off_ns), report in zip(pulses, out.reports):
        assert off_ns - report.fired_ns >= PULSE_MS * 1e6


def test_a_slow_reject_plc_delays_neither_the_scheduler_nor_the_alarm_lamp(sim_plc):
    lamp_plc = start_sim_server("127.0.0.1", 0)
    proxy = DelayProxy(sim_plc.port, hold_ms=150).start()
    reject = output(proxy.port)
    lamp = output(lamp_plc.port, role="alarm", coil=7)
    try:
        now = time.monotonic_ns()
        for seq in range(1, 11):  # 20 parts/s, each due 50 ms after capture
            reject.scheduler.submit(verdict(seq, now + seq * 50_000_000))
        sleep_until(now + 200_000_000)  # the reject PLC is busy with a 150 ms request now
        assert reject.worker.busy_since_ns is not None
        asked_ns = time.monotonic_ns()
        lamp.worker.set_level(True)
        deadline = time.monotonic() + 2
        while not lamp_plc.coil(7) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert lamp_plc.coil(7)
        lamp_on_ns = [t for t, a, v in lamp_plc.coil_events if a == 7 and v][0]
        assert reject.scheduler.drain(5)
    finally:
        reject.close()
        lamp.close()
        proxy.stop()
        lamp_plc.stop()
    assert (lamp_on_ns - asked_ns) / 1e6 < 50, "the alarm lamp waited for the slow reject PLC"
    assert len(reject.scheduler.handoff_lateness_ms) == 10
    assert max(reject.scheduler.handoff_lateness_ms) < 50, "the scheduler waited for the slow reject PLC"
    assert reject.raised("plc_slow") and reject.raised("plc_slow")[0] is not None
    assert not lamp.raised("plc_slow"), "only the reject output's timing is judged"


def test_device_error_replies_are_told_apart_from_transport_faults_and_the_output_goes_off_first(sim_plc):
    from pymodbus.constants import ExcCodes

    out = output(sim_plc.port)
    port = sim_plc.port
    try:
        accepted_before = len(sim_plc.coil_events)
        sim_plc.fail_writes_with = ExcCodes.DEVICE_FAILURE
        out.scheduler.submit(verdict(1, time.monotonic_ns() - int(DELAY_MS * 1e6)))
        assert out.scheduler.drain(2)
        sim_plc.fail_writes_with = None
        time.sleep(0.3)  # the worker re-establishes the output: off first, before any on
        events = len(sim_plc.coil_events)
        out.scheduler.submit(verdict(2, time.monotonic_ns() - int(DELAY_MS * 1e6)))
        assert out.scheduler.drain(2)
        sim_plc.stop()
        out.scheduler.submit(verdict(3, time.monotonic_ns() - int(DELAY_MS * 1e6)))
        assert out.scheduler.drain(2)
        start_sim_server("127.0.0.1", port, record_into=sim_plc)
    finally:
        out.close()
    first, second, third = out.reports
    assert first.result is ActuatorResult.FAILED and first.error.startswith("device error reply:")
    assert "exception code 4" in first.error
    assert second.result is ActuatorResult.ACKNOWLEDGED
    assert third.result in (ActuatorResult.FAILED, ActuatorResult.NOT_SENT)
    assert third.error.startswith(("transport error:", "not sent:"))
    assert out.worker.actuator.link.device_errors >= 1
    # After the error reply the first write the PLC accepted was an off; the next part's on came after it.
    assert [v for t, a, v in sim_plc.coil_events[accepted_before:] if a == COIL][:1] == [False]
    assert [v for t, a, v in sim_plc.coil_events[events:] if a == COIL][:2] == [True, False]
    assert [m for m in out.raised("reject_actuator") if m][0].endswith("exception code 4")


def test_plc_slow_rises_at_the_first_slow_reply_and_clears_only_after_a_run_of_timely_ones():
    alarms: list[tuple[str, str | None]] = []
    monitor = SlowReplyMonitor(tolerance_ns=5_000_000, clear_after=3, on_alarm=lambda n, m: alarms.append((n, m)),
                               device="plc")
    monitor.reply(1_000_000)
    assert alarms == []
    monitor.reply(8_000_000)
    assert alarms[-1][0] == "plc_slow" and "8.0 ms" in alarms[-1][1]
    for round_trip in (1_000_000, 1_000_000, 9_000_000, 1_000_000, 1_000_000):
        monitor.reply(round_trip)
    assert len(alarms) == 1, "a slow reply inside the run starts the count again; no flapping"
    monitor.reply(1_000_000)
    assert alarms[-1] == ("plc_slow", None) and len(alarms) == 2
