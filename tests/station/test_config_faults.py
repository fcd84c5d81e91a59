"""Config faults as a plant meets them: a station YAML cut short, hostile YAML, files that are not there.

Each is run through the real `station` command (check-config, the unit's ExecStartPre, and `station
run`) as a subprocess: exit 2 and one row per problem, never a traceback, a hang or a station that
starts with the `log` actuator. The truncation sweep runs in-process over every line of the shipped
config/station.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, make_tiny_model, write_config

from station.configfile import ConfigError, ConfigUse, load_config

STATION = [sys.executable, "-m", "station.cli"]
SHIPPED = REPO / "config" / "station.yaml"


def station(*args: str, cwd: Path | None = None, timeout: float = 120,
            python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # The timeout guards against a hang (a FIFO read blocks forever); it is not a speed assertion.
    return subprocess.run([sys.executable, *python_flags, "-m", "station.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def rows(stderr: str) -> dict[str, str]:
    """check-config's table: key -> row (after the count line and the header)."""
    lines = stderr.splitlines()
    assert lines[1].split() == ["line", "key", "value", "message"], stderr
    return {line.split()[1]: line for line in lines[2:]}


def plant_copy(tmp: Path, text: str) -> Path:
    """The shipped config with its model path made absolute, so only the cut makes a difference."""
    return write_config(tmp / "station.yaml",
                        text.replace("../models/impeller-resnet18.pt", str(REPO / "models" / "impeller-resnet18.pt")))


def test_truncated_station_yaml_is_refused_by_check_config_and_run(tmp_path):
    text = SHIPPED.read_text()
    # The finding: cut just before the reject actuator, the file was valid and ran with the log actuator.
    cut = text[:text.index("\n  actuator:", text.index("\nreject:")) + 1]
    cfg = plant_copy(tmp_path, cut)
    check = station("check-config", str(cfg))
    assert check.returncode == 2 and "Traceback" not in check.stderr
    found = rows(check.stderr)
    assert "reject.actuator" in found and "without it rejects would only be logged" in found["reject.actuator"]
    last_line = len(cut.splitlines())
    assert found["tracelog"].split()[0] == str(last_line) and "cut short" in found["tracelog"]
    run = station("run", "-c", str(cfg), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "reject.actuator" in run.stderr and "tracelog" in run.stderr
    assert not (tmp_path / "var").exists(), "nothing started: no trace log was created"


def test_no_cut_of_the_shipped_config_runs_without_its_safety_sections(tmp_path):
    """Every cut of config/station.yaml at a line end before `tracelog.dir` is refused for `station run`;
    the whole file loads. (Keys after it only have safe defaults: images, budget, service timings.)"""
    text = plant_copy(tmp_path, SHIPPED.read_text()).read_text()
    lines = text.splitlines(keepends=True)
    tracelog_at = next(i for i, line in enumerate(lines) if line.startswith("tracelog:"))
    dir_at = next(i for i in range(tracelog_at, len(lines)) if lines[i].lstrip().startswith("dir:"))
    refused = 0
    for n in range(dir_at + 1):
        cut = write_config(tmp_path / "cut.yaml", "".join(lines[:n]))
        with pytest.raises(ConfigError):
            load_config(cut, use=ConfigUse.RUN)
        refused += 1
    assert refused == dir_at + 1
    assert load_config(tmp_path / "station.yaml", use=ConfigUse.RUN).config.reject.actuator.kind == "modbus_tcp"
    # Replay, bench and the demo keep their defaults: a short file is fine there.
    short = write_config(tmp_path / "replay.yaml", "camera: {kind: synthetic}\n")
    assert load_config(short, use=ConfigUse.REPLAY).config.reject.actuator.kind == "log"
    with pytest.raises(ConfigError) as exc:
        load_config(short, use=ConfigUse.RUN)
    missing = {issue.key for issue in exc.value.issues}
    assert {"model", "decision", "reject", "tracelog"} <= missing and "camera" not in missing


LAUGHS = "camera: {kind: synthetic}\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))


@pytest.mark.parametrize("name, content, line, message", [
    ("recursive", "camera: {kind: synthetic}\nloop: &a [1, *a]\n", "2", "recursive alias"),
    ("deep", "camera: {kind: synthetic}\nx: " + "[" * 3000 + "]" * 3000 + "\n", "2", "nesting deeper than"),
    ("laughs", LAUGHS, None, "billion laughs"),
    ("huge", "camera: {kind: synthetic}\n" + "# padding\n" * 200_000, "-", "limited to"),
])
def test_hostile_yaml_is_refused_with_one_line(tmp_path, name, content, line, message):
    path = write_config(tmp_path / f"{name}.yaml", content)
    result = station("check-config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    table = result.stderr.splitlines()
    assert table[0].endswith("1 error(s)") and len(table) == 3, result.stderr
    assert message in table[2]
    if line is not None:
        assert table[2].split()[0] == line


def test_a_fifo_or_a_device_as_config_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "station.yaml"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block forever
    for path in (fifo, Path("/dev/zero")):
        for command in (["check-config", str(path)], ["run", "-c", str(path)]):
            result = station(*command, timeout=60)
            assert result.returncode == 2 and "not a regular file" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr


def test_files_the_config_names_are_checked_without_model(tmp_path):
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """camera:
  kind: replay
  path: no-such-folder
model:
  path: no-such-model.pt
decision: {deadline_ms: 100}
reject:
  delay_ms: 400
  actuator: {kind: serial_relay, port: /dev/ttyUSB-no-such-adapter, preset: lctech}
alarm:
  actuator: {kind: plc_handshake, link: {transport: rtu, port: /dev/ttyNOPE}}
tracelog: {dir: log}
""")
    result = station("check-config", str(cfg))
    assert result.returncode == 2
    found = rows(result.stderr)
    assert found["camera.path"].split()[0] == "3" and "does not exist" in found["camera.path"]
    assert found["model.path"].split()[0] == "5" and "does not exist" in found["model.path"]
    assert found["reject.actuator.port"].split()[0] == "9" and "serial port" in found["reject.actuator.port"]
    assert found["alarm.actuator.link.port"].split()[0] == "11"
    fixed = cfg.read_text().replace("no-such-folder", ".").replace("no-such-model.pt", "tiny.pt") \
        .replace("{kind: serial_relay, port: /dev/ttyUSB-no-such-adapter, preset: lctech}", "{kind: log}") \
        .replace("alarm:\n  actuator: {kind: plc_handshake, link: {transport: rtu, port: /dev/ttyNOPE}}\n", "")
    ok = station("check-config", str(write_config(tmp_path / "ok.yaml", fixed)))
    assert ok.returncode == 0, ok.stderr


def _imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_check_config_and_trace_export_do_not_import_torch(tmp_path):
    check = station("check-config", str(SHIPPED), python_flags=("-X", "importtime"))
    assert check.returncode == 0, check.stderr
    export = station("trace", "export", "--db", str(tmp_path / "none.sqlite"), python_flags=("-X", "importtime"))
    assert export.returncode == 2 and "no trace log" in export.stderr
    for result in (check, export):
        modules = _imported_modules(result.stderr)
        assert "station.configfile" in modules, "importtime output was read"
        assert not {m for m in modules if m == "torch" or m.startswith(("torch.", "onnxruntime", "cv2"))}
