"""The validity gate at run time: the limits a frame must keep, per station, and the watch over many parts.

`Gate.build` starts from the limits the model artifact was calibrated with and applies the station
YAML's `gate.limits` (each key replaces the model's value for that side), then refuses a combination
where a minimum is not below its maximum. `Gate.check` compares one frame's measures and returns the
`GateResult` the decision module turns into an `image_check` reject when any limit is violated. A YAML
value that widens a calibrated limit is allowed (a station may know its optics better), but reported at
every start: frames beyond the validated domain then reach the model.

`GateMonitor.observe` sees every verdict. The alarm counts, among the last `gate.alarm.n` parts the gate
measured, those it failed: at `k` or more it raises `image_quality` (alarm output, PLC alarm code,
STATUS=, events table), because a run of image_check rejects means the camera cannot see (a covered lens,
a dead lamp, lost focus, a moved camera) and the line should stop rather than reject everything; it
clears when the count has fallen to k // 2. The drift monitor keeps rolling means of every gate measure
over `gate.drift.window_parts` parts and compares each with the training reference: when a mean has
moved `gate.drift.warn_share` of the way toward its target it writes a `drift` WARNING event. The target
is the nearer of the gate limit and the calibrated failure boundary (the mean value at which the model
starts to misjudge parts), so a systematic shift too small to fail any single frame, such as a camera
moved a few percent closer, is reported before it costs verdicts. It does the same for the share of
unsure p_defect scores, the reject rate and the fail-safe rate. Both show in the summary line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from station.artifact import ModelArtifactError
from station.config_gate import GateAlarm, GateDrift, GateLimits
from station.image_checks import ALL_MEASURES
from station.records import Decision, GateResult, Verdict
from station.validity import LIMIT_SIDES, Limits, ValidityDomain, failed_checks

if TYPE_CHECKING:
    from station.classifier import Classifier

log = logging.getLogger(__name__)

ALARM = "image_quality"
UNCERTAIN = (0.1, 0.9)  # p_defect band in which the model is unsure
CLEAR_FACTOR = 0.8       # a drift clears below this share of its warning level (no flapping)

AlarmHook = Callable[[str, str | None], None]
EventHook = Callable[[str, str, str], None]  # (level, kind, message)


class GateConfigError(ModelArtifactError):
    """The station YAML's gate limits do not fit the model's validity domain."""


class Gate:
    def __init__(self, limits: Limits, *, sources: dict[str, str], widened: list[str]) -> None:
        self.limits = limits
        self.sources = sources   # limit key -> "model" | "station (tightened)" | "station (widened)"
        self.widened = widened   # human-readable lines for the start-up warning

    @classmethod
    def build(cls, domain: ValidityDomain, overrides: GateLimits) -> Gate:
        limits = {m: dict(sides) for m, sides in domain.limits.items()}
        sources = {f"{m}_{s}": "model" for m, sides in LIMIT_SIDES.items() for s in sides}
        widened = []
        for key, value in overrides.overrides().items():
            measure, side = key.rsplit("_", 1)
            model_value = domain.limit(measure, side)
            wider = value < model_value if side == "min" else value > model_value
            limits[measure][side] = value
            sources[key] = "station (widened)" if wider else "station (tightened)"
            if wider:
                widened.append(f"gate.limits.{key} {value:g} widens the model's calibrated {model_value:.4g}")
        for measure, sides in limits.items():
            if "min" in sides and "max" in sides and not sides["min"] < sides["max"]:
                raise GateConfigError(
                    f"gate.limits.{measure}_min: {sides['min']:.4g} ({sources[measure + '_min']}) is not below "
                    f"{measure}_max {sides['max']:.4g} ({sources[measure + '_max']})")
        return cls(limits, sources=sources, widened=widened)

    def check(self, measures: dict[str, float], *, spent_ms: float = 0.0) -> GateResult:
        """The gate's result for one frame; `spent_ms` (measuring time) plus the comparison is its cost."""
        t0 = time.perf_counter_ns()
        failed = failed_checks(self.limits, measures)
        return GateResult(measures=measures, failed=failed, limits=self.limits,
                          gate_ms=spent_ms + (time.perf_counter_ns() - t0) / 1e6)


