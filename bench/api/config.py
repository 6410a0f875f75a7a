"""Binding plain YAML mappings onto frozen keyword-only dataclasses, with user-facing errors.

Every component has a ``Config`` dataclass; ``bind`` checks that each key exists and each value has
the declared type, and reports the file and the dotted key when not.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from bench.api.errors import UserError

T = TypeVar("T")
"""A config class (``bind`` returns an instance of the class it is given)."""


def field_docs(config_cls: type) -> dict[str, str]:
    """The docstring of each field (``field(metadata={"doc": ...})``), for ``ls`` and errors."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(config_cls)}


def doc(text: str, default: object = dataclasses.MISSING, *, path: str | None = None, **kwargs: object) -> Any:
    """A dataclass field with its docstring kept in metadata.

    ``path="file"`` marks a local file path, ``path="local-or-hub"`` a local path or a hub name: a
    relative one is resolved from the scenario file's folder (``bench.spec.scenario``).
    """
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    metadata = {"doc": text, **({"path": path} if path else {})}
    return dataclasses.field(metadata=metadata, **kwargs)


MAX_INT = 2**63 - 1
"""Integers beyond a signed 64-bit value are never meaningful here (and overflow torch)."""


class FieldError(ValueError):
    """A ``__post_init__`` check that names its field, so the user sees ``federation.rounds``, not ``federation``."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def check_range(config: object, name: str, low: float, high: float) -> None:
    """Raise ``FieldError`` unless ``low <= config.name <= high`` (the documented range)."""
    value = getattr(config, name)
    if not low <= value <= high:
        raise FieldError(name, f"{name} must be in {low:g}..{high:g}, got {value!r}")


def bind(config_cls: type[T], values: Mapping[str, object] | None, *, file: str | None, key: str) -> T:
    """Build ``config_cls`` from ``values``; unknown keys and wrong types are ``UserError``s."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise UserError(f"expected a mapping of keys to values, got {_shown(values)}", file=file, key=key or None)
    values = dict(values)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted((k for k in values if k not in fields), key=str)
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(fields)) or '(none)'}",
            file=file,
            key=f"{key}.{unknown[0]}" if key else unknown[0],
        )
    hints = typing.get_type_hints(config_cls)
    converted = {}
    for name, value in values.items():
        where = f"{key}.{name}" if key else name
        converted[name] = _coerce(value, hints[name], file=file, key=where)
    missing = [
        name
        for name, f in fields.items()
        if name not in converted and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"missing required key {missing[0]!r}", file=file, key=f"{key}.{missing[0]}" if key else missing[0])
    try:
        return config_cls(**converted)
    except FieldError as error:
        raise UserError(str(error), file=file, key=f"{key}.{error.field}" if key else error.field) from None
    except (ValueError, TypeError) as error:
        raise UserError(str(error), file=file, key=key or None) from None


def _coerce(value: object, hint: object, *, file: str | None, key: str) -> object:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, file=file, key=key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(f"expected {_describe(hint)}, got {_shown(value)}", file=file, key=key)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"expected one of {', '.join(map(repr, args))}, got {_shown(value)}", file=file, key=key)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"expected a list, got {_shown(value)}", file=file, key=key)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, file=file, key=f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping, got {_shown(value)}", file=file, key=key)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"expected true or false, got {_shown(value)}", file=file, key=key)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"expected an integer, got {_shown(value)}", file=file, key=key)
        if abs(value) > MAX_INT:
            raise UserError(f"integer out of range (at most {MAX_INT} in magnitude)", file=file, key=key)
        return value
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf"):
            return float("inf")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"expected a number, got {_shown(value)}", file=file, key=key)
        if isinstance(value, float) and math.isnan(value):
            raise UserError("expected a number, got NaN", file=file, key=key)
        if isinstance(value, int) and abs(value) > MAX_INT:  # a float is any double; each field bounds its range
            raise UserError(f"number out of range (at most {MAX_INT:.3g} in magnitude; .inf where allowed)", file=file, key=key)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"expected a string, got {_shown(value)}", file=file, key=key)
        return value
    if dataclasses.is_dataclass(hint):
        return bind(hint, value, file=file, key=key)
    return value


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` cut short: a user's value may be huge (a long list, an expanded alias)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(hint: object) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # "an int or 'auto'", not "Union"
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
