"""The stage contract: the one small base every stage thread of the station is built on.

A stage is one thread with one job: capture, inference, the deadline watch, the reject scheduler, an
output's device I/O, a PLC heartbeat, the trace-log writer, housekeeping, the live-state channel.
`run()` is a short loop around `step()`: a step does one unit of work and waits for work at most
`IDLE_WAIT_S`, so `stop()` is honoured within a second and the heartbeat (`last_beat_ns`, stamped before
every step) keeps moving while the stage is idle. A step that can block in something outside the
station's control (a model call, device or disk I/O) runs inside `busy()`: the supervisor then judges
it by how long that one step has taken (`busy_since_ns`) rather than by its heartbeat. `stop()` sets
the stop event, puts the `STOP` sentinel on the stage's input queue when it has one, and `wake()`s a
step waiting on anything else; a finite source that ended sets `finished` before its thread returns:
done, not dead. `adopt(old)` lets a fresh thread take over what a dead thread of the same stage
held (queued work, counters, numbering) before it starts: the supervisor's restart, which goes
through `station.stage_registry`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

from station.precise_wait import fine_timer_slack
from station.thread_cpu import name_os_thread, record_thread_end

STOP = object()      # the sentinel `stop()` puts on a stage's input queue
IDLE_WAIT_S = 0.2    # the longest a step waits for work: stop and the heartbeat are never further away


class Stage(threading.Thread):
    """Subclasses implement `step()`; most also `cleanup()` and `adopt()`."""

    # What the stage is doing while busy, for the supervisor's report ("<busy_doing> for 12.3 s").
    busy_doing = "blocked in one step"
    # A stage that acts at due times (reject scheduler, output workers) waits with a fine timer slack and
    # spins only the last stretch (station.precise_wait).
    timing_critical = False

    def __init__(self, name: str, *, inbox: queue.Queue | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox = inbox
        self.stop_event = threading.Event()
        self.finished = threading.Event()  # a finite source ended: the thread is done, not dead
        self.last_beat_ns = time.monotonic_ns()
        self._busy_since_ns: int | None = None

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        name_os_thread(self.name)
        if self.timing_critical:
            fine_timer_slack()
        try:
            while True:
                self.last_beat_ns = time.monotonic_ns()
                if not self.step():
                    return
        finally:
            self.busy_since_ns = None
            try:
                self.cleanup()
            finally:
                record_thread_end(self.name)

    def step(self) -> bool:
        """One unit of work, waiting for it at most IDLE_WAIT_S. False: the stage is done (its thread ends)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def cleanup(self) -> None:
        """Runs in the stage's thread as it ends, however it ends (release what the stage holds)."""

    def finish(self) -> bool:
        """For a step whose finite source has ended: mark the stage finished and end its thread."""
        self.finished.set()
        return False

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around a call that may block for long: the supervisor times it instead of the heartbeat."""
        self.busy_since_ns = time.monotonic_ns()
        try:
            yield
        finally:
            self.busy_since_ns = None

    @property
    def busy_since_ns(self) -> int | None:
        """When the call the stage is blocked in began (monotonic ns); None while it is not busy."""
        return self._busy_since_ns

    @busy_since_ns.setter
    def busy_since_ns(self, value: int | None) -> None:
        if value is None:
            # Finishing the call is progress: without this beat, a call longer than the stall limit (but
            # within its own) would read as a stale heartbeat until the next step stamps one.
            self.last_beat_ns = time.monotonic_ns()
        self._busy_since_ns = value

    # ---- from other threads ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the stage to end; it finishes what its step defines as in hand (e.g. drains its queue)."""
        self.stop_event.set()
        if self.inbox is not None:
            try:
                self.inbox.put_nowait(STOP)
            except queue.Full:
                pass  # the step sees stop_event as soon as it finds the queue empty
        self.wake()

    def wake(self) -> None:
        """Wake a step that waits on something other than the inbox (a condition); nothing by default."""

    def adopt(self, old: Stage) -> None:
        """Take over what the dead thread `old` of the same stage held, before start(). Nothing by default:
        a stage without state of its own (the deadline watch, housekeeping) starts afresh."""

    def hang(self, now_ns: int, *, stall_ns: int, busy_ns: int) -> str | None:
        """Why this live stage counts as hung right now (None: it moves): one step busy for longer than
        `busy_ns`, or, while not busy, no heartbeat for longer than `stall_ns`."""
        busy_since = self.busy_since_ns
        if busy_since is not None:
            busy_for = now_ns - busy_since
            return f"{self.busy_doing} for {busy_for / 1e9:.1f} s" if busy_for > busy_ns else None
        silent = now_ns - self.last_beat_ns
        return f"no heartbeat for {silent / 1e9:.1f} s" if silent > stall_ns else None
