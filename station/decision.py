"""Turning predictions into verdicts, and making sure every captured part gets exactly one in time.

Every part is registered at capture with its deadline (`t_capture + decision.deadline_ms`). It then
leaves the pending set through exactly one door: a prediction in time (threshold decides), an
immediate fail-safe (bad frame, overrun, model error), or the `DeadlineWatch` thread when the
deadline passes first (fail-safe `timeout`). A prediction whose frame failed the validity gate gets
a reject with reason `image_check`, whatever `decision.fail_safe` says: the model's verdict on a
frame outside its validated domain is no evidence the part is good, so that reject is never turned
into an `ok`. A prediction that arrives after its part timed out is still handed on as a late
prediction so the log keeps it.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from station.records import Decision, Frame, Prediction, Reason, Verdict
from station.stage import IDLE_WAIT_S, Stage

log = logging.getLogger(__name__)

VerdictSink = Callable[[Verdict, Frame], None]
LateSink = Callable[[Prediction], None]


@dataclass(frozen=True)
class DecisionSettings:
    threshold: float
    deadline_ms: float
    fail_safe: str = "reject"  # "reject" | "ok"


class DecisionMaker:
    """Thread-safe: capture, inference and the deadline watch all call into it."""

    def __init__(self, settings: DecisionSettings, on_verdict: VerdictSink, on_late: LateSink) -> None:
        self.settings = settings
        self._on_verdict = on_verdict
        self._on_late = on_late
        self._lock = threading.Lock()
        self._pending: dict[int, Frame] = {}
        self._deadlines: list[tuple[int, int]] = []  # (deadline_ns, seq) heap
        self._wakeup = threading.Condition(self._lock)
        self._forced: tuple[Reason, str] | None = None

    def update_settings(self, settings: DecisionSettings) -> None:
        """Applied from the next decision on (SIGHUP reload)."""
        with self._lock:
            self.settings = settings

    def force_fail_safe(self, reason: Reason | None, detail: str | None = None) -> None:
        """From the next prediction on, every part gets the fail-safe verdict for `reason` (its score is
        kept in the row); None: decide by the model again. For conditions outside the part itself,
        such as a trace log that cannot keep rows."""
        with self._lock:
            self._forced = None if reason is None else (reason, detail or reason.value)

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def deadline_ns(self, frame: Frame) -> int:
        """When `frame`'s verdict is due at the latest (monotonic ns), under the current settings."""
        return frame.t_capture_ns + int(self.settings.deadline_ms * 1e6)

    def register(self, frame: Frame) -> None:
        deadline = self.deadline_ns(frame)
        with self._lock:
            self._pending[frame.seq] = frame
            heapq.heappush(self._deadlines, (deadline, frame.seq))
            self._wakeup.notify()

    def _take(self, seq: int) -> Frame | None:
        with self._lock:
            return self._pending.pop(seq, None)

    def on_prediction(self, frame: Frame, prediction: Prediction) -> None:
        if self._take(frame.seq) is None:
            self._on_late(prediction)  # the part already got its fail-safe verdict
            return
        s = self.settings
        now = time.monotonic_ns()
        if prediction.failure is not None:
            self._emit(self._fail_safe_verdict(frame, prediction.failure, prediction.error or prediction.failure.value,
                                               now, prediction), frame)
            return
        if now > frame.t_capture_ns + int(s.deadline_ms * 1e6):
            # Finished, but too late to trust the ejector timing: fail safe, keep the score in the row.
            self._emit(self._fail_safe_verdict(frame, Reason.TIMEOUT, "prediction after the deadline", now,
                                               prediction), frame)
            return
        assert prediction.p_defect is not None
        gate = prediction.gate
        if gate is not None and not gate.passed:
            # Outside the validity domain: always a reject (decision.fail_safe: ok does not apply here).
            self._emit(Verdict(seq=frame.seq, decision=Decision.REJECT, reason=Reason.IMAGE_CHECK,
                               p_defect=prediction.p_defect, threshold=s.threshold, t_capture_ns=frame.t_capture_ns,
                               t_decided_ns=now, wall_time=frame.wall_time, source=frame.source, label=frame.label,
                               model_id=prediction.model_id, infer_ms=prediction.infer_ms,
                               detail=f"outside the validity domain: {gate.describe()}", gate=gate), frame)
            return
        forced = self._forced  # tracelog.when_rows_cannot_be_kept: fail_safe while rows cannot be kept
        if forced is not None:
            self._emit(self._fail_safe_verdict(frame, forced[0], forced[1], now, prediction), frame)
            return
        decision = Decision.REJECT if prediction.p_defect >= s.threshold else Decision.OK
        self._emit(Verdict(seq=frame.seq, decision=decision, reason=Reason.MODEL, p_defect=prediction.p_defect,
                           threshold=s.threshold, t_capture_ns=frame.t_capture_ns, t_decided_ns=now,
                           wall_time=frame.wall_time, source=frame.source, label=frame.label,
                           model_id=prediction.model_id, infer_ms=prediction.infer_ms, gate=gate), frame)

    def fail_safe(self, frame: Frame, reason: Reason, detail: str) -> None:
        """Immediate fail-safe verdict for a registered part (bad frame, overrun, shutdown)."""
        if self._take(frame.seq) is None:
            return
        self._emit(self._fail_safe_verdict(frame, reason, detail, time.monotonic_ns(), None), frame)

    def expire(self, now_ns: int | None = None) -> int:
        """Give every part past its deadline the fail-safe `timeout` verdict; return how many."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        expired: list[Frame] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now_ns:
                _, seq = heapq.heappop(self._deadlines)
                frame = self._pending.pop(seq, None)
                if frame is not None:
                    expired.append(frame)
        for frame in expired:
            log.warning("part %d: no prediction within %.0f ms", frame.seq, self.settings.deadline_ms)
            self._emit(self._fail_safe_verdict(frame, Reason.TIMEOUT, "no prediction before the deadline",
                                               now_ns, None), frame)
        return len(expired)

    def fail_all_pending(self, reason: Reason, detail: str) -> int:
        with self._lock:
            frames = sorted(self._pending.values(), key=lambda f: f.seq)
            self._pending.clear()
            self._deadlines.clear()
        now = time.monotonic_ns()
        for frame in frames:
            self._emit(self._fail_safe_verdict(frame, reason, detail, now, None), frame)
        return len(frames)

    def wait_next_deadline(self, timeout_s: float) -> None:
        """Sleep until the earliest deadline (or `timeout_s`, or a new registration)."""
        with self._lock:
            if self._deadlines:
                wait_s = (self._deadlines[0][0] - time.monotonic_ns()) / 1e9
                timeout_s = max(0.0, min(timeout_s, wait_s))
            if timeout_s > 0:
                self._wakeup.wait(timeout_s)

    def _fail_safe_verdict(self, frame: Frame, reason: Reason, detail: str, now_ns: int,
                           prediction: Prediction | None) -> Verdict:
        s = self.settings
        decision = Decision.REJECT if s.fail_safe == "reject" else Decision.OK
        return Verdict(seq=frame.seq, decision=decision, reason=reason,
                       p_defect=prediction.p_defect if prediction else None, threshold=s.threshold,
                       t_capture_ns=frame.t_capture_ns, t_decided_ns=now_ns, wall_time=frame.wall_time,
                       source=frame.source, label=frame.label,
                       model_id=prediction.model_id if prediction else "",
                       infer_ms=prediction.infer_ms if prediction else None, detail=detail,
                       gate=prediction.gate if prediction else None)

    def _emit(self, verdict: Verdict, frame: Frame) -> None:
        self._on_verdict(verdict, frame)


class DeadlineWatch(Stage):
    """Issues `timeout` verdicts even when the inference worker hangs."""

    def __init__(self, decision: DecisionMaker) -> None:
        super().__init__("deadline-watch")
        self.decision = decision

    def step(self) -> bool:
        if self.stop_event.is_set():
            return False
        self.decision.wait_next_deadline(IDLE_WAIT_S)
        self.decision.expire()
        return True
