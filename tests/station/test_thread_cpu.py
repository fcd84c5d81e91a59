"""Thread names the OS sees, CPU per thread, and the timing-critical stages' fine timer slack
(station.thread_cpu, station.precise_wait), read back from the real kernel: /proc and prctl."""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from station.precise_wait import (
    SPIN_NS,
    TIMER_SLACK_NS,
    current_timer_slack,
    fine_timer_slack_held,
    spin_until,
    wait_before,
)
from station.stage import Stage
from station.thread_cpu import cpu_by_thread, cpu_spent, format_cpu_per_part, name_threads_started_by

PR_GET_TIMERSLACK = 30  # read back through libc here, not through the module under test


def comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def timer_slack() -> int:
    return ctypes.CDLL("libc.so.6").prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)


class Idle(Stage):
    """Records what its own thread sees, then idles until stopped."""

    def __init__(self, name: str, *, critical: bool = False) -> None:
        super().__init__(name)
        self.timing_critical = critical
        self.seen = threading.Event()
        self.slack: int | None = None

    def step(self) -> bool:
        if not self.seen.is_set():
            self.slack = timer_slack()
            self.seen.set()
        self.stop_event.wait(0.05)
        return not self.stop_event.is_set()


class Burner(Stage):
    """Burns about `seconds` of CPU in one step, then ends (a finite source)."""

    def __init__(self, seconds: float) -> None:
        super().__init__("burner")
        self.seconds = seconds

    def step(self) -> bool:
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return self.finish()


def test_stage_threads_carry_their_names_and_timing_critical_ones_a_fine_timer_slack():
    stages = [Idle("capture"), Idle("reject-output-alarm", critical=True)]
    own = current_timer_slack()
    assert own != TIMER_SLACK_NS
    with fine_timer_slack_held():
        assert current_timer_slack() == TIMER_SLACK_NS
    assert current_timer_slack() == own, "the block gives the thread its own slack back"
    for s in stages:
        s.start()
    try:
        for s in stages:
            assert s.seen.wait(5)
        assert comm(stages[0].native_id) == "capture"
        assert comm(stages[1].native_id) == "reject-output-a", "Linux keeps the first 15 bytes"
        assert stages[1].slack == TIMER_SLACK_NS
        assert stages[0].slack == own, "only timing-critical stages change their slack"
    finally:
        for s in stages:
            s.stop_event.set()
        for s in stages:
            s.join(5)


def test_cpu_of_a_thread_that_ended_is_still_counted():
    start = cpu_by_thread()
    burner = Burner(0.3)
    burner.start()
    burner.join(10)
    assert not burner.is_alive()
    assert not Path(f"/proc/self/task/{burner.native_id}").exists(), "the thread is gone from /proc"
    spent = cpu_spent(start, cpu_by_thread())
    assert 0.25 <= spent["burner"] <= 1.0, spent


def test_cpu_per_part_table():
    runs = [{"cpu": {"inference": 0.4, "capture": 0.1}, "parts": 100, "elapsed_s": 1.0},
            {"cpu": {"inference": 0.6, "capture": 0.1}, "parts": 100, "elapsed_s": 1.0}]
    lines = format_cpu_per_part(runs)
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["inference"][1] == "5.00" and rows["capture"][1] == "1.00"  # ms per part, medians
    assert "0.60 cores busy" in lines[-1]
    assert format_cpu_per_part([{"cpu": {}, "parts": 0}]) == []


def test_the_onnxruntime_pool_is_named(tiny_model):
    from station.artifact import load_artifact
    from station.ort_backend import OnnxRuntimeRunner, onnx_bytes

    art = load_artifact(tiny_model)
    graph = onnx_bytes(art.model, input_size=art.metadata.preprocess.input_size)
    before = set(cpu_by_thread())
    runner = OnnxRuntimeRunner(graph, threads=2)
    try:
        size = art.metadata.preprocess.input_size
        runner(np.zeros((1, 3, size, size), np.float32))
        new = {tid: name for tid, (name, _) in cpu_by_thread().items() if tid not in before}
        assert "ort-pool" in new.values(), new
    finally:
        del runner


def test_name_threads_started_by_leaves_threads_an_inner_block_named():
    stop = threading.Event()
    threads = []
    with name_threads_started_by("outer"):
        with name_threads_started_by("inner"):
            threads.append(threading.Thread(target=stop.wait, daemon=True))
            threads[-1].start()
        threads.append(threading.Thread(target=stop.wait, daemon=True))
        threads[-1].start()
    try:
        assert [comm(t.native_id) for t in threads] == ["inner", "outer"]
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def test_precise_wait_sleeps_to_the_spin_window_and_spins_to_the_due_time():
    now = time.monotonic_ns()
    assert wait_before(now + 10 * SPIN_NS, now, 10.0) == pytest.approx(9 * SPIN_NS / 1e9)
    assert wait_before(now + SPIN_NS // 2, now, 10.0) == 0.0
    assert wait_before(now + 10**12, now, 0.2) == 0.2
    due = time.monotonic_ns() + SPIN_NS
    spin_until(due)
    assert time.monotonic_ns() >= due


def test_bench_ort_compares_the_option_sets_and_refuses_a_rate_of_zero(tiny_model, capsys):
    from station import bench_ort

    assert bench_ort.main(["--model", str(tiny_model), "--calls", "5", "--rate", "200", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    for option_set in bench_ort.OPTION_SETS:
        assert option_set in out
    with pytest.raises(SystemExit) as exc:
        bench_ort.main(["--model", str(tiny_model), "--rate", "0"])
    assert exc.value.code == 2 and "--rate must be above 0" in capsys.readouterr().err
