"""Micro-batching: how many queued frames the inference worker may score in one forward pass.

When parts bunch up (a burst on the conveyor, a stall that let the queue fill), scoring the waiting
frames together costs less per part than one by one: one Python round trip, one runtime call, better
matrix shapes. But every frame of a batch gets its verdict only when the whole batch is done, so a
frame joins only if the batch, as the planner expects it to take, still ends before the earliest
deadline of its parts (less a margin). The worker never waits for frames to arrive: a batch is only
ever what is already queued, so an isolated part is scored alone, with no added latency.

The expected time per batch size is what the classifier measured at warm-up, then an exponentially
weighted mean of what the worker measured since, multiplied by a safety factor; an unmeasured size
is extrapolated from the single-frame time (a batch of n never costs more than n single runs). A
frame also joins only when batching pays: a batch of n must be measured faster than a batch of n - 1
plus a single frame. On a small CPU it often does not (ONNX Runtime already spreads one image over the
cores; docs/performance.md has the measurements), and the worker then scores one frame at a time.
"""

from __future__ import annotations

import threading

SAFETY_FACTOR = 1.5   # expected time = factor x the running mean (a loaded machine runs slower)
MARGIN_MS = 2.0       # kept free before the earliest deadline of a batch
ALPHA = 0.2           # weight of a new measurement in the running mean


class BatchPlanner:
    """Per batch size, the expected scoring time; and whether one more frame still fits."""

    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch} must be at least 1")
        self.max_batch = max_batch
        self._mean_ms: dict[int, float] = {}
        self._lock = threading.Lock()  # the worker observes; the bench and status read

    def observe(self, size: int, elapsed_ms: float) -> None:
        """A batch of `size` frames took `elapsed_ms` (preprocessing, network and gate included)."""
        if size < 1 or elapsed_ms < 0:
            return
        with self._lock:
            old = self._mean_ms.get(size)
            self._mean_ms[size] = elapsed_ms if old is None else (1 - ALPHA) * old + ALPHA * elapsed_ms

    def expected_ms(self, size: int) -> float | None:
        """Conservative expected time of a batch of `size` frames, or None before any measurement."""
        with self._lock:
            mean = self._mean_ms.get(size)
            if mean is None and 1 in self._mean_ms:
                mean = size * self._mean_ms[1]
        return None if mean is None else SAFETY_FACTOR * mean

    def fits(self, size: int, *, now_ns: int, earliest_deadline_ns: int) -> bool:
        """True when a batch of `size` frames started now is expected to end before the earliest deadline."""
        if size > self.max_batch:
            return False
        if size == 1:
            return True  # a single frame is always scored; a late one still gets its fail-safe verdict
        with self._lock:
            mean, smaller, single = (self._mean_ms.get(n) for n in (size, size - 1, 1))
        if mean is None or smaller is None or single is None or not mean < smaller + single:
            return False  # unmeasured, or one more frame in the batch costs as much as scoring it alone
        expected = self.expected_ms(size)
        if expected is None:
            return False
        return now_ns + int((expected + MARGIN_MS) * 1e6) <= earliest_deadline_ns

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self._mean_ms)
