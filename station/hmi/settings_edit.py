"""The engineer's settings page: edit a few station YAML keys with comments kept, apply them all or nothing.

`SettingsEditor.apply` reads the YAML with ruamel.yaml (round trip: comments, order and layout stay),
sets the new values, validates the whole text with the station's own schema, writes the file
atomically, and asks the running station to reload it (the same path as SIGHUP). A value the schema
refuses is never written; a reload the station refuses puts the previous file back, byte for byte.
It refuses to start when the file on disk is not the one the station runs (edited by hand and not
reloaded): the audit row would otherwise not name every change that gets applied.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from station.configfile import ConfigError, ConfigUse, parse_config_text
from station.hmi.live import StationUnreachable

log = logging.getLogger(__name__)

Requester = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # "float" | "int" | "choice" | "threshold"
    label: str
    help: str
    choices: tuple[str, ...] = ()


SETTINGS = (
    Setting("decision.threshold", "threshold", "Reject threshold (p_defect)",
            "Parts with p_defect at or above this are rejected. Empty: the model's recommended threshold."),
    Setting("decision.deadline_ms", "float", "Verdict deadline, ms",
            "Latest a verdict may come after capture; later parts get the fail-safe verdict. Must leave "
            "reject.margin_ms before the ejector."),
    Setting("tracelog.images", "choice", "Images kept", "Which parts' images the trace log keeps.",
            ("all", "rejects", "none")),
    Setting("tracelog.sample_every_n", "int", "Keep every n-th image", "Of the images the policy keeps."),
    Setting("tracelog.image_format", "choice", "Image format", "png is lossless; jpeg is smaller.", ("png", "jpeg")),
)


class SettingsError(ValueError):
    """The change was refused; nothing was changed (the message says why)."""


def _yaml() -> YAML:
    y = YAML()  # round trip
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines
    y.representer.add_representer(
        type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _set_path(doc: CommentedMap, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = doc
    for part in parents:
        if part not in node or node[part] is None:
            node[part] = CommentedMap()
        node = node[part]
    node[leaf] = value


def parse_value(setting: Setting, text: str) -> Any:
    text = text.strip()
    try:
        if setting.kind == "threshold":
            return None if text in ("", "null", "model") else float(text)
        if setting.kind == "float":
            return float(text)
        if setting.kind == "int":
            return int(text)
    except ValueError:
        raise SettingsError(f"{setting.key}: {text!r} is not a number") from None
    if text not in setting.choices:
        raise SettingsError(f"{setting.key}: {text!r} is not one of {', '.join(setting.choices)}")
    return text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


class SettingsEditor:
    def __init__(self, path: Path, *, use: ConfigUse = ConfigUse.TOOL) -> None:
        self.path = Path(path)
        # A pre-check only: the station re-validates on reload the way it was started (the plant: RUN)
        # and refuses the whole change if that fails, and the file is restored.
        self.use = use
        self._lock = threading.Lock()  # two engineers saving at once: one after the other

    def current(self) -> dict[str, Any]:
        """The values in force: what the file says, or the schema's default for a key it leaves out."""
        return effective_values(self.path.read_text(encoding="utf-8"))

    def prepare(self, form: dict[str, str], *, running_sha256: str | None) -> tuple[str, str, list[dict[str, Any]]]:
        """(old text, new text, changes) for the submitted form; raises SettingsError, changes nothing."""
        raw = self.path.read_bytes()
        if running_sha256 and hashlib.sha256(raw).hexdigest() != running_sha256:
            raise SettingsError(f"{self.path} differs from the file the station runs (edited by hand and not "
                                "reloaded): reload or restart the station first, then change settings here")
        old_text = raw.decode("utf-8")
        y = _yaml()
        try:
            doc = y.load(old_text)
        except YAMLError as exc:
            raise SettingsError(f"{self.path} cannot be read as YAML: {exc}") from exc
        changes = []
        in_force = effective_values(old_text)
        for setting in SETTINGS:
            if setting.key not in form:
                continue
            new = parse_value(setting, form[setting.key])
            old = in_force[setting.key]
            if not _same(old, new):
                _set_path(doc, setting.key, new)
                changes.append({"key": setting.key, "old": old, "new": new})
        if not changes:
            raise SettingsError("nothing changed")
        buf = io.StringIO()
        y.dump(doc, buf)
        new_text = buf.getvalue()
        try:
            parse_config_text(new_text, source=self.path, use=self.use, base=self.path.resolve().parent)
        except ConfigError as exc:
            raise SettingsError("; ".join(f"{i.key}: {i.message}" for i in exc.issues)) from exc
        return old_text, new_text, changes

    async def apply(self, form: dict[str, str], *, user: str, running_sha256: str | None,
                    ask_station: Requester) -> dict[str, Any]:
        """Write, reload, or restore; return the station's answer (ok, applied) or raise SettingsError."""
        with self._lock:
            old_text, new_text, changes = self.prepare(form, running_sha256=running_sha256)
            write_atomic(self.path, new_text)
            try:
                answer = await ask_station({"op": "reload", "user": user, "changes": changes})
            except StationUnreachable as exc:
                write_atomic(self.path, old_text)
                log.error("settings by %s: no answer from the station (%s); file restored", user, exc)
                raise SettingsError(f"the station did not confirm the reload ({exc}); the file was restored") from exc
            if not answer.get("ok"):
                write_atomic(self.path, old_text)
                log.error("settings by %s refused by the station: %s; file restored", user, answer.get("error"))
                raise SettingsError(f"the station refused the new settings, nothing changed: {answer.get('error')}")
            log.info("settings by %s applied: %s", user, changes)
            return {**answer, "changes": changes}


def effective_values(text: str) -> dict[str, Any]:
    """Each editable key's value as the station's schema reads the text (defaults filled in)."""
    try:
        config = parse_config_text(text)
    except ConfigError as exc:
        raise SettingsError("the YAML on disk is invalid: " + "; ".join(str(i) for i in exc.issues)) from exc
    out = {}
    for setting in SETTINGS:
        node: Any = config
        for part in setting.key.split("."):
            node = getattr(node, part)
        out[setting.key] = node
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace the file in one step, keeping its mode and group (the station's service account reads it)."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.hmi-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o777)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the file keeps our own owner, which is what wrote it before
    os.replace(tmp, path)
