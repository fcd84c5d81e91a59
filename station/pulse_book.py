"""The pulse book of one reject output: what the device has confirmed, which parts wait, when the off is due.

Pure bookkeeping, no I/O and no thread: the output's worker (`station.output_worker`) asks it which
command to send next, sends it, and tells it what the device answered; the book turns that into one
`ActuationReport` per part. The rules it keeps:

- A part may claim success only from what the device confirmed. A part becoming due while the
  output is verifiably on (the on acknowledged, no off sent since) rides on that pulse ("merged");
  it is `acknowledged` when that on was confirmed no later than its due time + the tolerance, else
  `late`. Any other part gets its own on, `acknowledged` when the device confirmed it within the
  tolerance, else `late`.
- The off is timed from the acknowledgement of the on: the device may have switched on as late as
  that reply, so a pulse is never shorter than `pulse_ms` at the device, however late the on was
  (a late part gets a full-width pulse from the moment it was confirmed).
- After a failed command the output's state is unknown: the next command is an off (kept until at
  least `pulse_ms` after a failed on went out, in case it did switch on), and no on goes out until
  that off is confirmed. The parts waiting when a command fails are reported (`failed` /
  `not_sent`) at once rather than held for a device that just failed them.
"""

from __future__ import annotations

from dataclasses import dataclass

from station.actuators.base import ActuatorDeviceError, ActuatorError, ActuatorNotConnected
from station.records import MERGED_NOTE, ActuationReport, ActuatorResult

ON, OFF = True, False


@dataclass(frozen=True)
class PartDue:
    """One reject handed over by the scheduler at its due time."""

    seq: int
    due_ns: int


def describe_error(exc: ActuatorError) -> str:
    """The row's actuator_error: transport faults and device error replies are told apart."""
    if isinstance(exc, ActuatorDeviceError):
        return f"device error reply: {exc}"
    if isinstance(exc, ActuatorNotConnected):
        return f"not sent: {exc}"
    return f"transport error: {exc}"


