"""Station health: the set of active alarms, and the running counters reported in summaries.

`Health` holds named alarms (camera, PLC, trace log, ...). Any stage raises or clears its own; the
station is healthy while none is active, and the alarm output follows that. `Stats` counts
verdicts, fail-safe reasons, labelled outcomes (escapes, false rejects) and latencies for the
summary lines, `station replay` and `station bench`.
"""

from __future__ import annotations

import logging
import itertools
import threading
from collections import Counter, deque
from typing import Callable

import numpy as np

from station.records import MERGED_NOTE, ActuationReport, ActuatorResult, Decision, Reason, Verdict

log = logging.getLogger(__name__)


class Health:
    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._alarms: dict[str, str] = {}
        self._on_change = on_change
        self.raised_total = 0

    def set_alarm(self, name: str, message: str | None) -> None:
        """Raise (`message`) or clear (`None`) one named alarm; log only on change."""
        with self._lock:
            before = bool(self._alarms)
            old = self._alarms.get(name)
            if message is None:
                if old is None:
                    return
                del self._alarms[name]
                log.warning("alarm cleared: %s", name)
            else:
                if old is not None:
                    self._alarms[name] = message
                    return
                self._alarms[name] = message
                self.raised_total += 1
                log.error("ALARM %s: %s", name, message)
            after = bool(self._alarms)
        if before != after and self._on_change is not None:
            self._on_change(not after)

    @property
    def healthy(self) -> bool:
        with self._lock:
            return not self._alarms

    def alarms(self) -> dict[str, str]:
        with self._lock:
            return dict(self._alarms)

    def summary(self) -> str:
        alarms = self.alarms()
        if not alarms:
            return "healthy"
        return "ALARM " + "; ".join(f"{k}: {v}" for k, v in sorted(alarms.items()))


LATENCY_WINDOW = 100_000


def percentiles(values: list[float] | deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parts = 0
        self.decisions: Counter[str] = Counter()
        self.fail_safe: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # tp / tn / escape / false_reject (labelled parts only)
        self.actuator: Counter[str] = Counter()
        self.merged_pulses = 0  # rejects held out by an overlapping pulse instead of their own "on"
        self.image_checks: Counter[str] = Counter()  # image_check rejects by violated limit (one part may count twice)
        # Percentiles over the most recent parts: a service runs for months, memory must not grow.
        self.decide_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.infer_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.lateness_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def add_verdict(self, v: Verdict) -> None:
        with self._lock:
            self.parts += 1
            self.decisions[v.decision.value] += 1
            if v.is_fail_safe:
                self.fail_safe[v.reason.value] += 1
            if v.reason is Reason.IMAGE_CHECK and v.gate is not None:
                self.image_checks.update(v.gate.failed)
            self.decide_ms.append(v.decide_ms)
            if v.infer_ms is not None:
                self.infer_ms.append(v.infer_ms)
            if v.label in ("defective", "ok"):
                rejected = v.decision is Decision.REJECT
                if v.label == "defective":
                    self.outcomes["caught" if rejected else "escape"] += 1
                else:
                    self.outcomes["false_reject" if rejected else "passed"] += 1

    def add_report(self, r: ActuationReport) -> None:
        with self._lock:
            self.actuator[r.result.value] += 1
            if r.merged:
                self.merged_pulses += 1
            if r.lateness_ms is not None and r.result in (ActuatorResult.ACKNOWLEDGED, ActuatorResult.LATE):
                self.lateness_ms.append(r.lateness_ms)

    def snapshot(self) -> dict:
        with self._lock:
            labelled = sum(self.outcomes.values())
            correct = self.outcomes["caught"] + self.outcomes["passed"]
            return {
                "parts": self.parts,
                "ok": self.decisions["ok"],
                "reject": self.decisions["reject"],
                "fail_safe": dict(self.fail_safe),
                "image_checks": dict(self.image_checks),
                "labelled": labelled,
                "accuracy": correct / labelled if labelled else None,
                "escapes": self.outcomes["escape"],
                "false_rejects": self.outcomes["false_reject"],
                "actuator": dict(self.actuator),
                "merged_pulses": self.merged_pulses,
                "decide_ms": percentiles(self.decide_ms),
                "infer_ms": percentiles(self.infer_ms),
                "fire_lateness_ms": percentiles(self.lateness_ms),
            }

    def counts(self) -> dict:
        """The counters of `snapshot` without its percentiles (cheap; for the live-state channel)."""
        with self._lock:
            return {"parts": self.parts, "ok": self.decisions["ok"], "reject": self.decisions["reject"],
                    "fail_safe": dict(self.fail_safe), "outcomes": dict(self.outcomes),
                    "actuator": dict(self.actuator), "merged_pulses": self.merged_pulses}

    def recent_percentiles(self, n: int = 1000) -> dict[str, dict[str, float | None]]:
        """Latency percentiles over the last `n` parts only: cheap enough for the live-state channel, which
        asks several times a second from inside the station process (the full window costs milliseconds)."""
        with self._lock:
            recent = {name: list(itertools.islice(reversed(values), n)) for name, values in
                      (("decide_ms", self.decide_ms), ("infer_ms", self.infer_ms),
                       ("fire_lateness_ms", self.lateness_ms))}
        return {name: percentiles(values) for name, values in recent.items()}

    def line(self) -> str:
        s = self.snapshot()
        fs = sum(s["fail_safe"].values())
        return (f"parts={s['parts']} ok={s['ok']} reject={s['reject']} fail_safe={fs} "
                f"image_check={s['fail_safe'].get('image_check', 0)} "
                f"actuator_failed={s['actuator'].get('failed', 0) + s['actuator'].get('not_sent', 0)}")
