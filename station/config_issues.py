"""Config problems as line / key / value / message rows, every one of them found in a single pass.

Pydantic stops at the first failing level: a model's cross-field validator only runs when all of its
fields are valid, so a deadline that leaves no time before the ejector would only be reported once
an unrelated typo elsewhere had been fixed. `validate_all` therefore validates again with every
field that already failed taken out (its default applies), as often as new problems appear, and
keeps a cross-field problem found that way only when its message names none of the keys taken out
(a check comparing against a substituted default would be a false alarm). Cross-field validators
may report several problems at once, one per line, each line starting with its key path.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from station.config import StationConfig

KeyPath = tuple[str, ...]
LineIndex = dict[KeyPath, int]

_KEY_HEAD = re.compile(r"^[A-Za-z_]\w*(?:\.\w+)*$")
_MAX_ROUNDS = 4


@dataclass(frozen=True)
class ConfigIssue:
    line: int | None
    key: str
    value: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.key or '<top>'} = {self.value}: {self.message}"


class ConfigError(ValueError):
    def __init__(self, path: Path | str, issues: list[ConfigIssue]) -> None:
        self.path = Path(path)
        self.issues = issues
        body = "\n".join(f"  {i}" for i in issues)
        super().__init__(f"invalid station config {self.path}:\n{body}")


def line_of(lines: LineIndex, path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest ancestor written in the file."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def lookup(data: Any, path: KeyPath) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def shown_value(node: Any) -> str:
    return "" if node is None or isinstance(node, (dict, list)) else repr(node)


def validate_all(data: dict, lines: LineIndex) -> tuple[StationConfig | None, list[ConfigIssue], set[str]]:
    """(config or None, every issue, the dotted key paths that have an issue)."""
    try:
        return StationConfig.model_validate(data), [], set()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    issues: list[ConfigIssue] = []
    seen: set[tuple[str, str]] = set()
    removed: set[KeyPath] = set()
    current = data
    for round_no in range(_MAX_ROUNDS):
        to_remove: set[KeyPath] = set()
        for err in errors:
            path = _data_path(err, current)
            later_round = round_no > 0
            if later_round and err["type"] != "value_error":
                continue  # a 'missing' or the like caused by taking a value out, not by the file
            for issue, key_path in _issues_for(err, path, current, lines):
                if later_round and _names_removed(issue.message, path, removed):
                    continue
                if (issue.key, issue.message) not in seen:
                    seen.add((issue.key, issue.message))
                    issues.append(issue)
            if path:
                to_remove.add(_removable(path, current))
        to_remove -= removed
        if not to_remove:
            break
        removed |= to_remove
        current = _without(data, removed)
        try:
            StationConfig.model_validate(current)
            break
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
    return None, issues, {i.key for i in issues}


def _data_path(err: dict, data: Any) -> KeyPath:
    """The error's location as a path into the data (a discriminated union adds its tag: dropped)."""
    loc = [str(p) for p in err["loc"]]
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
    return tuple(clean)


def _issues_for(err: dict, path: KeyPath, data: Any, lines: LineIndex) -> list[tuple[ConfigIssue, KeyPath]]:
    msg: str = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the station config; check its spelling and section)"
        return [(ConfigIssue(line_of(lines, path), ".".join(path), "", msg), path)]
    if not msg.startswith("Value error, "):
        return [(ConfigIssue(line_of(lines, path), ".".join(path), shown_value(lookup(data, path)), msg), path)]
    out = []
    for text in msg[len("Value error, "):].splitlines():
        key_path, text = _key_named_first(text, path, data)
        out.append((ConfigIssue(line_of(lines, key_path), ".".join(key_path),
                                shown_value(lookup(data, key_path)), text), key_path))
    return out


def _key_named_first(text: str, at: KeyPath, data: Any) -> tuple[KeyPath, str]:
    """Cross-field messages start with the key they are about: from the top ('decision.deadline_ms:')
    or within the validated model ('reconnect_max_ms:'). Point the row at that key."""
    head, sep, rest = text.partition(":")
    if not sep or not _KEY_HEAD.match(head):
        return at, text
    parts = tuple(head.split("."))
    if len(parts) > 1 and parts[0] in StationConfig.model_fields:
        return parts, rest.strip()
    return at + parts, rest.strip()


def _names_removed(message: str, at: KeyPath, removed: set[KeyPath]) -> bool:
    """Does a problem found after taking keys out compare against one of them?"""
    for path in removed:
        names = {".".join(path)}
        if path[:len(at)] == at and len(path) > len(at):
            names.add(".".join(path[len(at):]))
        for name in names:
            if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message):
                return True
    return False


def _removable(path: KeyPath, data: Any) -> KeyPath:
    """The part of `path` that can be taken out of the data: up to the first list (its key goes)."""
    node = data
    for i, part in enumerate(path):
        if isinstance(node, list):
            return path[:i] or path[:1]
        node = node.get(part) if isinstance(node, dict) else None
    return path


def _without(data: dict, paths: set[KeyPath]) -> dict:
    out = copy.deepcopy(data)
    for path in sorted(paths, key=len, reverse=True):
        node: Any = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out
