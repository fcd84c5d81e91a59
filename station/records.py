"""Records passed between the station's stages: Frame, Prediction, Verdict, ActuationReport.

Frozen dataclasses so no stage can change what another stage saw. `seq` is the part's identity
from capture to the traceability log; `*_ns` fields are `time.monotonic_ns()` readings (used for
every deadline), `wall_time` is a UNIX timestamp for the log only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class Decision(str, Enum):
    OK = "ok"
    REJECT = "reject"


class Reason(str, Enum):
    """Why a verdict is what it is. Everything except MODEL is a fail-safe verdict."""

    MODEL = "model"            # decided by the classifier against the threshold
    TIMEOUT = "timeout"        # no prediction before decision.deadline_ms
    OVERRUN = "overrun"        # the inference queue was full when the part arrived
    BAD_FRAME = "bad_frame"    # unreadable, incomplete or wrong-sized image
    MODEL_ERROR = "model_error"  # the classifier raised on this part
    SHUTDOWN = "shutdown"      # the station stopped before the part was classified
    NO_TRACE_LOG = "no_trace_log"  # tracelog.when_rows_cannot_be_kept: fail_safe, and rows could not be kept
    IMAGE_CHECK = "image_check"  # the frame is outside the model's validity domain: always a reject

    @property
    def is_fail_safe(self) -> bool:
        return self is not Reason.MODEL


class ActuatorResult(str, Enum):
    """What became of the actuator command for one part."""

    NONE = "none"                  # no command needed (ok part, or handshake not required)
    ACKNOWLEDGED = "acknowledged"  # the device confirmed the output on (or the verdict) within the tolerance
    LATE = "late"                  # confirmed, but later than due + reject.late_tolerance_ms
    FAILED = "failed"              # the device answered with an error, or the transport failed
    NOT_SENT = "not_sent"          # nothing was sent for this part (link down, output not re-established)
    UNKNOWN = "unknown"            # the station died (crash, kill) before the outcome was known


@dataclass(frozen=True)
class Frame:
    seq: int
    t_capture_ns: int
    wall_time: float
    image: np.ndarray | None
    source: str
    label: str | None = None
    error: str | None = None  # set when the camera delivered a broken buffer (image is None)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    """The validity gate's look at one frame: every measured value and the limits it violated."""

    measures: dict[str, float]       # image checks and novelty (station.validity.ALL_MEASURES)
    failed: tuple[str, ...] = ()     # violated limit keys, e.g. ("brightness_min", "novelty_max")
    limits: dict[str, dict[str, float]] = field(default_factory=dict)  # the limits applied
    gate_ms: float = 0.0             # time spent on the image checks, novelty and comparison

    @property
    def passed(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        """`brightness 41.2 < min 88.5; novelty 7.31 > max 1.92` (the verdict's detail)."""
        parts = []
        for key in self.failed:
            name, side = key.rsplit("_", 1)
            limit = self.limits.get(name, {}).get(side)
            op = "<" if side == "min" else ">"
            parts.append(f"{name} {self.measures.get(name, float('nan')):.4g} {op} {side} "
                         f"{limit:.4g}" if limit is not None else f"{name} outside its limit")
        return "; ".join(parts) if parts else "inside the validity domain"


@dataclass(frozen=True)
class Prediction:
    seq: int
    p_defect: float | None
    model_id: str
    infer_ms: float
    t_done_ns: int
    failure: Reason | None = None   # BAD_FRAME (unusable image) or MODEL_ERROR (the model raised): no score
    error: str | None = None        # what went wrong, for the log
    gate: GateResult | None = None  # None: the model has no validity domain (format-1 artifact: gate off)


@dataclass(frozen=True)
class Verdict:
    seq: int
    decision: Decision
    reason: Reason
    p_defect: float | None
    threshold: float
    t_capture_ns: int
    t_decided_ns: int
    wall_time: float
    source: str
    label: str | None = None
    model_id: str = ""
    infer_ms: float | None = None
    detail: str | None = None
    gate: GateResult | None = None  # what the validity gate measured (and which limits failed)

    @property
    def is_fail_safe(self) -> bool:
        return self.reason.is_fail_safe

    @property
    def decide_ms(self) -> float:
        return (self.t_decided_ns - self.t_capture_ns) / 1e6


# actuator_error of a reject that sent no "on" of its own because the output was verifiably on (the on
# acknowledged, no off sent) at its due time: the output was held on until this part's pulse ended
# (result `acknowledged`). A part that rode on another part's pulse confirmed too late carries this note
# followed by the detail (result `late`).
MERGED_NOTE = "merged with previous pulse"


@dataclass(frozen=True)
class ActuationReport:
    """The reject (or handshake) command's outcome for one part, written back to its log row.

    `fired_ns` is when the device confirmed the output on for this part (the acknowledgement of the
    "on" or of the verdict write; for a merged part, when it was found verifiably on, at the earliest
    its due time), so `lateness_ms` and the `late` result say the same thing. `sent_ns` is when the
    command that served the part went out (None for a merged part and when nothing was sent).
    """

    seq: int
    result: ActuatorResult
    due_ns: int | None
    fired_ns: int | None
    error: str | None = None
    sent_ns: int | None = None

    @property
    def lateness_ms(self) -> float | None:
        if self.due_ns is None or self.fired_ns is None:
            return None
        return (self.fired_ns - self.due_ns) / 1e6

    @property
    def merged(self) -> bool:
        """The part rode on another part's pulse instead of sending its own "on"."""
        return self.error is not None and self.error.startswith(MERGED_NOTE)
