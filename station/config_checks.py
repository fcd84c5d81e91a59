"""Checks a plant config needs beyond its schema: sections written out, and the files it names present.

`station run` (and `station check-config`, the unit's ExecStartPre) must not fill a safety-relevant
gap with a default: a YAML cut short after `reject:` would otherwise run with the `log` actuator and
drive no ejector at all. `required_for_run` names each section or key that must be written out.
`machine_checks` looks at the machine the config will run on: the model file, the camera's path,
the serial ports of the actuators, and that the trace-log folder is not a file. Both work on the raw YAML data (with
defaults where a key is absent), so they run even when the schema found other errors, and they skip
a key whose value the schema already refused: every problem is reported in the same pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from station.config import ModelSection, TraceLogSection
from station.config_actuators import serial_port_problem
from station.config_issues import ConfigIssue, KeyPath, LineIndex, line_of, lookup, shown_value

# Key paths `station run` needs written in the file, and why.
REQUIRED_FOR_RUN: dict[str, str] = {
    "camera": "the frame source",
    "model": "the model section",
    "model.path": "the model file",
    "decision": "the decision section (threshold, deadline, fail-safe verdict)",
    "reject": "the reject section",
    "reject.delay_ms": "the camera-to-ejector travel time (no default fits a real line)",
    "reject.actuator": "the ejector's actuator (without it rejects would only be logged; write "
                       "`actuator: {kind: log}` to run without an ejector on purpose)",
    "tracelog": "the trace-log section",
    "tracelog.dir": "the trace-log folder",
}


def required_for_run(data: dict, lines: LineIndex, *, last_line: int) -> list[ConfigIssue]:
    issues = []
    for dotted, what in REQUIRED_FOR_RUN.items():
        path = tuple(dotted.split("."))
        parent = lookup(data, path[:-1]) if len(path) > 1 else data
        if not isinstance(parent, dict) or path[-1] in parent:
            continue  # written (or its section is missing, which is reported once, for the section)
        if len(path) == 1:
            message = (f"missing: `station run` needs {what} written out; the file ends at line {last_line}: "
                       f"was it cut short?")
            issues.append(ConfigIssue(last_line, dotted, "", message))
        else:
            issues.append(ConfigIssue(line_of(lines, path), dotted, "",
                                      f"missing: `station run` needs {what} written out"))
    return issues


def _anchor(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _skipped(dotted: str, bad_keys: set[str]) -> bool:
    """The schema already refused this key or a section above it: no second row about it."""
    return any(dotted == bad or dotted.startswith(bad + ".") for bad in bad_keys)


class _Checker:
    def __init__(self, data: dict, lines: LineIndex, base: Path, bad_keys: set[str]) -> None:
        self.data, self.lines, self.base, self.bad_keys = data, lines, base, bad_keys
        self.issues: list[ConfigIssue] = []

    def value(self, dotted: str, default: Any = None) -> Any:
        found = lookup(self.data, tuple(dotted.split(".")))
        return default if found is None else found

    def add(self, dotted: str, message: str) -> None:
        path: KeyPath = tuple(dotted.split("."))
        self.issues.append(ConfigIssue(line_of(self.lines, path), dotted,
                                       shown_value(lookup(self.data, path)), message))

    def wants(self, dotted: str) -> bool:
        return not _skipped(dotted, self.bad_keys)


def machine_checks(data: dict, lines: LineIndex, *, base: Path, bad_keys: set[str]) -> list[ConfigIssue]:
    """Files and devices the config names that are missing or unusable on this machine."""
    c = _Checker(data, lines, base, bad_keys)
    _check_model(c)
    _check_camera(c)
    for section in ("reject", "alarm"):
        _check_serial(c, f"{section}.actuator")
    _check_tracelog_dir(c)
    return c.issues


def _check_model(c: _Checker) -> None:
    if not c.wants("model.path"):
        return
    raw = c.value("model.path", str(ModelSection.model_fields["path"].default))
    if not isinstance(raw, str):
        return
    path = _anchor(raw, c.base)
    if not path.exists():
        c.add("model.path", f"model file {path} does not exist")
    elif not path.is_file():
        c.add("model.path", f"model path {path} is not a file")
    elif not os.access(path, os.R_OK):
        c.add("model.path", f"model file {path} is not readable by this user")


def _check_camera(c: _Checker) -> None:
    kind = c.value("camera.kind")
    if kind == "replay" and c.wants("camera.path") and isinstance(c.value("camera.path"), str):
        path = _anchor(c.value("camera.path"), c.base)
        if not path.exists():
            c.add("camera.path", f"replay folder or video {path} does not exist")
    elif kind == "genicam" and c.wants("camera.producers") and isinstance(c.value("camera.producers"), list):
        for i, raw in enumerate(c.value("camera.producers")):
            if isinstance(raw, str) and not _anchor(raw, c.base).exists():
                c.add(f"camera.producers.{i}", f"GenTL producer {_anchor(raw, c.base)} does not exist")
    elif kind == "opencv" and c.wants("camera.source") and isinstance(c.value("camera.source"), str):
        source: str = c.value("camera.source")
        if "://" in source or source.isdigit():
            return  # a stream URL or a device index: only opening it can tell
        path = Path(source) if source.startswith("/dev/") else _anchor(source, c.base)
        if not path.exists():
            c.add("camera.source", f"{'video device' if source.startswith('/dev/') else 'video file'} "
                                   f"{path} does not exist")


def _check_serial(c: _Checker, key: str) -> None:
    actuator = c.value(key)
    if not isinstance(actuator, dict):
        return
    kind = actuator.get("kind")
    if kind in ("modbus_rtu", "serial_relay"):
        sub = "port"
    elif kind == "plc_handshake" and isinstance(actuator.get("link"), dict) \
            and actuator["link"].get("transport") == "rtu":
        sub = "link.port"
    else:
        return
    port = c.value(f"{key}.{sub}")
    if isinstance(port, str) and c.wants(f"{key}.{sub}"):
        problem = serial_port_problem(port)
        if problem is not None:
            c.add(f"{key}.{sub}", problem)


def _check_tracelog_dir(c: _Checker) -> None:
    """Only what is a mistake in the file: a folder path that names a file. Whether the folder can be
    written is a disk fault, not a config error: the station runs with the tracelog alarm up, keeps
    the rows it cannot write, and start-up waits for the log (it is not a reason for exit 2)."""
    if not c.wants("tracelog.dir"):
        return
    raw = c.value("tracelog.dir", str(TraceLogSection.model_fields["dir"].default))
    if not isinstance(raw, str):
        return
    path = _anchor(raw, c.base)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                c.add("tracelog.dir", f"trace-log folder {path}: {folder} is a file, not a folder")
            return
