"""The decision module on its own: threshold boundary, one verdict per part, deadlines, the fail-safe setting."""

from __future__ import annotations

import time

import numpy as np

from station.decision import DecisionMaker, DecisionSettings
from station.records import Decision, Frame, GateResult, Prediction, Reason


def frame(seq: int, t_ns: int | None = None) -> Frame:
    return Frame(seq=seq, t_capture_ns=time.monotonic_ns() if t_ns is None else t_ns, wall_time=time.time(),
                 image=np.zeros((8, 8), np.uint8), source="test")


def maker(**kw):
    verdicts, late = [], []
    settings = DecisionSettings(threshold=kw.pop("threshold", 0.5), deadline_ms=kw.pop("deadline_ms", 100),
                                fail_safe=kw.pop("fail_safe", "reject"))
    return DecisionMaker(settings, lambda v, f: verdicts.append(v), late.append), verdicts, late


def prediction(seq: int, p: float | None, failure: Reason | None = None, error: str | None = None,
               gate: GateResult | None = None) -> Prediction:
    return Prediction(seq=seq, p_defect=p, model_id="m", infer_ms=1.0, t_done_ns=time.monotonic_ns(),
                      failure=failure, error=error, gate=gate)


def test_threshold_is_inclusive_and_each_part_gets_one_verdict():
    dm, verdicts, late = maker(threshold=0.5)
    for seq, p in ((1, 0.5), (2, 0.4999)):
        f = frame(seq)
        dm.register(f)
        dm.on_prediction(f, prediction(seq, p))
        dm.on_prediction(f, prediction(seq, p))  # a duplicate prediction is only a late one
    assert [(v.seq, v.decision) for v in verdicts] == [(1, Decision.REJECT), (2, Decision.OK)]
    assert [p.seq for p in late] == [1, 2]
    assert dm.pending_count == 0


def test_deadline_expiry_then_late_prediction():
    dm, verdicts, late = maker(deadline_ms=10)
    f = frame(7, t_ns=time.monotonic_ns() - 50_000_000)  # captured 50 ms ago
    dm.register(f)
    assert dm.expire() == 1
    dm.on_prediction(f, prediction(7, 0.01))
    assert verdicts[0].reason is Reason.TIMEOUT and verdicts[0].decision is Decision.REJECT
    assert late and late[0].p_defect == 0.01


def test_model_error_and_fail_safe_ok_setting():
    dm, verdicts, _ = maker(fail_safe="ok")
    f = frame(3)
    dm.register(f)
    dm.on_prediction(f, prediction(3, None, failure=Reason.MODEL_ERROR, error="CUDA out of memory"))
    assert verdicts[0].reason is Reason.MODEL_ERROR and verdicts[0].decision is Decision.OK
    assert verdicts[0].detail == "CUDA out of memory"
    g = frame(4)
    dm.register(g)
    dm.fail_safe(g, Reason.OVERRUN, "queue full")
    assert verdicts[1].reason is Reason.OVERRUN and verdicts[1].is_fail_safe


def test_threshold_update_applies_from_the_next_part():
    dm, verdicts, _ = maker(threshold=0.9)
    f = frame(1)
    dm.register(f)
    dm.on_prediction(f, prediction(1, 0.5))
    dm.update_settings(DecisionSettings(threshold=0.3, deadline_ms=100))
    g = frame(2)
    dm.register(g)
    dm.on_prediction(g, prediction(2, 0.5))
    assert [v.decision for v in verdicts] == [Decision.OK, Decision.REJECT]
    assert [v.threshold for v in verdicts] == [0.9, 0.3]


def test_a_frame_outside_the_validity_domain_is_an_image_check_reject_even_with_fail_safe_ok():
    """The gate's verdict is typed on the prediction; whatever decision.fail_safe says, it never becomes ok,
    and the model's own score stays in the verdict (and so in the trace log)."""
    limits = {"brightness": {"min": 90.0, "max": 200.0}, "novelty": {"max": 2.0}}
    dm, verdicts, _ = maker(fail_safe="ok", threshold=0.5)
    outside = GateResult(measures={"brightness": 12.0, "novelty": 9.5}, failed=("brightness_min", "novelty_max"),
                         limits=limits)
    inside = GateResult(measures={"brightness": 140.0, "novelty": 0.9}, failed=(), limits=limits)
    for seq, gate in ((1, outside), (2, inside)):
        f = frame(seq)
        dm.register(f)
        dm.on_prediction(f, prediction(seq, 0.02, gate=gate))
    bad, good = verdicts
    assert (bad.decision, bad.reason, bad.p_defect) == (Decision.REJECT, Reason.IMAGE_CHECK, 0.02)
    assert bad.is_fail_safe and bad.gate is outside
    assert "brightness 12 < min 90" in bad.detail and "novelty 9.5 > max 2" in bad.detail
    assert (good.decision, good.reason, good.gate) == (Decision.OK, Reason.MODEL, inside)
