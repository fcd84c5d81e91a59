"""The validity gate: the limits a frame must keep for the model's verdict to count, per station.

`Gate.build` starts from the limits the model artifact was calibrated with and applies the station
YAML's `gate.limits` (each key replaces the model's value for that side), then refuses a combination
where a minimum is not below its maximum. `Gate.check` compares one frame's measures and returns the
`GateResult` the decision module turns into an `image_check` reject when any limit is violated.
A YAML value that widens a calibrated limit is allowed (a station may know its optics better), but
reported at every start: frames beyond the validated domain then reach the model.
"""

from __future__ import annotations

import time

from station.artifact import ModelArtifactError
from station.config_gate import GateLimits
from station.records import GateResult
from station.validity import LIMIT_SIDES, Limits, ValidityDomain, failed_checks


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
