"""argparse types for counts: `1e6`, `200_000` and `200000` all mean a whole number."""

from __future__ import annotations

import argparse
import math


def count(text: str) -> int:
    """A whole number, also written in scientific notation (`--tokens 2e5`)."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)
