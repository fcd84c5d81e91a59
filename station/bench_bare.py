"""The bare model beside the pipeline in `station bench`: the same session, the same input, two paces.

After a bench repeat the station has stopped but its `Classifier` (the very ONNX Runtime session or
torch module the pipeline scored with, same threads, same precision) is still loaded. This module
times its forward pass alone on the tensor of one frame of the same run: back to back (the model's
best case) and at the bench's pace (one call per 1/rate seconds, so the runtime's thread pool goes
idle between calls exactly as it does between parts on the line). The difference between a pipeline
stage and the bare model at the same pace is the pipeline's overhead: preprocessing, image checks,
queue hand-offs, thread wake-ups, Python. The validity gate's own cost is its own line.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from station.classifier import Classifier

MAX_PACED_CALLS = 100     # calls at the bench's pace (bounds the time: 10 s at 10 parts/s)
BACK_TO_BACK_CALLS = 200  # calls back to back
GATE_TARGET_P99_MS = 0.5  # issue 9's budget for the gate (image checks + novelty + limit comparison)
OVERHEAD_STAGES = ("inference (preprocess + model + gate)", "capture -> actuator command")


def model_input(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """The 1 x 3 x S x S float32 tensor the pipeline gives the network for `image`."""
    return classifier.preprocess.normalize(classifier.preprocess.model_pixels(image))[None]


def time_bare(classifier: Classifier, image: np.ndarray, *, rate: float | None,
              calls: int = BACK_TO_BACK_CALLS) -> dict[str, dict[str, float | None]]:
    """Percentiles (ms) of the bare forward pass: `back to back`, and `at rate` (only with a rate)."""
    from station.health import percentiles

    x = model_input(classifier, image)
    for _ in range(3):
        classifier.forward(x)  # the session is warm already; these settle the caches after the pipeline
    result = {"back to back": percentiles(_timed(classifier, x, calls=calls, period_s=None))}
    if rate:
        result["at rate"] = percentiles(_timed(classifier, x, calls=min(calls, MAX_PACED_CALLS),
                                               period_s=1.0 / rate))
    return result


def _timed(classifier: Classifier, x: np.ndarray, *, calls: int, period_s: float | None) -> list[float]:
    times: list[float] = []
    next_call = time.perf_counter()
    for _ in range(calls):
        if period_s is not None:
            pause = next_call - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            next_call += period_s
        t0 = time.perf_counter_ns()
        classifier.forward(x)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def format_bare(runs: list[dict[str, Any]], *, rate: float | None) -> list[str]:
    """The bare-model lines, the overhead lines and the gate-cost line of the bench's report."""
    def med(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return statistics.median(vals) if vals else None

    def cell(value: float | None) -> str:
        return f"{value:8.2f}" if value is not None else "     n/a"

    paced = "at rate" if rate else "back to back"
    lines = ["", f"bare model (same session, threads and input; {runs[0]['bare_calls']} calls back to back"
                 + (f", {min(runs[0]['bare_calls'], MAX_PACED_CALLS)} at {rate:g}/s" if rate else "") + "), ms",
             f"{'':<40}{'p50':>8}{'p99':>8}{'max':>8}"]
    for name in runs[0]["bare"]:
        row = [run["bare"][name] for run in runs]
        lines.append(f"{'  ' + name:<40}{cell(med([r['p50'] for r in row]))}{cell(med([r['p99'] for r in row]))}"
                     f"{cell(med([r['max'] for r in row]))}")
    lines += ["", f"overhead over the bare model ({paced}) = pipeline - bare: ms (pipeline / bare)",
              f"{'':<40}{'p50':>17}{'p99':>17}"]
    for stage in OVERHEAD_STAGES:
        cells = ""
        for q in ("p50", "p99"):
            pipe = med([run["stages"][stage][q] for run in runs])
            bare = med([run["bare"][paced][q] for run in runs])
            if pipe is None or bare is None or bare <= 0:
                cells += f"{'n/a':>17}"
            else:
                cells += f"{pipe - bare:9.2f} {f'({pipe / bare:.1f}x)':>7}"
        lines.append(f"{'  ' + stage:<40}{cells}")
    gate = [run["stages"]["  of which validity gate"] for run in runs]
    p99 = med([g["p99"] for g in gate])
    if p99 is None:
        lines.append("validity gate cost: n/a (gate off)")
    else:
        verdict = "within" if p99 <= GATE_TARGET_P99_MS else "OVER"
        lines.append(f"validity gate cost: p50 {med([g['p50'] for g in gate]):.3f} / p99 {p99:.3f} / max "
                     f"{med([g['max'] for g in gate]):.3f} ms ({verdict} the {GATE_TARGET_P99_MS:g} ms p99 budget)")
    return lines
