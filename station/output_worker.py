"""The output worker: one thread per reject or alarm device that does all of that device's I/O.

Nobody else talks to the device while the station runs: the reject scheduler hands a part over at
its due time (`request_pulse`), the decision hands a PLC-handshake verdict over as soon as it is
made (`send_verdict`), housekeeping sets the alarm lamp's wanted state (`set_level`); each of these
only queues and returns, so a slow or dead device delays nothing but its own commands. The worker
sends what is due, in order: the pulse bookkeeping (merging, the off timed from the on's
acknowledgement, off first after a failure) is `station.pulse_book`; a handshake verdict whose part
has already reached the ejector is not sent any more (the PLC sees the gap in PART_SEQ); an alarm
lamp is driven to the wanted state until the device confirms it. While something waits, a link
that is down gets a reconnect attempt every `reconnect_busy_ms`; with nothing waiting, the doubling
backoff applies. Every part gets exactly one `ActuationReport`. The reject output's worker raises
`reject_actuator` (a command failed), `reject_output_stuck` (an off that could not be confirmed) and
`plc_slow` (`station.reply_monitor`). The thread is a `station.stage.Stage`: busy while it waits
for the device, `adopt()` for the supervisor's restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from station.actuators.base import Actuator, ActuatorError, ActuatorNotConnected
from station.precise_wait import SPIN_NS, spin_until, wait_before
from station.pulse_book import OFF, ON, PartDue, PulseBook, describe_error
from station.records import ActuationReport, ActuatorResult, Verdict
from station.reply_monitor import SlowReplyMonitor
from station.stage import IDLE_WAIT_S, Stage

log = logging.getLogger(__name__)

ReportSink = Callable[[ActuationReport], None]
AlarmHook = Callable[[str, str | None], None]


@dataclass(frozen=True)
class VerdictCommand:
    verdict: Verdict
    due_ns: int       # when it was handed over: lateness is counted from here
    deadline_ns: int  # the part reaches the ejector: later, the PLC can no longer act on it


class OutputWorker(Stage):
    busy_doing = "waiting for its device"
    timing_critical = True

    def __init__(self, actuator: Actuator, *, role: str, pulse_ms: float, late_tolerance_ms: float,
                 plc_slow_clear_after: int, on_report: ReportSink, on_alarm: AlarmHook,
                 opened: bool = False) -> None:
        super().__init__(f"{role}-output")
        self.actuator = actuator
        self.role = role
        self.fail_alarm = "reject_actuator" if role == "reject" else "alarm_output"
        self.on_report = on_report
        self.on_alarm = on_alarm
        self.opened = threading.Event()  # the first open attempt is over (whatever its outcome)
        tolerance_ns = int(late_tolerance_ms * 1e6)
        self.book = PulseBook(pulse_ns=int(pulse_ms * 1e6), tolerance_ns=tolerance_ns)
        self.slow = SlowReplyMonitor(tolerance_ns=tolerance_ns, clear_after=plc_slow_clear_after,
                                     on_alarm=on_alarm, device=actuator.describe()) if role == "reject" else None
        self._cond = threading.Condition()
        self._verdicts: deque[VerdictCommand] = deque()
        self._level_wanted: int | None = None  # the alarm code wanted on this output (0: healthy)
        self._level_state: int | None = None
        self._open_needed = not opened
        self._ready_pending = False
        self._pulsed = role == "reject" and not actuator.owns_timing  # the book drives this output
        self._in_flight: list[PartDue] = []          # the parts an on being sent is for
        self._verdict_in_flight: VerdictCommand | None = None
        self._retry_at_ns = 0
        self._maybe_on = False  # an on went out since the last confirmed off
        self.failures = 0
        if opened:  # the caller's open() drove the output off
            self.book.state, self._level_state = OFF, 0
            self.opened.set()

    # ---- called from other threads: queue and return --------------------------------------------------
    @property
    def owns_timing(self) -> bool:
        return self.actuator.owns_timing

    def request_pulse(self, seq: int, due_ns: int) -> None:
        with self._cond:
            self.book.waiting.append(PartDue(seq, due_ns))
            self._cond.notify()

    def send_verdict(self, verdict: Verdict, *, due_ns: int, deadline_ns: int) -> None:
        with self._cond:
            self._verdicts.append(VerdictCommand(verdict, due_ns, deadline_ns))
            self._cond.notify()

    def set_level(self, code: int) -> None:
        """Drive the output to the station's alarm code (an alarm lamp: on for any code but 0; a handshake:
        its ALARM_CODE register) and keep at it until confirmed."""
        with self._cond:
            if self._level_wanted != code:
                self._level_wanted = code
                self._cond.notify()

    def update_timing(self, *, pulse_ms: float, late_tolerance_ms: float, plc_slow_clear_after: int) -> None:
        """Applies from the next command on (SIGHUP reload)."""
        with self._cond:
            self.book.update_timing(pulse_ns=int(pulse_ms * 1e6), tolerance_ns=int(late_tolerance_ms * 1e6))
            if self.slow is not None:
                self.slow.update(tolerance_ns=self.book.tolerance_ns, clear_after=plc_slow_clear_after)

    def mark_ready(self) -> None:
        """The station decides parts now: a handshake PLC is told (READY = 1) before any verdict that follows."""
        with self._cond:
            self._ready_pending = True
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Commands not done yet: waiting parts and verdicts, and a pulse still to be switched off."""
        with self._cond:
            return (self.book.pending + len(self._verdicts) + len(self._in_flight)
                    + (self._verdict_in_flight is not None))

    @property
    def output_may_be_on(self) -> bool:
        return self._pulsed and (self._maybe_on or self.book.state is not OFF)

    def wait_opened(self, timeout_s: float) -> bool:
        return self.opened.wait(timeout_s)

    def drain(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < end:
            time.sleep(0.01)
        return self.pending == 0

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def adopt(self, old: Stage) -> None:
        """Take over the commands and state of a worker whose thread died, before start()."""
        assert isinstance(old, OutputWorker)
        with old._cond:
            self.book, self._verdicts = old.book, old._verdicts
            self._level_wanted, self.failures = old._level_wanted, old.failures
            self._open_needed, self._maybe_on = old._open_needed, old._maybe_on
            if old.slow is not None:
                self.slow = old.slow
            if old._in_flight:  # it died inside an on: nobody knows what the device did
                self.book.state_unknown(requeue=old._in_flight)
                old._in_flight = []
            if old._verdict_in_flight is not None:
                self._verdicts.appendleft(old._verdict_in_flight)
                old._verdict_in_flight = None
            old.book, old._verdicts = PulseBook(pulse_ns=0, tolerance_ns=0), deque()
        self.opened.set()

    # ---- the worker thread ------------------------------------------------------------------------------
    def step(self) -> bool:
        reports: list[ActuationReport] = []
        with self._cond:
            if self.stop_event.is_set():
                reports = self._abandon()
                command = None
            else:
                command, wake_ns = self._next_command(time.monotonic_ns(), reports)
                if command is None and not reports:
                    self._wait(wake_ns)
                    return True
        self._emit(reports)
        if self.stop_event.is_set() and command is None:
            return False
        if command is not None:
            self._send(*command)
        return True

    def _wait(self, wake_ns: int | None) -> None:
        """Called holding the condition: sleep until woken, `wake_ns`, or the heartbeat period."""
        now = time.monotonic_ns()
        if wake_ns is not None and wake_ns - now <= SPIN_NS:
            self._cond.release()
            try:
                spin_until(wake_ns)  # the off of a pulse: a condition wait can wake late
            finally:
                self._cond.acquire()
            return
        self._cond.wait(IDLE_WAIT_S if wake_ns is None else wait_before(wake_ns, now, IDLE_WAIT_S))

    def _next_command(self, now: int, reports: list[ActuationReport]) -> tuple[tuple | None, int | None]:
        """The next command to send, or (None, when to look again). Called holding the condition."""
        if self._open_needed:
            return ("open",), None
        if self._ready_pending:
            self._ready_pending = False  # one write; the handshake's heartbeat repeats it anyway
            return ("ready",), None
        while self._verdicts and self._verdicts[0].deadline_ns < now:
            reports.append(self._expired(self._verdicts.popleft()))
        if self._verdicts:
            wait_ns = self._link_wait_ns(busy=True, now=now)
            if wait_ns:
                return None, now + wait_ns
            self._verdict_in_flight = self._verdicts.popleft()
            return ("verdict", self._verdict_in_flight), None
        reports.extend(self.book.merge_waiting(now))
        command = self.book.next_command(now)
        if command is not None:
            busy = command is ON or self.book.off_is_urgent
            wait_ns = self._link_wait_ns(busy=busy, now=now)
            if wait_ns:
                return None, now + wait_ns
            if command is OFF:
                return ("off",), None
            self._in_flight = self.book.take_batch()
            return ("on",), None
        if self._level_wanted is not None and self._level_wanted != self._level_state:
            wait_ns = self._link_wait_ns(busy=True, now=now)
            return (("level", self._level_wanted), None) if wait_ns == 0 else (None, now + wait_ns)
        return None, self.book.wake_at_ns()

    def _link_wait_ns(self, *, busy: bool, now: int) -> int:
        backoff_ns = int(self.actuator.link_wait_s(busy=busy) * 1e9)
        return max(0, backoff_ns, self._retry_at_ns - now)

    def _send(self, kind: str, arg: object = None) -> None:
        sent = time.monotonic_ns()
        try:
            with self.busy(), self.actuator.lock:
                if kind == "open":
                    self.actuator.open_safe()
                elif kind == "ready":
                    self.actuator.mark_ready()
                elif kind == "verdict":
                    assert isinstance(arg, VerdictCommand)
                    self.actuator.send_verdict(arg.verdict)
                elif kind == "level":
                    self.actuator.set_alarm_level(int(arg))
                else:
                    self.actuator.set_output(kind == "on")
        except ActuatorError as exc:
            self._failed(kind, arg, exc, sent_ns=sent)
        else:
            self._succeeded(kind, arg, sent_ns=sent, ack_ns=time.monotonic_ns())

    def _succeeded(self, kind: str, arg: object, *, sent_ns: int, ack_ns: int) -> None:
        reports: list[ActuationReport] = []
        with self._cond:
            self._retry_at_ns = 0
            if kind == "open":
                self._open_needed = False
                self.book.off_confirmed()
                self._level_state = 0
                self.opened.set()
            elif kind == "on":
                reports = self.book.on_confirmed(self._in_flight, sent_ns=sent_ns, ack_ns=ack_ns)
                self._in_flight = []
                self._maybe_on = True
            elif kind == "off":
                self.book.off_confirmed()
            elif kind == "level":
                self._level_state = int(arg)
            elif kind == "verdict":
                assert isinstance(arg, VerdictCommand)
                reports = [self._verdict_report(arg, sent_ns=sent_ns, ack_ns=ack_ns)]
                self._verdict_in_flight = None
        if kind == "off" and self._maybe_on:
            self._maybe_on = False
            self.on_alarm("reject_output_stuck", None)
        if self.slow is not None and kind not in ("open", "ready"):
            self.slow.reply(ack_ns - sent_ns)
        self.on_alarm(self.fail_alarm, None)
        self._emit(reports)

    def _failed(self, kind: str, arg: object, exc: ActuatorError, *, sent_ns: int) -> None:
        self.failures += 1
        now = time.monotonic_ns()
        reports: list[ActuationReport] = []
        with self._cond:
            self._retry_at_ns = now + int(self.actuator.retry_interval_s * 1e9)
            if kind == "open":
                # Unknown until an off is confirmed; the driver reconnects from here on (a handshake's
                # heartbeat thread, or the off/level commands below), so open is not tried again.
                self._open_needed = False
                self._level_state = None
                if self._pulsed:
                    self.book.state_unknown()
                self.opened.set()
            elif kind == "on":
                reports = self.book.on_failed(self._in_flight, exc, sent_ns=sent_ns, now_ns=now)
                self._maybe_on = self._maybe_on or not isinstance(exc, ActuatorNotConnected)
                self._in_flight = []
            elif kind == "off":
                reports = self.book.off_failed(exc)
            elif kind == "level":
                self._level_state = None
            elif kind == "verdict":
                assert isinstance(arg, VerdictCommand)
                result = ActuatorResult.NOT_SENT if isinstance(exc, ActuatorNotConnected) else ActuatorResult.FAILED
                reports = [ActuationReport(seq=arg.verdict.seq, result=result, due_ns=arg.due_ns, fired_ns=None,
                                           error=describe_error(exc), sent_ns=sent_ns)]
                self._verdict_in_flight = None
        what = "unavailable at start" if kind == "open" else f"{kind} failed"
        self.on_alarm(self.fail_alarm, f"{self.actuator.describe()} {what}: {describe_error(exc)}")
        if kind == "off" and self._maybe_on and self.role == "reject":
            self.on_alarm("reject_output_stuck", f"reject output could not be switched off: {describe_error(exc)}")
        self._emit(reports)

    def _verdict_report(self, command: VerdictCommand, *, sent_ns: int, ack_ns: int) -> ActuationReport:
        late_ns = ack_ns - command.due_ns
        if late_ns <= self.book.tolerance_ns:
            return ActuationReport(seq=command.verdict.seq, result=ActuatorResult.ACKNOWLEDGED,
                                   due_ns=command.due_ns, fired_ns=ack_ns, sent_ns=sent_ns)
        return ActuationReport(seq=command.verdict.seq, result=ActuatorResult.LATE, due_ns=command.due_ns,
                               fired_ns=ack_ns, sent_ns=sent_ns,
                               error=f"the PLC confirmed the verdict {late_ns / 1e6:.1f} ms after it was made")

    def _expired(self, command: VerdictCommand) -> ActuationReport:
        return ActuationReport(seq=command.verdict.seq, result=ActuatorResult.NOT_SENT, due_ns=command.due_ns,
                               fired_ns=None, error="not sent: the part reached the ejector before the PLC link "
                                                    "was free (the PLC sees a gap in PART_SEQ)")

    def _abandon(self) -> list[ActuationReport]:
        """Stopping: whatever still waits is reported as not sent (the station drained before, if it could)."""
        why = "not sent: the station stopped first"
        reports = self.book.abandon(why)
        while self._verdicts:
            command = self._verdicts.popleft()
            reports.append(ActuationReport(seq=command.verdict.seq, result=ActuatorResult.NOT_SENT,
                                           due_ns=command.due_ns, fired_ns=None, error=why))
        return reports

    def _emit(self, reports: list[ActuationReport]) -> None:
        for report in reports:
            self.on_report(report)
