"""config/station.yaml: its values kept, every key listed, every comment generated from the config models.

The values are the file's own (an example plant: a GigE Vision camera on a hardware trigger, a Modbus TCP
PLC at an example address); keys the file lacks are added with their defaults, so a field added to the models appears
here on the next `station config-reference --write`. Each comment is the field's description, its
allowed values and its default (`station.config_schema_walk`), the same text as
docs/config-reference.md. Comments sit beside their key from column 30 and wrap under themselves.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from station.config import StationConfig
from station.config_reference import REGENERATE, yaml_text
from station.config_schema_walk import (bounds_text, choices, default_value, is_required, is_tag_field,
                                        model_text, number_text, shape_of, tag_value)

COMMENT_COLUMN = 30
WIDTH = 112
INDENT = "  "

HEADER = f"""\
# Inspection station configuration: every key with its default; units are in the key names.
# The comments are generated from the config models by `{REGENERATE}` (the same text as
# docs/config-reference.md): edit values here, descriptions in station/config*.py.
# Validate with:  station check-config station.yaml      (the systemd unit runs this before start)
# Relative paths are relative to the folder of this file. The values are an example plant: a GigE Vision
# camera on a hardware trigger and a Modbus TCP PLC at a documentation address (192.0.2.10); set your
# camera, PLC and timing.
"""

_MISSING = object()


class TemplateError(ValueError):
    """The file's values cannot be laid over the models (a required key with no value)."""


KEEP = "\x00"  # stands for a space that wrapping must not break ("default 60", "1..3600")


def _keep(text: str) -> str:
    return text.replace(" ", KEEP)


def leaf_comment(fld: FieldInfo) -> str:
    description = " ".join((fld.description or "").split()).rstrip(".")
    allowed = choices(fld)
    allowed_text = "One of " + ", ".join(number_text(c) for c in allowed) if allowed else \
        bounds_text(fld, compact=True)
    default = "required" if is_required(fld) else _keep(f"default {yaml_text(default_value(fld))}")
    tail = "; ".join(p for p in (allowed_text, default) if p)
    tail = tail[:1].upper() + tail[1:]
    return f"{description}. {tail}" if description else tail


def _line(lines: list[str], text: str, comment: str) -> None:
    if not comment:
        lines.append(text)
        return
    column = max(COMMENT_COLUMN, len(text) + 2)
    wrapped = textwrap.wrap(comment, width=max(30, WIDTH - column - 2), break_on_hyphens=False,
                            break_long_words=False)
    wrapped = [w.replace(KEEP, " ") for w in wrapped]
    lines.append(text.ljust(column) + "# " + wrapped[0])
    lines.extend(" " * column + "# " + more for more in wrapped[1:])


def _render(lines: list[str], name: str, fld: FieldInfo, value: Any, *, depth: int) -> None:
    pad = INDENT * depth
    shape = shape_of(fld)
    if value is _MISSING:
        if is_required(fld):
            raise TemplateError(f"{name}: required, and the file gives no value")
        value = default_value(fld)
    description = " ".join((fld.description or "").split())
    if shape.models and isinstance(value, dict):
        model = shape.models[0]
        comment = description
        if shape.tag:
            tag = value.get(shape.tag, default_value(fld).get(shape.tag) if isinstance(default_value(fld), dict)
                            else tag_value(shape.models[0], shape.tag))
            model = next(m for m in shape.models if tag_value(m, shape.tag) == tag)
        _line(lines, f"{pad}{name}:", comment)
        _render_model(lines, model, value, depth=depth + 1, choices_of=shape)
        return
    if shape.models:  # an optional section left out (null)
        kinds = f" ({shape.tag}: one of " + ", ".join(tag_value(m, shape.tag) for m in shape.models) + ")" \
            if shape.tag else ""
        _line(lines, f"{pad}{name}: {yaml_text(value)}", f"{description.rstrip('.')}; null = none{kinds}")
        return
    if shape.container == "mapping" and isinstance(value, dict) and value:
        _line(lines, f"{pad}{name}:", leaf_comment(fld))
        for key, item in value.items():
            lines.append(f"{pad}{INDENT}{key}: {yaml_text(item)}")
        return
    _line(lines, f"{pad}{name}: {yaml_text(value)}", leaf_comment(fld))


def _render_model(lines: list[str], model: type[BaseModel], values: dict, *, depth: int, choices_of: Any) -> None:
    fields = list(model.model_fields.items())
    if choices_of.tag:  # the kind first: it says what the keys below it are
        fields.sort(key=lambda item: item[0] != choices_of.tag)
    for name, fld in fields:
        if choices_of.tag and name == choices_of.tag and is_tag_field(name, fld):
            kinds = ", ".join(tag_value(m, choices_of.tag) for m in choices_of.models)
            about = model_text(model)
            _line(lines, f"{INDENT * depth}{name}: {fld.default}",
                  f"One of {kinds}. This {name}: {about}" if about else f"One of {kinds}")
            continue
        _render(lines, name, fld, values.get(name, _MISSING), depth=depth)


def render_station_yaml(values: dict, root: type[BaseModel] = StationConfig) -> str:
    """The commented YAML for `values` (a parsed station YAML), every key of `root` included."""
    lines = [HEADER.rstrip("\n")]
    for name, fld in root.model_fields.items():
        lines.append("")
        _render(lines, name, fld, values.get(name, _MISSING), depth=0)
    return "\n".join(lines) + "\n"


def regenerate(text: str, root: type[BaseModel] = StationConfig) -> str:
    """`text` (a station YAML) with its values kept and every comment and missing key regenerated."""
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise TemplateError("the top level must be a mapping")
    return render_station_yaml(values, root)
