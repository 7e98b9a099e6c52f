"""``key=value`` overrides of an experiment's config dataclass, parsed to each field's type.

Supported field types: ``int`` (``10``, ``1e4``, ``100_000``), ``float``, ``bool`` (``true``/
``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``), ``str``, ``Literal[...]``, optional
types (``none`` gives ``None``), and tuples or lists of those, written comma-separated
(``eps_rel=1,0.1,0.01``; an empty value gives an empty sequence).

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     n: int = 10
    ...     eps: tuple[float, ...] = (1.0,)
    ...     verbose: bool = False
    >>> apply_overrides(Config(), ["n=64", "eps=0.1,0.01", "verbose=yes"])
    Config(n=64, eps=(0.1, 0.01), verbose=True)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["OverrideError", "apply_overrides", "config_fields", "parse_value"]

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f"}
_NONE = {"none", "null"}


class OverrideError(ValueError):
    """A ``key=value`` override names no config field, or its value does not parse."""


def _type_name(tp: Any) -> str:
    """``int``, ``tuple[float, ...]``, ``int | None``: the annotation as written."""
    if typing.get_args(tp) or not hasattr(tp, "__name__"):
        return str(tp).replace("typing.", "")
    return tp.__name__


def _parse_int(text: str) -> int:
    try:
        return int(text.replace("_", ""), 10)
    except ValueError:
        pass
    number = float(text)  # "1e4" is an int written in scientific notation
    if not (math.isfinite(number) and number == int(number)):
        raise ValueError(f"{text!r} is not an integer")
    return int(number)


def parse_value(text: str, tp: Any) -> Any:
    """Parse ``text`` as a value of type ``tp`` (a resolved annotation).

    Raises:
        ValueError: if ``text`` is not a valid ``tp``.
        TypeError: if ``tp`` is a type this parser does not handle.
    """
    text = text.strip()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in _NONE:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) + (" (or none)" if type(None) in args else ""))
    if origin is typing.Literal:
        for option in args:
            if str(option) == text:
                return option
        raise ValueError(f"{text!r} is not one of {list(args)}")
    if origin in (tuple, list):
        items = [] if text == "" else [t.strip() for t in text.split(",")]
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(items)}")
            parsed = [parse_value(t, a) for t, a in zip(items, args, strict=True)]
        else:
            item_type = args[0] if args else str
            parsed = [parse_value(t, item_type) for t in items]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a bool (use true/false)")
    if tp is int:
        return _parse_int(text)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if tp is str:
        return text
    if tp is Any:
        return text
    raise TypeError(f"fields of type {_type_name(tp)} cannot be set from the command line")


def config_fields(config_type: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass (``init`` fields only)."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type) if f.init}


def apply_overrides(config: Any, assignments: Sequence[str]) -> Any:
    """Return a copy of dataclass ``config`` with ``key=value`` assignments applied.

    Dashes in keys may stand for underscores (``max-iter=100``); a later assignment of the same
    key wins. The new config goes through the dataclass's ``__post_init__``, so its own
    validation applies.

    Args:
        config: a dataclass instance.
        assignments: strings ``"key=value"``.

    Raises:
        OverrideError: for a malformed assignment, an unknown key, a value that does not parse
            to the field's type, or a value the config rejects. The message says which.
    """
    fields = config_fields(type(config))
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OverrideError(f"expected key=value, got {assignment!r}.")
        if key not in fields:
            raise OverrideError(
                f"unknown config key {key!r} for {type(config).__name__}; valid keys: "
                f"{', '.join(fields)}."
            )
        try:
            changes[key] = parse_value(text, fields[key])
        except (ValueError, TypeError) as exc:
            raise OverrideError(
                f"cannot set {key}={text!r}: {exc} (expected {_type_name(fields[key])})."
            ) from None
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as exc:
        raise OverrideError(f"invalid {type(config).__name__}: {exc}") from None