def start_warnings(classifier: Classifier, gate: Gate | None) -> list[str]:
    """What an operator must hear at every start (and reload) about the gate: off, uncalibrated or widened."""
    domain = classifier.domain
    if domain is None:
        return [f"VALIDITY GATE OFF: {classifier.artifact.legacy_warning()}"]
    out = []
    if not domain.calibrated:
        out.append(f"validity gate of {classifier.model_id} is NOT calibrated by perturbation "
                   f"({domain.method.get('limits', 'limits from the spread of its fit images')})")
    if gate is not None:
        out += [f"{w}: frames beyond the model's validated domain reach the model" for w in gate.widened]
    return out


class _Rolling:
    """Mean of the last `size` values, O(1) per value (re-summed every `size` values against float drift)."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.total = 0.0
        self._since_resum = 0

    def add(self, value: float) -> None:
        if len(self.values) == self.values.maxlen:
            self.total -= self.values[0]
        self.values.append(value)
        self.total += value
        self._since_resum += 1
        if self._since_resum >= (self.values.maxlen or 1):
            self.total, self._since_resum = float(sum(self.values)), 0

    @property
    def full(self) -> bool:
        return len(self.values) == self.values.maxlen

    @property
    def mean(self) -> float:
        return self.total / len(self.values) if self.values else 0.0


class GateMonitor:
    def __init__(self, *, alarm: GateAlarm, drift: GateDrift, limits: Limits | None,
                 reference: dict[str, dict[str, float]] | None, on_alarm: AlarmHook, on_event: EventHook,
                 boundaries: Limits | None = None) -> None:
        self._lock = threading.Lock()
        self._on_alarm = on_alarm
        self._on_event = on_event
        self.alarm_on = False
        self.drifting: dict[str, str] = {}  # statistic -> message
        self.failed_total = 0
        self.alarm_raised = 0  # times image_quality went up
        self.drift_warnings = 0
        self._configure(alarm, drift, limits, reference, boundaries)

    def _configure(self, alarm: GateAlarm, drift: GateDrift, limits: Limits | None,
                   reference: dict[str, dict[str, float]] | None, boundaries: Limits | None) -> None:
        self.alarm_settings, self.drift_settings = alarm, drift
        self.limits, self.reference, self.boundaries = limits, reference or {}, boundaries or {}
        self._recent: deque[bool] = deque(maxlen=alarm.n)
        w = drift.window_parts
        self._measures = {m: _Rolling(w) for m in ALL_MEASURES}
        self._rates = {name: _Rolling(w) for name in ("reject", "fail_safe", "uncertain")}

    def update_settings(self, *, alarm: GateAlarm, drift: GateDrift, limits: Limits | None,
                        reference: dict[str, dict[str, float]] | None, boundaries: Limits | None = None) -> None:
        """New settings or a new model (reload): the windows start again; a raised alarm stays until it clears."""
        with self._lock:
            self._configure(alarm, drift, limits, reference, boundaries)

    @property
    def enabled(self) -> bool:
        return self.limits is not None

    def observe(self, verdict: Verdict) -> None:
        with self._lock:
            events = self._observe(verdict)
        for call, args in events:  # outside the lock: the hooks log and queue trace-log events
            call(*args)

    def _observe(self, v: Verdict) -> list[tuple[Callable, tuple]]:
        events: list[tuple[Callable, tuple]] = []
        self._rates["reject"].add(float(v.decision is Decision.REJECT))
        self._rates["fail_safe"].add(float(v.is_fail_safe))
        if v.p_defect is not None:
            self._rates["uncertain"].add(float(UNCERTAIN[0] < v.p_defect < UNCERTAIN[1]))
        if v.gate is not None:
            failed = not v.gate.passed
            self.failed_total += failed
            self._recent.append(failed)
            count, a = sum(self._recent), self.alarm_settings
            if not self.alarm_on and count >= a.k:
                self.alarm_on = True
                self.alarm_raised += 1
                checks = sorted({c for c in v.gate.failed}) or ["-"]
                events.append((self._on_alarm, (ALARM, (
                    f"{count} of the last {len(self._recent)} parts failed the image checks (last: "
                    f"{', '.join(checks)}): the camera cannot see the parts as validated; stop the line and check "
                    f"lens, lamp, focus and part position"),)))
            elif self.alarm_on and count <= a.k // 2:
                self.alarm_on = False
                events.append((self._on_alarm, (ALARM, None)))
            for name, value in v.gate.measures.items():
                if name in self._measures:
                    self._measures[name].add(value)
        events += self._drift_events()
        return events

    def _drift_events(self) -> list[tuple[Callable, tuple]]:
        found: dict[str, tuple[float, str]] = {}  # statistic -> (its share of the warning level, message)
        d = self.drift_settings
        if self.limits is not None:
            for name, rolling in self._measures.items():
                ref = self.reference.get(name)
                if not rolling.full or ref is None or name not in self.limits:
                    continue
                mean, r = rolling.mean, float(ref["mean"])
                side = "min" if mean < r else "max"
                targets = [(v, what) for v, what in (
                    (self.limits[name].get(side), f"the gate limit {side}"),
                    (self.boundaries.get(name, {}).get(side), "where the model starts to misjudge parts"))
                    if v is not None and v != r and (v < r) == (side == "min")]
                if not targets:
                    continue
                target, what = min(targets, key=lambda t: abs(t[0] - r))
                share = (mean - r) / (target - r)
                found[name] = (share / d.warn_share, (
                    f"{name}: mean {mean:.4g} over the last {len(rolling.values)} parts has moved {100 * share:.0f}% "
                    f"of the way from the training reference {r:.4g} to {what} ({target:.4g})"))
        for name, rolling, most, what in (
                ("uncertain_share", self._rates["uncertain"], d.max_uncertain_share,
                 "of parts scored unsure (p_defect 0.1-0.9)"),
                ("reject_rate", self._rates["reject"], d.max_reject_rate, "of parts rejected"),
                ("fail_safe_rate", self._rates["fail_safe"], d.max_fail_safe_rate, "of parts failed safe")):
            if rolling.full:
                found[name] = (rolling.mean / most, f"{name}: {100 * rolling.mean:.1f}% {what} over the last "
                                                    f"{len(rolling.values)} parts (warning above {100 * most:g}%)")
        events: list[tuple[Callable, tuple]] = []
        for name, (level, message) in found.items():
            if name not in self.drifting and level >= 1.0:
                self.drifting[name] = message
                self.drift_warnings += 1
                log.warning("drift: %s", message)
                events.append((self._on_event, ("WARNING", "drift", message)))
            elif name in self.drifting and level < CLEAR_FACTOR:
                del self.drifting[name]
                log.info("drift cleared: %s", message)
                events.append((self._on_event, ("INFO", "drift_cleared", message)))
        return events

    def line(self) -> str:
        """`gate: 2/20 failed (alarm at 5), 31 image_check; drift: brightness` for the summary line."""
        with self._lock:
            if self.limits is None:
                return "gate OFF (format-1 model)"
            a = self.alarm_settings
            drift = ", ".join(sorted(self.drifting)) if self.drifting else "none"
            return (f"gate: {sum(self._recent)}/{len(self._recent)} recent failed (alarm at {a.k} of {a.n}), "
                    f"{self.failed_total} image_check; drift: {drift}")

    def snapshot(self) -> dict:
        with self._lock:
            return {"enabled": self.limits is not None, "failed_total": self.failed_total,
                    "recent_failed": int(sum(self._recent)), "recent": len(self._recent),
                    "image_quality_alarm": self.alarm_on, "image_quality_raised": self.alarm_raised,
                    "drift": dict(self.drifting), "drift_warnings": self.drift_warnings}
