"""Decision threshold: the p(defective) above which a part is rejected, chosen on validation data.

An escape (a defective part judged ok) reaches the customer; a false reject costs a good part.
`recommend_threshold` keeps validation escapes within a target rate (default zero) and, among the
thresholds that do, places it in the gap below the lowest-scoring defective part that must be
caught (midway in log-odds to the next ok score), so a slightly weaker defect on the line still
falls above it. `threshold_table` lists escapes and false rejects per threshold for the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def count_errors(p_defect: np.ndarray, is_defect: np.ndarray, threshold: float) -> tuple[int, int]:
    """(escapes, false rejects) when parts with p_defect >= threshold are rejected."""
    reject = p_defect >= threshold
    return int(np.sum(is_defect & ~reject)), int(np.sum(~is_defect & reject))


def recommend_threshold(p_defect: Sequence[float], is_defect: Sequence[bool], *,
                        target_escape_rate: float = 0.0, max_threshold: float = 0.5) -> dict[str, Any]:
    """The threshold meeting `target_escape_rate` on validation with the fewest false rejects.

    Capped at `max_threshold` (default 0.5, the argmax point) so the recommendation never accepts
    a part the network itself calls defective.
    """
    p = np.asarray(p_defect, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    if d.sum() == 0 or (~d).sum() == 0:
        raise ValueError("threshold selection needs both defective and ok validation images")
    allowed = int(math.floor(target_escape_rate * d.sum() + 1e-9))
    defect_scores = np.sort(p[d])
    # Rejecting everything >= the (allowed+1)-th lowest defect score lets exactly `allowed` escape.
    highest_ok_threshold = float(defect_scores[allowed])
    ok_below = p[~d][p[~d] < highest_ok_threshold]
    if ok_below.size:
        threshold = _sigmoid(0.5 * (_logit(highest_ok_threshold) + _logit(float(ok_below.max()))))
    else:
        threshold = highest_ok_threshold
    threshold = float(min(max(threshold, 1e-4), max_threshold, 1 - 1e-4))
    escapes, false_rejects = count_errors(p, d, threshold)
    return {"threshold": threshold, "target_escape_rate": target_escape_rate,
            "val_escapes": escapes, "val_false_rejects": false_rejects,
            "val_defective": int(d.sum()), "val_ok": int((~d).sum())}


def threshold_table(p_defect: np.ndarray, is_defect: np.ndarray,
                    thresholds: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                   0.9, 0.95, 0.98, 0.99),
                    extra: Sequence[float] = ()) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(set(float(x) for x in (*thresholds, *extra))):
        escapes, false_rejects = count_errors(p_defect, is_defect, t)
        rows.append({"threshold": t, "escapes": escapes, "false_rejects": false_rejects,
                     "accuracy": 1 - (escapes + false_rejects) / max(1, len(p_defect))})
    return rows
