"""Waiting until a due time to within a fraction of a millisecond, without holding the GIL for long.

The reject scheduler hands a part over, and an output's worker switches a pulse off, at a due time on
the monotonic clock. A condition wait or sleep on Linux wakes late by the thread's timer slack (50 us
by default) plus the scheduler's wake-up latency; on the 2-vCPU development machine, with the slack
cut to 1 us, a `Condition.wait` overshot by more than 1 ms in 0.13 % of 1500 waits (p50 0.05 ms, p99
0.37 ms). So a timing-critical thread (`Stage.timing_critical`) asks for a 1 us timer slack, waits
until `SPIN_NS` before the due time and spins the rest on the clock. The spin holds the GIL (a Python
loop), and every millisecond of it is a millisecond in which the inference thread cannot run Python:
the window was 2 ms with the default slack and is 1 ms now (docs/performance.md has the effect).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

SPIN_NS = 1_000_000       # the last stretch before a due time is spun on the clock, not slept
TIMER_SLACK_NS = 1_000    # a timing-critical thread's timer slack (Linux default: 50 000)
PR_SET_TIMERSLACK = 29    # prctl option (linux/prctl.h)


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
    """Cut the calling thread's timer slack to TIMER_SLACK_NS (Linux); False where that is not possible."""
    return _PRCTL is not None and _PRCTL(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0) == 0


def wait_before(due_ns: int, now_ns: int, longest_s: float) -> float:
    """How long to sleep now (s, at most `longest_s`) to wake SPIN_NS before `due_ns`; 0: spin now."""
    return max(0.0, min(longest_s, (due_ns - now_ns - SPIN_NS) / 1e9))


def spin_until(due_ns: int) -> None:
    """Busy-wait on the monotonic clock until `due_ns` (for the last SPIN_NS only: it holds the GIL)."""
    while time.monotonic_ns() < due_ns:
        pass
