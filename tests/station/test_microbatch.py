"""Micro-batching (`station.microbatch`, `InferenceWorker`): queued frames are scored in one forward pass
only when the batch is expected to end before every part's deadline, give the same scores as one by one,
keep the parts' order, and a bad frame in a batch fails only itself. The real Classifier (a tiny sealed
artifact on onnxruntime's CPU session) scores real rendered frames; the worker's `score` is called on the
test's thread (no thread to stop) with frames already in a real queue, as when parts bunch up."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from station.cameras.synthetic import render_impeller
from station.classifier import Classifier, InferenceWorker
from station.microbatch import MARGIN_MS, SAFETY_FACTOR, BatchPlanner
from station.config_gate import GateLimits
from station.gate import Gate
from station.records import Frame, Reason
from support import make_tiny_model


def test_planner_admits_a_frame_only_when_the_batch_ends_before_the_earliest_deadline():
    planner = BatchPlanner(4)
    now = 1_000_000_000
    assert planner.fits(1, now_ns=now, earliest_deadline_ns=now - 1), "a single frame is always scored"
    assert not planner.fits(2, now_ns=now, earliest_deadline_ns=now + 10**12), "no measurement yet: no batch"
    planner.observe(1, 10.0)
    assert planner.expected_ms(2) == pytest.approx(SAFETY_FACTOR * 20.0), "unmeasured: n single runs"
    assert not planner.fits(2, now_ns=now, earliest_deadline_ns=now + 10**12), "unmeasured size: no batch"
    planner.observe(2, 12.0)  # a measured size uses its own time
    need_ms = SAFETY_FACTOR * 12.0 + MARGIN_MS
    assert planner.fits(2, now_ns=now, earliest_deadline_ns=now + int(need_ms * 1e6))
    assert not planner.fits(2, now_ns=now, earliest_deadline_ns=now + int((need_ms - 0.5) * 1e6))
    planner.observe(3, 23.0)  # the third frame costs more than scoring it alone (12 + 10 ms): no gain
    assert not planner.fits(3, now_ns=now, earliest_deadline_ns=now + 10**12)
    assert not planner.fits(5, now_ns=now, earliest_deadline_ns=now + 10**12), "never beyond max_batch"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("mb") / "tiny.pt")
    return Classifier.from_file(path, backend="onnxruntime", device="cpu", warmup_runs=2, max_batch=4, threads=1)


def frames(n: int, *, bad: int | None = None) -> list[Frame]:
    rng = np.random.default_rng(5)
    out = []
    for seq in range(n):
        image = render_impeller(rng, size=96, defective=seq % 2 == 0)
        if seq == bad:
            image = image[:4, :4]  # far too small: FrameFormatError
        out.append(Frame(seq=seq, t_capture_ns=time.monotonic_ns(), wall_time=time.time(), image=image,
                         source="test"))
    return out


def run_worker(classifier: Classifier, parts: list[Frame], *, deadline_s: float):
    # Timings as if batching paid on this machine (the planner's own rule is tested above; timing the
    # tiny network on a loaded CI machine would make whether it pays a coin toss).
    classifier.planner = BatchPlanner(classifier.max_batch)
    for size in range(1, classifier.max_batch + 1):
        classifier.planner.observe(size, 5.0 + size)
    q: queue.Queue = queue.Queue(maxsize=8)
    got = []
    gate = Gate.build(classifier.domain, GateLimits())
    worker = InferenceWorker(q, classifier, lambda f, p: got.append((f, p)), gate=gate,
                             deadline_ns=lambda f: f.t_capture_ns + int(deadline_s * 1e9))
    for f in parts[1:]:
        q.put_nowait(f)
    worker.score(parts[0])  # the worker took the first part; the rest wait in the queue
    while not q.empty():  # as run() does: the next queued part starts the next batch
        worker.score(q.get_nowait())
    return worker, got


def test_bunched_parts_share_forward_passes_and_score_as_one_by_one(classifier):
    parts = frames(6)
    worker, got = run_worker(classifier, parts, deadline_s=60.0)
    assert [f.seq for f, _ in got] == list(range(6)), "parts' order kept"
    assert worker.batches >= 1 and worker.batched_frames >= 2 and worker.scored == 6
    single = [classifier.assess(f.image) for f in parts]
    for (_, pred), one in zip(got, single):
        assert pred.failure is None and pred.p_defect == pytest.approx(one.p_defect, abs=1e-5)
        assert pred.gate is not None and pred.gate.measures["novelty"] == pytest.approx(
            one.measures["novelty"], rel=1e-4)


def test_no_batch_when_it_would_end_after_a_parts_deadline(classifier):
    worker, got = run_worker(classifier, frames(4), deadline_s=0.0)  # every deadline already now
    assert worker.batches == 0 and [f.seq for f, _ in got] == [0, 1, 2, 3], "one at a time, in order"
    assert all(p.failure is None for _, p in got)


def test_a_bad_frame_inside_a_batch_fails_only_itself(classifier):
    worker, got = run_worker(classifier, frames(4, bad=2), deadline_s=60.0)
    assert worker.batches >= 1
    reasons = {f.seq: p.failure for f, p in got}
    assert reasons == {0: None, 1: None, 2: Reason.BAD_FRAME, 3: None}
