"""The pacer that plays recorded or rendered parts at the line's rate, like a conveyor."""

from __future__ import annotations

import time

from station.cameras.base import Pacer


def test_parts_are_never_bunched_up_after_a_stall():
    """A stalled capture thread must not make two parts arrive back to back: their reject pulses would
    overlap, which no real conveyor at this rate produces."""
    pacer = Pacer(20.0)  # pitch 50 ms
    pacer.start()
    assert pacer.wait(1.0)
    time.sleep(0.3)  # the machine held the capture thread for six pitches
    returns = []
    for _ in range(3):
        assert pacer.wait(1.0)
        returns.append(time.monotonic())
    gaps = [b - a for a, b in zip(returns, returns[1:])]
    # time.sleep never returns early, so these lower bounds hold on any machine.
    assert min(gaps) >= 0.9 * 0.05, gaps


class FakeClock:
    """A clock the test moves by hand: on a loaded machine a real sleep can overshoot by more than the
    slip under test, so this one test replaces the pacer's `time` (nothing else is faked)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.returns: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_small_delays_are_caught_up_on_the_grid_and_a_stall_restarts_it(monkeypatch):
    import station.cameras.base as base

    clock = FakeClock()
    monkeypatch.setattr(base, "time", clock)
    pacer = Pacer(10.0)  # pitch 100 ms
    pacer.start()
    returns = []
    for work_s in (0.005, 0.005, 0.005, 0.5, 0.0, 0.0):
        assert pacer.wait(1.0)
        returns.append(round(clock.now - 100.0, 6))
        clock.now += work_s  # 5 ms of work per part, then one 500 ms stall
    # On the grid despite the 5 ms of work (no drift to 0.105, 0.210, ...); after the stall the part is
    # taken at once (0.8, not bunched with a catch-up part) and the grid restarts one pitch later.
    assert returns == [0.0, 0.1, 0.2, 0.3, 0.8, 0.9]


def test_a_wait_longer_than_the_timeout_returns_false_and_no_rate_never_waits():
    pacer = Pacer(0.5)
    pacer.start()
    assert pacer.wait(1.0)
    assert not pacer.wait(0.01)  # the next part is two seconds away
    assert Pacer(None).wait(0.0)
