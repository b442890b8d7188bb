"""Editor fields derived from a pydantic model, so every option of a rule, target or module
is editable without a hand-written form per type (the browser sends them back as JSON)."""

import types
import typing
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Kind = Literal["text", "bool", "number", "list", "json", "choice"]


@dataclass(frozen=True, kw_only=True)
class FormField:
    name: str
    kind: Kind
    value: Any
    choices: tuple[str, ...] = ()
    description: str = ""
    required: bool = False
    nullable: bool = False


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    origin = typing.get_origin(annotation)
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if len(arguments) == 1:
            return _kind(arguments[0])
        return "json", ()
    if origin is Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "bool", ()
    if annotation in (int, float):
        return "number", ()
    if origin is list and arguments == [str]:
        return "list", ()
    if origin in (list, dict) or annotation in (list, dict):
        return "json", ()
    return "text", ()


def _field(name: str, info: FieldInfo, value: Any) -> FormField:
    kind, choices = _kind(info.annotation)
    return FormField(
        name=name,
        kind=kind,
        value=value,
        choices=choices,
        description=info.description or "",
        required=info.is_required(),
        nullable=type(None) in typing.get_args(info.annotation),
    )


def form_fields(
    model: type[BaseModel],
    values: Mapping[str, Any] | None = None,
    *,
    exclude: Set[str] = frozenset(),
) -> list[FormField]:
    """One field per model field, holding the current value (or the default)."""
    current = values or {}
    fields = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        if name in current:
            value = current[name]
        elif info.is_required():
            value = None
        else:
            value = info.get_default(call_default_factory=True)
        fields.append(_field(name, info, value))
    return fields
