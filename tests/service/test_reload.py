"""Station.reload on a running station: actuator settings move to another (real, pymodbus) PLC, the image
policy changes from the next part, the frame size check, the reject delay, the model recorded in the rows and
the summary interval change through the stages that hold them, restart-only keys are reported and left alone,
and a reload that fails anywhere (unreachable PLC, corrupt model) changes nothing at all."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from service_support import free_port, read_rows
from support import make_tiny_model, own_pulse_rows, until, write_config

from station.testbench.plc_sim import start_sim_server
from station.app import Station
from station.artifact import file_sha256
from station.configfile import load_config
from station.reload import ReloadError


def config_text(*, port: int | None = None, threshold: float = 0.000001, images: str = "all",
                model: str = "tiny.pt", extra: str = "") -> str:
    actuator = "{kind: log}" if port is None else f"{{kind: modbus_tcp, host: 127.0.0.1, port: {port}, coil: 1}}"
    return f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 10, size_px: 64}}
model: {{path: {model}, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 150}}
reject: {{delay_ms: 300, pulse_ms: 20, actuator: {actuator}}}
tracelog: {{dir: log, images: {images}}}
{extra}"""



def start(tmp: Path, text: str) -> Station:
    make_tiny_model(tmp / "tiny.pt")
    station = Station(load_config(write_config(tmp / "s.yaml", text)))
    station.start()
    return station


def reload_with(station: Station, tmp: Path, text: str):
    return station.reload(load_config(write_config(tmp / "s.yaml", text)))


def test_actuator_settings_move_to_another_plc_live(tmp_path, sim_plc):
    second = start_sim_server("127.0.0.1", 0)
    station = start(tmp_path, config_text(port=sim_plc.port))
    try:
        until(lambda: len(sim_plc.pulses(1)) >= 3)
        result = reload_with(station, tmp_path, config_text(port=second.port))
        swapped_ns = time.monotonic_ns()
        assert any("reject actuator" in a for a in result.applied) and not result.needs_restart
        until(lambda: len(second.pulses(1)) >= 3)
    finally:
        summary = station.stop()
        second_pulses, first_pulses = second.pulses(1), sim_plc.pulses(1)
        second_coil = second.coil(1)
        second.stop()
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT actuator_result, actuator_error FROM parts")
    assert len(rows) == summary["parts"] and {r["actuator_result"] for r in rows} <= {"acknowledged", "late"}
    assert len(first_pulses) + len(second_pulses) == len(own_pulse_rows(rows)), "one pulse per reject, across both PLCs"
    assert all(on_ns < swapped_ns for on_ns, _ in first_pulses), "nothing goes to the old PLC after the swap"
    assert all(off_ns > 0 for _, off_ns in first_pulses + second_pulses), "every pulse ended"
    assert not sim_plc.coil(1) and not second_coil, "both outputs off"


def test_image_policy_changes_live_and_restart_only_keys_are_reported_not_applied(tmp_path):
    station = start(tmp_path, config_text())
    try:
        until(lambda: station.stats.parts >= 4)
        changed = config_text(images="none").replace("rate_parts_per_s: 10", "rate_parts_per_s: 12") \
            .replace("dir: log", "dir: elsewhere") + "queues: {frames: 8}\nstation: {log_level: WARNING}\n"
        result = reload_with(station, tmp_path, changed)
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 5)
    finally:
        station.stop()
    assert set(result.needs_restart) == {"camera", "queues", "tracelog.dir"}
    assert any(a.startswith("image policy (none") for a in result.applied)
    assert any(a == "log level WARNING" for a in result.applied)
    # Not applied: the running station still describes (and uses) what it runs with.
    assert station.config.queues.frames == 4 and station.frames.maxsize == 4
    assert station.config.camera.rate_parts_per_s == 10 and station.config.tracelog.dir == tmp_path / "log"
    assert not (tmp_path / "elsewhere").exists()
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT seq, image_path FROM parts ORDER BY seq")
    with_image = [r["seq"] for r in rows if r["image_path"]]
    without = [r["seq"] for r in rows if not r["image_path"]]
    assert with_image and without and max(with_image) < min(without), "images stop from one part on"
    event = read_rows(tmp_path / "log/trace.sqlite", "SELECT message FROM events WHERE kind='reload'")
    assert "needs restart (not applied): camera, queues, tracelog.dir" in event[0]["message"]


