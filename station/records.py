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

    @property
    def is_fail_safe(self) -> bool:
        return self is not Reason.MODEL


class ActuatorResult(str, Enum):
    """What became of the actuator command for one part."""

    NONE = "none"                  # no command needed (ok part, or handshake not required)
    ACKNOWLEDGED = "acknowledged"  # the device confirmed the command in time
    LATE = "late"                  # confirmed, but past due + the lateness tolerance
    FAILED = "failed"              # the device answered with an error, or the transport failed
    NOT_SENT = "not_sent"          # the actuator was disconnected/backing off: nothing was sent
    LOGGED = "logged"              # the `log` actuator: written to the station log only


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
class Prediction:
    seq: int
    p_defect: float | None
    model_id: str
    infer_ms: float
    t_done_ns: int
    error: str | None = None  # the model raised / the frame was unusable


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

    @property
    def is_fail_safe(self) -> bool:
        return self.reason.is_fail_safe

    @property
    def decide_ms(self) -> float:
        return (self.t_decided_ns - self.t_capture_ns) / 1e6


# actuator_error of a reject whose pulse overlapped the previous one: it sent no "on" of its own, the
# output was held on until this part's pulse ended (result `acknowledged`).
MERGED_NOTE = "merged with previous pulse"


@dataclass(frozen=True)
class ActuationReport:
    """The reject (or handshake) command's outcome for one part, written back to its log row."""

    seq: int
    result: ActuatorResult
    due_ns: int | None
    fired_ns: int | None
    error: str | None = None

    @property
    def lateness_ms(self) -> float | None:
        if self.due_ns is None or self.fired_ns is None:
            return None
        return (self.fired_ns - self.due_ns) / 1e6
