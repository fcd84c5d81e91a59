"""Helpers shared by the tests: component checks, tiny untrained models, labelled frame folders.

Imported as `support` (tests/ is on sys.path through tests/conftest.py); the fixtures that use these
live in tests/conftest.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# `station` as the tests run it in a subprocess: with the test network registered (tests/station_cli.py),
# so it loads the tiny models below. Tests of what an installed station does use `python -m station.cli`.
STATION_CLI = [sys.executable, str(REPO / "tests" / "station_cli.py")]


def require_component(available: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a real component the test needs is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing; CI must provide it (see .ci/run)")
    pytest.skip(f"{what} is not installed here")


def casting_data_dir() -> Path:
    return Path(os.environ.get("CASTING_DATA_DIR", REPO.parent / "shared" / "data" / "casting"))


_TINY_DOMAINS: dict[tuple[int, int], object] = {}


def make_tiny_model(path: Path, *, threshold: float = 0.5, input_size: int = 64, seed: int = 0) -> Path:
    """An untrained TinyNet artifact (tests/tinynet.py): real file format (sealed format 2), real loading
    path, meaningless verdicts. Its validity domain is fitted (novelty and spread limits, no perturbation sweep) on frames
    of the station's own renderer at the sizes the tests render, so rendered frames pass its gate and a
    covered lens, a black or a white frame do not. The fit takes about a second; it is cached per seed."""
    import torch

    from station.artifact import ArtifactMetadata, save_artifact
    from station.preprocess import Preprocess
    from tinynet import TinyNet

    torch.manual_seed(seed)
    model = TinyNet(2).eval()
    meta = ArtifactMetadata(architecture="tinynet", class_names=("def_front", "ok_front"),
                            defective_class="def_front", preprocess=Preprocess(input_size=input_size),
                            recommended_threshold=threshold, model_name="tiny-test")
    key = (seed, input_size)
    if key not in _TINY_DOMAINS:
        _TINY_DOMAINS[key] = rendered_domain(model, meta)
    save_artifact(path, model, meta, validity=_TINY_DOMAINS[key])
    return path


def rendered_domain(model, meta, *, per_size: int = 24):
    """A validity domain (no perturbation sweep) fitted on rendered frames of 64, 96, 128 and 300 px, for
    test networks: the frames the tests render are inside it."""
    from station.cameras.synthetic import render_impeller
    from training.validity import spread_domain

    rng = np.random.default_rng(1234)
    images, labels = [], []
    for size in (64, 96, 128, 300):
        for i in range(per_size):
            images.append(render_impeller(rng, size, defective=i % 2 == 0))
            labels.append(0 if i % 2 == 0 else 1)
    return spread_domain(model, meta.preprocess, images, labels=labels, defective_index=0, pad=2.0)


def make_frames(folder: Path, *, defective: int, ok: int, size: int = 96, seed: int = 0) -> Path:
    """Labelled frames rendered by the station's own renderer (never casting images)."""
    from station.cameras.synthetic import render_impeller

    rng = np.random.default_rng(seed)
    for label, count, is_def in (("def_front", defective, True), ("ok_front", ok, False)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(render_impeller(rng, size, defective=is_def)).save(folder / label / f"{label}_{i:04d}.png")
    return folder


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def own_pulse_rows(rows) -> list:
    """Reject rows that switched the output on themselves: delivered, and not merged into the previous
    part's pulse. Two parts that arrive close together (a capture thread stalled on a loaded machine,
    then catching up) overlap; the scheduler holds the first pulse on instead of sending a second "on",
    so the device sees one on-edge for both. The device's on-edge count must match these rows."""
    from station.records import MERGED_NOTE

    return [r for r in rows if r["actuator_result"] in ("acknowledged", "late")
            and not (r["actuator_error"] or "").startswith(MERGED_NOTE)]


def run_to_end(loaded, *, timeout_s: float = 120.0, **station_kwargs):
    """Start a Station on a loaded config, wait until its frame source has ended, stop it (always) and
    return (station, summary)."""
    from station.app import Station

    station = Station(loaded, **station_kwargs)
    station.start()
    try:
        assert station.wait_source_finished(timeout_s=timeout_s), "the frame source did not end in time"
    finally:
        summary = station.stop()
    return station, summary


def query(db: Path, sql: str, args: tuple = ()) -> list:
    """Rows (sqlite3.Row, by column name) of one query on a trace log."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def assert_pulse_timing(pulses: list[tuple[int, int]], dues_ns: list[int], *, pulse_ms: float) -> None:
    """Pulses as the device saw them, against their due times: none early, typical ones within a few ms
    of due and as wide as pulse_ms. The per-pulse bound only catches gross errors: a loaded 2-core CI
    box can stall any single thread for tens of ms (precise figures come from `station bench --actuator`)."""
    import statistics

    assert len(pulses) == len(dues_ns)
    late_ms = [(on_ns - due) / 1e6 for (on_ns, _), due in zip(pulses, dues_ns)]
    width_err_ms = [abs((off_ns - on_ns) / 1e6 - pulse_ms) for on_ns, off_ns in pulses]
    assert min(late_ms) >= 0, f"a pulse reached the device before it was due: {min(late_ms):.2f} ms"
    assert statistics.median(late_ms) <= 5, f"median lateness {statistics.median(late_ms):.2f} ms"
    assert statistics.median(width_err_ms) <= 5, f"median width error {statistics.median(width_err_ms):.2f} ms"
    assert max(late_ms) <= 100 and max(width_err_ms) <= 100, (max(late_ms), max(width_err_ms))


def reject_verdict(seq: int, t_capture_ns: int):
    """A reject verdict for a part captured at `t_capture_ns` (scheduler and output tests)."""
    import time

    from station.records import Decision, Reason, Verdict

    return Verdict(seq=seq, decision=Decision.REJECT, reason=Reason.MODEL, p_defect=0.9, threshold=0.5,
                   t_capture_ns=t_capture_ns, t_decided_ns=t_capture_ns, wall_time=time.time(), source="test")


class RejectOutput:
    """A Modbus TCP coil as the station drives it: the device's output worker thread and the reject scheduler
    in front of it, with the reports and alarms they produce collected. `close()` stops both threads."""

    def __init__(self, port: int, *, role: str = "reject", coil: int = 2, pulse_ms: float = 20.0,
                 delay_ms: float = 50.0, late_tolerance_ms: float = 5.0, **config: object) -> None:
        from station.actuators import build_actuator
        from station.config_actuators import ModbusTcpActuatorConfig
        from station.output_worker import OutputWorker
        from station.scheduler import RejectScheduler

        cfg = ModbusTcpActuatorConfig(host="127.0.0.1", port=port, coil=coil, **{"timeout_ms": 300, **config})
        self.reports: list = []
        self.alarms: list[tuple[str, str | None]] = []
        self.worker = OutputWorker(build_actuator(cfg), role=role, pulse_ms=pulse_ms,
                                   late_tolerance_ms=late_tolerance_ms, plc_slow_clear_after=3,
                                   on_report=self.reports.append,
                                   on_alarm=lambda name, msg: self.alarms.append((name, msg)))
        self.scheduler = RejectScheduler(self.worker, delay_ms=delay_ms)
        self.worker.start()
        self.scheduler.start()
        assert self.worker.wait_opened(5)

    def close(self) -> None:
        self.scheduler.drain(5)
        self.scheduler.stop()
        self.scheduler.join(5)
        self.worker.stop()
        self.worker.join(5)
        with self.worker.actuator.lock:
            self.worker.actuator.close()

    def raised(self, name: str) -> list[str | None]:
        """Every raise (message) and clear (None) of one alarm, in order."""
        return [msg for n, msg in self.alarms if n == name]


def until(condition: Callable[[], object], timeout: float = 30.0, supervisor=None) -> None:
    """Wait for `condition()`, running the supervisor's check each round when one is given."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if supervisor is not None:
            supervisor.check()
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
