"""Binding plain YAML mappings onto frozen keyword-only dataclasses, with user-facing errors.

Every component has a ``Config`` dataclass; ``bind`` checks that each key exists and each value has
the declared type, and reports the file and the dotted key when not.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from bench.errors import UserError


def field_docs(config_cls: type) -> dict[str, str]:
    """The docstring of each field (``field(metadata={"doc": ...})``), for ``ls`` and errors."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(config_cls)}


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its docstring kept in metadata."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"doc": text}, **kwargs)


def bind(config_cls: type, values: Mapping[str, Any] | None, *, file: str | None, key: str) -> Any:
    """Build ``config_cls`` from ``values``; unknown keys and wrong types are ``UserError``s."""
    values = dict(values or {})
    if not isinstance(values, dict):
        raise UserError(f"expected a mapping, got {type(values).__name__}", file=file, key=key)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
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
    except (ValueError, TypeError) as error:
        raise UserError(str(error), file=file, key=key) from None


def _coerce(value: Any, hint: Any, *, file: str | None, key: str) -> Any:
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
        raise UserError(f"expected {_describe(hint)}, got {value!r}", file=file, key=key)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"expected one of {', '.join(map(repr, args))}, got {value!r}", file=file, key=key)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"expected a list, got {value!r}", file=file, key=key)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, file=file, key=f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping, got {value!r}", file=file, key=key)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"expected true or false, got {value!r}", file=file, key=key)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"expected an integer, got {value!r}", file=file, key=key)
        return value
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf"):
            return float("inf")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"expected a number, got {value!r}", file=file, key=key)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"expected a string, got {value!r}", file=file, key=key)
        return value
    if dataclasses.is_dataclass(hint):
        return bind(hint, value, file=file, key=key)
    return value


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
