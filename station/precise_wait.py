"""Waiting until a due time to within a fraction of a millisecond, without holding the GIL for long.

The reject scheduler hands a part over, and an output's worker switches a pulse off, at a due time on
the monotonic clock. A condition wait or sleep on Linux wakes late by the thread's timer slack (50 us
by default) plus the scheduler's wake-up latency. So a timing-critical thread (`Stage.timing_critical`)
asks for a 1 us timer slack, waits until `SPIN_NS` before the due time and spins the rest on the
clock. The spin is a Python loop: it holds the GIL, and every microsecond of it is one in which the
inference thread cannot run Python. Measured on the 2-vCPU development machine (docs/performance.md):
with a 1 us slack a `Condition.wait` overshot by more than 0.5 ms in 0.7 % of 1500 waits (p50 0.05 ms,
p99 0.37 ms); cutting the spin from 2 ms (default slack) to 0.5 ms left the pulse bench's lateness as
it was and raised sustained INT8 throughput from about 165 to 190 parts/s, because the output worker
had been spinning about 1 ms, holding the GIL, for every part.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Iterator

SPIN_NS = 500_000         # the last stretch before a due time is spun on the clock, not slept
TIMER_SLACK_NS = 1_000    # a timing-critical thread's timer slack (Linux default: 50 000)
PR_SET_TIMERSLACK = 29    # prctl options (linux/prctl.h)
PR_GET_TIMERSLACK = 30


def _prctl():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()


def fine_timer_slack() -> bool:
    """Cut the calling thread's timer slack to TIMER_SLACK_NS (Linux); False where that is not possible.
    Threads this thread starts afterwards inherit it."""
    return _PRCTL is not None and _PRCTL(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0) == 0


def current_timer_slack() -> int | None:
    """The calling thread's timer slack in ns (None where it cannot be read)."""
    return None if _PRCTL is None else int(_PRCTL(PR_GET_TIMERSLACK, 0, 0, 0, 0))


@contextlib.contextmanager
def fine_timer_slack_held() -> Iterator[None]:
    """The calling thread runs with TIMER_SLACK_NS inside the block and gets its own slack back after."""
    before = current_timer_slack()
    fine_timer_slack()
    try:
        yield
    finally:
        if before is not None and before > 0 and _PRCTL is not None:
            _PRCTL(PR_SET_TIMERSLACK, before, 0, 0, 0)


def wait_before(due_ns: int, now_ns: int, longest_s: float) -> float:
    """How long to sleep now (s, at most `longest_s`) to wake SPIN_NS before `due_ns`; 0: spin now."""
    return max(0.0, min(longest_s, (due_ns - now_ns - SPIN_NS) / 1e9))


def spin_until(due_ns: int) -> None:
    """Busy-wait on the monotonic clock until `due_ns` (for the last SPIN_NS only: it holds the GIL)."""
    while time.monotonic_ns() < due_ns:
        pass