class PulseBook:
    def __init__(self, *, pulse_ns: int, tolerance_ns: int) -> None:
        self.pulse_ns = pulse_ns
        self.tolerance_ns = tolerance_ns
        self.state: bool | None = None  # what the device confirmed; None: unknown (start, after a failure)
        self.on_since_ns: int | None = None  # acknowledgement of the on that holds the output now
        self.off_at_ns: int | None = None    # when the off goes out (None with state None: as soon as possible)
        self.owner_seq: int | None = None    # the part whose on started the pulse
        self.waiting: list[PartDue] = []
        self.pulses = 0
        self.merged = 0

    def update_timing(self, *, pulse_ns: int, tolerance_ns: int) -> None:
        """Pulse width and lateness tolerance from the next command on (live reload)."""
        self.pulse_ns, self.tolerance_ns = pulse_ns, tolerance_ns

    def state_unknown(self, *, requeue: list[PartDue] | None = None) -> None:
        """Nobody knows what the device did (its open failed, or a worker died inside a command): the next
        command is an off, at once; the parts an unconfirmed on was for wait again at the front."""
        self.state, self.on_since_ns, self.off_at_ns = None, None, None
        if requeue:
            self.waiting[:0] = requeue

    # ---- what to do next ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Parts not reported yet, plus one for a pulse that still has to be switched off."""
        return len(self.waiting) + (1 if self.state is ON else 0)

    def merge_waiting(self, now_ns: int) -> list[ActuationReport]:
        """Report the waiting parts that ride on the pulse the device holds on right now (no I/O)."""
        if self.state is not ON or not self.waiting:
            return []
        assert self.on_since_ns is not None
        reports = []
        for part in self.waiting:
            confirmed = max(part.due_ns, self.on_since_ns)
            late_ms = (confirmed - part.due_ns) / 1e6
            if confirmed - part.due_ns <= self.tolerance_ns:
                result, note = ActuatorResult.ACKNOWLEDGED, MERGED_NOTE
            else:
                result = ActuatorResult.LATE
                note = (f"{MERGED_NOTE} of part {self.owner_seq}, which the device confirmed on "
                        f"{late_ms:.1f} ms after this part was due")
            self.off_at_ns = max(self.off_at_ns or 0, confirmed + self.pulse_ns)
            self.merged += 1
            reports.append(ActuationReport(seq=part.seq, result=result, due_ns=part.due_ns, fired_ns=confirmed,
                                           error=note))
        self.waiting = []
        return reports

    def next_command(self, now_ns: int) -> bool | None:
        """ON, OFF, or None when nothing is due now (`wake_at_ns` says until when)."""
        if self.state is None:
            return OFF if self.off_at_ns is None or now_ns >= self.off_at_ns else None
        if self.state is ON:
            return OFF if self.off_at_ns is not None and now_ns >= self.off_at_ns else None
        return ON if self.waiting else None

    def wake_at_ns(self) -> int | None:
        return self.off_at_ns if self.state is not OFF else None

    @property
    def off_is_urgent(self) -> bool:
        """An off that ends a pulse, or one that parts wait behind, must not wait out the idle backoff."""
        return self.state is ON or bool(self.waiting)

    # ---- what the device answered ---------------------------------------------------------------------
    def take_batch(self) -> list[PartDue]:
        """The parts an on about to go out is for (they stay the book's until reported)."""
        batch, self.waiting = self.waiting, []
        return batch

    def on_confirmed(self, batch: list[PartDue], *, sent_ns: int, ack_ns: int) -> list[ActuationReport]:
        self.state, self.on_since_ns = ON, ack_ns
        self.off_at_ns = max(self.off_at_ns or 0, ack_ns + self.pulse_ns)
        self.owner_seq = batch[0].seq if batch else None
        self.pulses += 1
        reports = []
        for i, part in enumerate(batch):
            late_ns = ack_ns - part.due_ns
            if late_ns <= self.tolerance_ns:
                result, note = ActuatorResult.ACKNOWLEDGED, None
            else:
                result = ActuatorResult.LATE
                note = f"the device confirmed the on {late_ns / 1e6:.1f} ms after due"
            if i:  # several parts waited for one on (the device was busy): they share its pulse
                self.merged += 1
                note = f"{MERGED_NOTE} of part {batch[0].seq}" + (f"; {note}" if note else "")
            reports.append(ActuationReport(seq=part.seq, result=result, due_ns=part.due_ns, fired_ns=ack_ns,
                                           error=note, sent_ns=sent_ns))
        return reports

    def on_failed(self, batch: list[PartDue], exc: ActuatorError, *, sent_ns: int,
                  now_ns: int) -> list[ActuationReport]:
        if isinstance(exc, ActuatorNotConnected):
            result, sent = ActuatorResult.NOT_SENT, None  # nothing went out: the output is as it was
        else:
            # The on may have reached the device (a lost reply): give it its width, then re-establish off.
            result, sent = ActuatorResult.FAILED, sent_ns
            self.state, self.on_since_ns = None, None
            self.off_at_ns = max(now_ns, sent_ns + self.pulse_ns, self.off_at_ns or 0)
        return [ActuationReport(seq=p.seq, result=result, due_ns=p.due_ns, fired_ns=None, error=describe_error(exc),
                                sent_ns=sent) for p in batch] + self.fail_waiting(exc)

    def off_confirmed(self) -> None:
        self.state, self.on_since_ns, self.off_at_ns, self.owner_seq = OFF, None, None, None

    def off_failed(self, exc: ActuatorError) -> list[ActuationReport]:
        """The output may be on: it stays unknown, the off is retried before any on."""
        self.state, self.on_since_ns, self.off_at_ns = None, None, None
        return self.fail_waiting(exc)

    def fail_waiting(self, exc: ActuatorError) -> list[ActuationReport]:
        """Parts still waiting for an on that cannot go out now: nothing was sent for them."""
        batch = self.take_batch()
        why = f"not sent: the output could not be confirmed off first ({describe_error(exc)})"
        return [ActuationReport(seq=p.seq, result=ActuatorResult.NOT_SENT, due_ns=p.due_ns, fired_ns=None,
                                error=why) for p in batch]

    def abandon(self, why: str) -> list[ActuationReport]:
        """The station stops with parts still waiting: say so in their rows."""
        batch = self.take_batch()
        return [ActuationReport(seq=p.seq, result=ActuatorResult.NOT_SENT, due_ns=p.due_ns, fired_ns=None,
                                error=why) for p in batch]