def test_frame_check_delay_model_and_summary_interval_change_through_their_stages(tmp_path, caplog):
    """Each live setting has its stage's public method behind it: the capture's frame size check, the
    scheduler's delay, the trace log's run identity (model and config hashes in every row), the housekeeping
    summary interval, the station's config. Each holds from one part on, for every later part."""
    caplog.set_level(logging.INFO, logger="station.housekeeping")
    other = make_tiny_model(tmp_path / "other.pt", seed=1)
    station = start(tmp_path, config_text())
    try:
        until(lambda: station.stats.parts >= 4)
        assert not [r for r in caplog.records if r.message.startswith("summary:")], "60 s between summaries at start"
        changed = config_text(model="other.pt").replace("delay_ms: 300", "delay_ms: 450") \
            + "frame: {width_px: 100, height_px: 100}\nstation: {summary_interval_s: 1}\n"
        result = reload_with(station, tmp_path, changed)
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 6)
        until(lambda: any(r.message.startswith("summary:") for r in caplog.records), timeout=10)
    finally:
        station.stop()
    assert {"frame size check", "service, line and summary settings"} <= set(result.applied)
    assert station.config.reject.delay_ms == 450 and station.loaded.sha256 == file_sha256(tmp_path / "s.yaml")
    rows = read_rows(tmp_path / "log/trace.sqlite",
                     "SELECT reason, due_ns - t_capture_ns AS delay_ns, model_sha256, config_sha256 FROM parts ORDER BY seq")
    first, last = rows[0], rows[-1]
    assert (first["reason"], first["delay_ns"]) == ("model", 300_000_000)
    assert (last["reason"], last["delay_ns"]) == ("bad_frame", 450_000_000), "64 px frames, 100 px expected"
    assert (last["model_sha256"], last["config_sha256"]) == (file_sha256(other), station.loaded.sha256)
    assert first["model_sha256"] != last["model_sha256"] and first["config_sha256"] != last["config_sha256"]
    for key in ("reason", "delay_ns"):
        switched = [i for i, r in enumerate(rows) if r[key] == last[key]]
        assert switched == list(range(switched[0], len(rows))), f"{key}: once changed, for every later part"


@pytest.mark.parametrize("fault", ["unreachable PLC", "corrupt model"])
def test_a_reload_that_fails_anywhere_changes_nothing(tmp_path, sim_plc, fault):
    station = start(tmp_path, config_text(port=sim_plc.port))
    before = (station.decision.settings, station.classifier, station.scheduler.worker.actuator, station.config)
    try:
        until(lambda: station.stats.parts >= 3)
        if fault == "unreachable PLC":
            text = config_text(threshold=0.9, port=free_port(), images="none")
            expected = "cannot be opened"
        else:
            (tmp_path / "new.pt").write_bytes(b"PK\x03\x04 truncated")
            text = config_text(threshold=0.9, port=sim_plc.port, model="new.pt", images="none")
            expected = "corrupt"
        with pytest.raises(ReloadError, match=expected):
            reload_with(station, tmp_path, text)
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 3)
    finally:
        station.stop()
    assert (station.decision.settings, station.classifier, station.scheduler.worker.actuator, station.config) == before
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT threshold, image_path, actuator_result, actuator_error FROM parts")
    assert all(r["threshold"] == 0.000001 and r["image_path"] for r in rows), "old threshold and images kept"
    assert len(sim_plc.pulses(1)) == len(own_pulse_rows(rows)), "the running PLC link kept every reject"


def test_inference_backend_switches_live_and_back(tmp_path):
    station = start(tmp_path, config_text())
    try:
        until(lambda: station.stats.parts >= 3)
        on_torch = station.classifier
        to_ort = reload_with(station, tmp_path, config_text().replace("warmup_runs: 0", "warmup_runs: 0, "
                                                                       "backend: onnxruntime, threads: 1"))
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 3)
        on_ort = station.classifier
        # A new onnxruntime thread count needs a new session: the classifier is rebuilt.
        more_threads = reload_with(station, tmp_path, config_text().replace(
            "warmup_runs: 0", "warmup_runs: 0, backend: onnxruntime, threads: 2"))
        rebuilt = station.classifier
        back = reload_with(station, tmp_path, config_text())
        cut = station.stats.parts
        until(lambda: station.stats.parts >= cut + 3)
    finally:
        station.stop()
    assert on_torch.backend == "torch" and on_ort.backend == "onnxruntime" and on_ort.runner is not None
    assert any("onnxruntime on cpu" in a for a in to_ort.applied)
    assert rebuilt is not on_ort and rebuilt.backend == "onnxruntime"
    assert any("onnxruntime on cpu" in a for a in more_threads.applied)
    assert station.classifier.backend == "torch" and any("torch on cpu" in a for a in back.applied)
    rows = read_rows(tmp_path / "log/trace.sqlite", "SELECT seq, p_defect FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)) and all(r["p_defect"] is not None for r in rows)
