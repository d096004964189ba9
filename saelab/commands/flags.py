"""Command-line flags generated from the dataclass configs, so a config field and its flag are
written once: the flag's type, choices and default come from the field's annotation and default,
its help from the docstring under the field.

`add_fields(parser, Config, ...)` adds one flag per field; `given(args, fields)` reads back the
ones the user gave, to build the config with (fields not given keep the config's defaults). A
bool field defaulting to False becomes `--field`, one defaulting to True `--no-field`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, Union

UNSET = None
"""What a flag holds when not given (its config field then keeps its default)."""


def count(text: str) -> int:
    """A whole number, also written in scientific notation or with underscores (`2e5`,
    `200_000`)."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


@dataclass
class Flag:
    """One generated flag: which config field it sets."""

    field: str
    """The config field (for a shared flag, "config.field")."""
    dest: str
    """Where argparse keeps its value."""
    flag: str
    """The flag as typed (`--loss-sequences`)."""


def add_fields(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
    helps: dict[str, str] | None = None,
    choices: dict[str, Any] | None = None,
    prefix: str = "",
    required: tuple[str, ...] = (),
    hide_default: tuple[str, ...] = (),
) -> list[Flag]:
    """Add a flag for each field of the dataclass `cls` (`only` those, none of `skip`).

    `names` renames a field's flag (e.g. {"n_prompts": "--prompts"}); `prefix` goes before
    every generated name (`--loss-` + `sequences`); `helps` replaces a docstring; `choices`
    lists a text field's allowed values; `required` fields must be given; `hide_default`
    fields do not show their default (their help says it). Returns the flags, for `given`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or (only is not None and f.name not in only):
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        hint = _strip_optional(hints[f.name])
        named = (names or {}).get(f.name)
        flag = named or f"--{prefix}{f.name.replace('_', '-')}"
        dest = f"{prefix.replace('-', '_')}{f.name}"
        doc = (helps or {}).get(f.name) or docs.get(f.name, "")
        kwargs: dict[str, Any] = {"dest": dest, "default": UNSET}
        if hint is bool:
            if default is True and not named and not flag.startswith("--no-"):
                flag = "--no-" + flag[2:]
                doc = f"turn off (on by default): {doc}" if doc else "turn off (on by default)"
            kwargs["action"] = "store_false" if default is True else "store_true"
            kwargs["default"] = UNSET
        else:
            kwargs.update(_value_kwargs(hint))
            if choices and f.name in choices:
                kwargs["choices"] = list(choices[f.name])
                kwargs.pop("metavar", None)
            shown = _shown(default)
            if shown is not None and f.name not in required and f.name not in hide_default:
                doc = f"{doc} (default {shown})" if doc else f"default {shown}"
            if f.name in required:
                kwargs["required"] = True
        action = parser.add_argument(flag, help=doc.replace("%", "%%") or None, **kwargs)
        action.fields = (f.name,)  # `in_command_terms` names this flag for the field
        flags.append(Flag(f.name, dest, flag))
    return flags


def add_shared(parser: Any, owners: dict[str, list[tuple[str, type]]]) -> list[Flag]:
    """Flags that set a same-named field of several configs at once, declared by the fields
    (`field(metadata={"flag": "--split"})`). `owners`: config name -> [(prefix, class)].
    Returns one `Flag` per (flag, config) pair; its `field` is "config.field"."""
    found: dict[str, list[tuple[str, str, Any, str]]] = {}
    for name, classes in owners.items():
        for prefix, cls in classes:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if "flag" in f.metadata:
                    found.setdefault(f.metadata["flag"], []).append(
                        (name, f.name, hints[f.name], prefix)
                    )
    flags = []
    for flag, members in found.items():
        dest = "shared_" + flag.lstrip("-").replace("-", "_")
        hint = _strip_optional(members[0][2])
        specific = ", ".join(f"--{p}{f.replace('_', '-')}" for _, f, _, p in members)
        kwargs = _value_kwargs(hint)
        if kwargs.get("metavar") is None and "choices" not in kwargs:
            kwargs["metavar"] = members[0][1].upper()
        action = parser.add_argument(
            flag, dest=dest, default=UNSET, help=f"sets {specific} at once", **kwargs
        )
        action.fields = tuple(f for _, f, _, _ in members)
        flags += [Flag(f"{name}.{field}", dest, flag) for name, field, _, _ in members]
    return flags


def _value_kwargs(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = typing.get_args(hint)
        return {"choices": list(values), "metavar": None, "type": type(values[0])}
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        inner = _strip_optional(args[0]) if args else str
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        item = _value_kwargs(inner)
        return {
            "nargs": len(args) if fixed else "+",
            "action": _Items,
            "metavar": item.get("metavar"),
            "type": item.get("type", str),
        }
    if hint is int:
        return {"type": count, "metavar": "N"}
    if hint is float:
        return {"type": float, "metavar": "X"}
    return {"type": str}


class _Items(argparse.Action):
    """A list flag: values separated by spaces or commas (`--prefix-sizes 64,256 1024`)."""

    def __init__(self, option_strings, dest, type=str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.item_type = type

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for value in values:
            for part in str(value).split(","):
                if part.strip():
                    try:
                        items.append(self.item_type(part.strip()))
                    except (argparse.ArgumentTypeError, ValueError) as err:
                        parser.error(f"argument {option_string}: {err}")
        setattr(namespace, self.dest, items)


def _shown(default: Any) -> str | None:
    if default is None or default is dataclasses.MISSING:
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default) if default else None
    if isinstance(default, bool) or dataclasses.is_dataclass(default):
        return None
    return str(default)


def given(args: argparse.Namespace, flags: list[Flag]) -> dict[str, Any]:
    """{field: value} of the generated flags the user gave."""
    out = {}
    for f in flags:
        value = getattr(args, f.dest, UNSET)
        if value is not UNSET:
            out[f.field] = value
    return out
