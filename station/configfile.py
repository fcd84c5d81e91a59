"""Loading a station YAML file and reporting its errors as line / key / value / message.

YAML is composed into nodes first so every key path can be traced back to the line it was written
on; pydantic's errors are then mapped onto those lines. `load_config` raises `ConfigError`, whose
`issues` list is what `station check-config` prints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from station.config import StationConfig


@dataclass(frozen=True)
class ConfigIssue:
    line: int | None
    key: str
    value: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "line ?"
        return f"{where}: {self.key or '<top>'} = {self.value}: {self.message}"


class ConfigError(ValueError):
    def __init__(self, path: Path | str, issues: list[ConfigIssue]) -> None:
        self.path = Path(path)
        self.issues = issues
        body = "\n".join(f"  {i}" for i in issues)
        super().__init__(f"invalid station config {self.path}:\n{body}")


@dataclass(frozen=True)
class LoadedConfig:
    config: StationConfig
    path: Path
    sha256: str


def _line_index(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
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


def parse_config_text(text: str, *, source: Path | str = "<string>") -> StationConfig:
    """Validate YAML text; raise ConfigError with every problem found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigIssue(line, "", "", f"malformed YAML: {problem}")]) from exc
    if root is None or data is None:
        raise ConfigError(source, [ConfigIssue(None, "", "", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue(1, "", type(data).__name__, "the top level must be a mapping")])
    lines: dict[tuple[str, ...], int] = {}
    _line_index(root, (), lines)
    issues: list[ConfigIssue] = []
    _check_duplicate_keys(root, "", issues)
    try:
        config = StationConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, data, lines))
        raise ConfigError(source, issues) from None
    if issues:
        raise ConfigError(source, issues)
    return config


def _issues_from_validation(exc: ValidationError, data: dict, lines: dict[tuple[str, ...], int]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        # A discriminated union adds the chosen tag (e.g. 'modbus_tcp') to the path: drop it.
        clean: list[str] = []
        node: Any = data
        for part in loc:
            if isinstance(node, dict) and part in node:
                clean.append(part)
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                clean.append(part)
                node = node[int(part)]
            elif err["type"] in ("extra_forbidden", "missing") and part == loc[-1]:
                clean.append(part)
                node = None
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # Cross-field validators name their key first ("decision.deadline_ms: ..."): point there.
            head = msg.split(":", 1)[0]
            if "." in head and " " not in head:
                clean = head.split(".")
                msg = msg.split(":", 1)[1].strip()
                node = _lookup(data, clean)
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the station config; check its spelling and section)"
        line = None
        for n in range(len(clean), -1, -1):
            if tuple(clean[:n]) in lines:
                line = lines[tuple(clean[:n])]
                break
        value = "" if node is None or isinstance(node, (dict, list)) else repr(node)
        issues.append(ConfigIssue(line, ".".join(clean), value, msg))
    return issues


def _lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def load_config(path: Path | str) -> LoadedConfig:
    """Read, validate and anchor a station YAML file; raise ConfigError naming line and key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue(None, "", str(path), f"cannot read the file: {exc.strerror}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigIssue(None, "", "", f"not UTF-8 text: {exc}")]) from exc
    config = parse_config_text(text, source=path).resolve_paths(path.resolve().parent)
    return LoadedConfig(config=config, path=path, sha256=hashlib.sha256(raw).hexdigest())
