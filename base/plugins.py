"""Plugins from other installed packages: the entry points of a group, each loaded and
registered, a broken one skipped with a warning so it cannot take a command down."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Container
from typing import Any


def load_plugins(
    group: str, what: str, known: Container[str], register: Callable[[Any], Any]
) -> None:
    """Register the object every entry point of `group` names, unless its name is `known`.
    `what` says what a plugin adds, for the warning ("eval", "architecture")."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.name in known:
            continue
        try:
            register(ep.load())
        except Exception as err:
            warnings.warn(
                f"saelab: the {what} plugin {ep.name!r} ({ep.value}) was skipped: it failed to "
                f"load ({type(err).__name__}: {err})",
                stacklevel=3,
            )
