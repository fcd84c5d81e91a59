"""Reading the station's pydantic config models as documentation: type, default, bounds and text of each key.

One source for every place a key is explained: `station.config_reference` renders these into
docs/config-reference.md and `station.config_template` into the comments of config/station.yaml.
Everything comes from the models themselves (field descriptions, defaults, `ge`/`le`/length/pattern
constraints, `Literal` choices, discriminated unions, model and validator docstrings), so a field
added to any section shows up in both without touching this module.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Shape:
    """What a field holds: plain values, one model, or one of several models chosen by a tag key."""

    models: tuple[type[BaseModel], ...] = ()   # the models it may hold (one, or a union's members)
    tag: str | None = None                     # the discriminator key of a union ("kind", "transport")
    optional: bool = False                     # null allowed
    container: str | None = None               # "list" or "mapping" of plain values


def unwrap(annotation: Any) -> tuple[Any, FieldInfo | None]:
    """Strip Annotated[...]; return the bare type and a FieldInfo found in its metadata (discriminator)."""
    info = None
    while typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        annotation = args[0]
        info = next((a for a in args[1:] if isinstance(a, FieldInfo)), info)
    return annotation, info


def _union_args(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return None


def shape_of(field: FieldInfo) -> Shape:
    annotation, inner = unwrap(field.annotation)
    optional = False
    members = _union_args(annotation)
    if members is not None and type(None) in members:
        optional = True
        rest = tuple(m for m in members if m is not type(None))
        annotation, inner2 = unwrap(rest[0] if len(rest) == 1 else Union[rest])  # type: ignore[valid-type]
        inner = inner2 or inner
        members = _union_args(annotation)
    tag = field.discriminator or (inner.discriminator if inner is not None else None)
    if members is not None and all(_is_model(unwrap(m)[0]) for m in members):
        return Shape(models=tuple(unwrap(m)[0] for m in members), tag=tag, optional=optional)
    if _is_model(annotation):
        return Shape(models=(annotation,), optional=optional)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set):
        return Shape(optional=optional, container="list")
    if origin is dict:
        return Shape(optional=optional, container="mapping")
    return Shape(optional=optional)


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def tag_value(model: type[BaseModel], tag: str) -> str:
    """The value of a union member's tag field (its `Literal` kind)."""
    annotation, _ = unwrap(model.model_fields[tag].annotation)
    return str(typing.get_args(annotation)[0])


def is_tag_field(name: str, field: FieldInfo) -> bool:
    """A union member's own tag (`kind: Literal['aravis']`): it selects the model and needs no text."""
    annotation, _ = unwrap(field.annotation)
    return typing.get_origin(annotation) is Literal and len(typing.get_args(annotation)) == 1 \
        and field.default == typing.get_args(annotation)[0]


def type_text(field: FieldInfo) -> str:
    """A short plain-language type: `a` | `b`, integer, number, text, path, true/false, list of ..."""
    annotation, _ = unwrap(field.annotation)
    nullable = False
    members = _union_args(annotation)
    if members is not None and type(None) in members:
        nullable = True
        rest = [m for m in members if m is not type(None)]
        annotation = unwrap(rest[0])[0] if len(rest) == 1 else annotation
    text = _plain_type(annotation)
    return f"{text}, or null" if nullable else text


def _plain_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        return f"list of {_plain_type(args[0]) if args else 'values'}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping of {_plain_type(key)} to {_plain_type(value)}"
    names = {bool: "true/false", int: "integer", float: "number", str: "text", Path: "path"}
    if annotation in names:
        return names[annotation]
    if _is_model(annotation):
        return "section"
    members = _union_args(annotation)
    if members is not None:
        return " or ".join(_plain_type(unwrap(m)[0]) for m in members)
    return getattr(annotation, "__name__", str(annotation))


def number_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def bounds_text(field: FieldInfo, *, compact: bool = False) -> str:
    """The field's constraints in words: `>= 1, <= 3600` (compact: `1..3600`), `1-64 characters`, `matches ...`."""
    low = high = pattern = None
    min_len = max_len = None
    for meta in field.metadata:
        if isinstance(meta, at.Ge):
            low = (">=", meta.ge)
        elif isinstance(meta, at.Gt):
            low = (">", meta.gt)
        elif isinstance(meta, at.Le):
            high = ("<=", meta.le)
        elif isinstance(meta, at.Lt):
            high = ("<", meta.lt)
        elif isinstance(meta, at.MinLen):
            min_len = meta.min_length
        elif isinstance(meta, at.MaxLen):
            max_len = meta.max_length
        elif getattr(meta, "pattern", None):
            pattern = meta.pattern
    parts: list[str] = []
    if max_len is not None:
        parts.append(f"{min_len or 0}-{max_len} characters")
    elif min_len:
        parts.append("not empty" if min_len == 1 else f"at least {min_len} characters")
    if compact and low and high and low[0] == ">=" and high[0] == "<=":
        parts.append(f"{number_text(low[1])}..{number_text(high[1])}")
    else:
        sep = "" if compact else " "
        parts += [f"{bound[0]}{sep}{number_text(bound[1])}" for bound in (low, high) if bound]
    if pattern:
        parts.append(f"matches {pattern}" if compact else f"matches `{pattern}`")
    return ", ".join(parts)


def choices(field: FieldInfo) -> tuple[Any, ...]:
    """The allowed values of a `Literal` field (nullable or not); () for any other type."""
    annotation, _ = unwrap(field.annotation)
    members = _union_args(annotation)
    if members is not None:
        rest = [m for m in members if m is not type(None)]
        annotation = unwrap(rest[0])[0] if len(rest) == 1 else annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def default_value(field: FieldInfo) -> Any:
    """The default as a plain value (models dumped to mappings); PydanticUndefined when required."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    return value


def is_required(field: FieldInfo) -> bool:
    return field.default is PydanticUndefined and field.default_factory is None


def model_text(model: type[BaseModel]) -> str:
    """A model's docstring as one paragraph ('' when it has none of its own)."""
    doc = model.__doc__ if "__doc__" in vars(model) else None
    return " ".join((doc or "").split())


def validator_texts(model: type[BaseModel]) -> list[str]:
    """Docstrings of the model's validators, inherited ones included (their base classes are not
    documented on their own): the rules that a schema type alone does not say."""
    texts = []
    decorators = model.__pydantic_decorators__
    for group in (decorators.model_validators, decorators.field_validators):
        for decorator in group.values():
            doc = inspect.getdoc(decorator.func)
            if doc and " ".join(doc.split()) not in texts:
                texts.append(" ".join(doc.split()))
    return texts


def undocumented_fields(root: type[BaseModel]) -> list[str]:
    """Dotted paths of fields that lack a description (tags excepted), over every model reachable."""
    missing: list[str] = []
    seen: set[type[BaseModel]] = set()

    def visit(model: type[BaseModel], path: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            if not is_tag_field(name, field) and not (field.description or "").strip():
                missing.append(f"{key} ({model.__name__})")
            for sub in shape_of(field).models:
                visit(sub, key)

    visit(root, "")
    return missing
