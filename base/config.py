"""Field checks every dataclass config runs on construction (`__post_init__`), so a value of the
wrong type gives the same one-line `UserError` from the command line and from `import saelab`,
before any work, instead of a TypeError deep inside.

The check reads each field's annotation: `int`, `float`, `str`, `bool`, `list[T]`, `tuple[T,
...]`, `dict`, `Literal[...]`, `X | None`, and nested dataclass configs. It converts only where
nothing can be lost: a whole-number float for an int field (16.0 -> 16, never 16.5), a path for a
str field, a tuple for a list field and a list for a tuple field, a dict for a nested config.
Fields it cannot read (`Any`, callables, objects) are left alone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from functools import cache
from typing import Any, Literal, Union

from saelab.base.errors import UserError

_MISSING = object()


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(cfg: Any) -> None:
    """Check and normalise every field of the dataclass instance `cfg` in place."""
    owner = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        hint = _hints(type(cfg)).get(f.name, Any)
        value = getattr(cfg, f.name)
        fixed = convert(value, hint, f.name, owner)
        if fixed is not value:
            object.__setattr__(cfg, f.name, fixed)


def convert(value: Any, hint: Any, field: str, owner: str) -> Any:
    """`value` as `hint` wants it, or a UserError naming the field, its type and the value."""
    out = _convert(value, hint)
    if out is _MISSING:
        raise UserError(f"`{field}` must be {describe(hint)}, got {_show(value)} ({owner})")
    return out


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            out = _convert(value, option)
            if out is not _MISSING:
                return out
        return _MISSING
    if hint is type(None):
        return value if value is None else _MISSING
    if origin is Literal:
        return value if value in typing.get_args(hint) else _MISSING
    if hint is bool:
        return value if isinstance(value, bool) else _MISSING
    if hint is int:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        return _MISSING
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return _MISSING
        return value if isinstance(value, (int, float)) else float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        return os.fspath(value) if isinstance(value, os.PathLike) else _MISSING
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _MISSING
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return _MISSING
            items = [_convert(v, a) for v, a in zip(value, args)]
        else:
            items = [_convert(v, args[0] if args else Any) for v in value]
        if any(item is _MISSING for item in items):
            return _MISSING
        kind = tuple if (origin or hint) is tuple else list
        if kind is type(value) and all(a is b for a, b in zip(items, value)):
            return value
        return kind(items)
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _MISSING
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(hint)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise UserError(
                    f"unknown field(s) {', '.join(unknown)} for {hint.__name__}; "
                    f"known: {', '.join(sorted(known))}"
                )
            return hint(**value)
        return _MISSING
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _MISSING
    return value


def describe(hint: Any) -> str:
    """The type in words, for messages and help texts."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(describe(a) for a in options)
        return f"{text} or None" if len(options) < len(typing.get_args(hint)) else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_plural(args[0])}" if args else "a list"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a {hint.__name__}"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    names = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}
    return names.get(hint, describe(hint))


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    simple = (bool, int, float, str, type(None))
    return text if isinstance(value, simple) else f"{text}, a {type(value).__name__}"


def check_device(device: str, owner: str = "--device") -> None:
    """A UserError unless `device` names a torch device this machine has (cpu, cuda[:i], mps...).

    torch is imported here, not at module level, so configs stay cheap to build for `--help`.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"{owner} {device!r} is not a torch device: use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"{owner} {device!r} asks for a GPU, but this torch build or machine has no CUDA "
                "device; use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(
                f"{owner} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{owner} {device!r}: MPS is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps", "meta"):
        backend = getattr(torch, parsed.type, None)
        is_available = getattr(backend, "is_available", None)
        if is_available is None or not is_available():
            raise UserError(f"{owner} {device!r}: no {parsed.type} device here; use --device cpu")
