"""Loading a station YAML file and reporting its errors as line / key / value / message.

The file is read safely first (`station.safe_yaml`: a regular file, bounded size, bounded aliases
and nesting), then composed into nodes so every key path can be traced back to the line it was
written on; pydantic's errors are mapped onto those lines, every one in the same pass
(`station.config_issues`). What else is checked depends on what the config is loaded for
(`ConfigUse`): the plant's `station run` (also `check-config` and a reload) needs the
safety-relevant sections written out and the files it names present (`station.config_checks`);
replay, bench, the demo and the read-only tools accept the defaults. `load_config` raises
`ConfigError`, whose `issues` list is what `station check-config` prints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import yaml

from station.config import StationConfig
from station.config_checks import machine_checks, required_for_run
from station.config_issues import ConfigError, ConfigIssue, LineIndex, validate_all
from station.safe_yaml import YamlRefused, load_document, read_regular_file

__all__ = ["ConfigError", "ConfigIssue", "ConfigUse", "LoadedConfig", "load_config", "parse_config_text"]


class ConfigUse(str, Enum):
    """What a config is loaded for; the plant's `run` is checked hardest."""

    RUN = "run"        # station run, check-config (the unit's ExecStartPre), SIGHUP reload
    REPLAY = "replay"  # station replay: recorded frames, the camera section is replaced
    BENCH = "bench"    # station bench: a temporary log, the log actuator unless asked
    DEMO = "demo"      # station demo: a simulated PLC
    TOOL = "tool"      # trace export, cameras, record, install's template, tests

    @property
    def is_plant(self) -> bool:
        return self is ConfigUse.RUN


@dataclass(frozen=True)
class LoadedConfig:
    config: StationConfig
    path: Path
    sha256: str
    use: ConfigUse = ConfigUse.TOOL  # what it was loaded for: a live reload re-reads it the same way


def _line_index(node: yaml.Node, prefix: tuple[str, ...], out: LineIndex) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            _line_index(value_node, key, out)
            out[key] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*prefix, str(i)), out)


def _check_duplicate_keys(node: yaml.Node, prefix: str, issues: list[ConfigIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                issues.append(ConfigIssue(key_node.start_mark.line + 1, path, "", "key given twice"))
            seen.add(key)
            _check_duplicate_keys(value_node, path, issues)


def parse_config_text(text: str, *, source: Path | str = "<string>", use: ConfigUse = ConfigUse.TOOL,
                      base: Path | None = None) -> StationConfig:
    """Validate YAML text; raise ConfigError with every problem found. `base` is the folder relative
    paths are anchored at (the plant checks look for the files there; default: the current folder)."""
    try:
        root, data = load_document(text)
    except YamlRefused as exc:
        raise ConfigError(source, [ConfigIssue(exc.line, exc.key, "", exc.message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigIssue(line, "", "", f"malformed YAML: {problem}")]) from None
    if root is None or data is None:
        raise ConfigError(source, [ConfigIssue(None, "", "", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue(1, "", type(data).__name__, "the top level must be a mapping")])
    lines: LineIndex = {}
    _line_index(root, (), lines)
    issues: list[ConfigIssue] = []
    _check_duplicate_keys(root, "", issues)
    config, schema_issues, bad_keys = validate_all(data, lines)
    issues += schema_issues
    if use.is_plant:
        issues += required_for_run(data, lines, last_line=max(len(text.splitlines()), 1))
        issues += machine_checks(data, lines, base=base or Path.cwd(), bad_keys=bad_keys)
    if issues or config is None:
        raise ConfigError(source, sorted(issues, key=lambda i: (i.line or 0, i.key)))
    return config


def load_config(path: Path | str, *, use: ConfigUse = ConfigUse.TOOL) -> LoadedConfig:
    """Read, validate and anchor a station YAML file; raise ConfigError naming line and key.

    `use` says what the config is for: `ConfigUse.RUN` (the plant) also requires the safety-relevant
    sections and checks the files it names; the default, TOOL, accepts the schema's defaults."""
    path = Path(path)
    try:
        raw = read_regular_file(path)
    except YamlRefused as exc:
        raise ConfigError(path, [ConfigIssue(None, "<file>", "", exc.message)]) from None
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue(None, "<file>", str(path),
                                             f"cannot read the file: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigIssue(None, "<file>", "", f"not UTF-8 text: {exc}")]) from None
    base = path.resolve().parent
    config = parse_config_text(text, source=path, use=use, base=base).resolve_paths(base)
    return LoadedConfig(config=config, path=path, sha256=hashlib.sha256(raw).hexdigest(), use=use)
