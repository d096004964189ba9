"""Binary labels for probing: from any values, from a `datasets` column, or from a store's corpus.

A probing task is binary: `y` is True for the positive class. Labels with more than two values
become one-vs-rest tasks by naming the positive value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saelab.base.errors import UserError


@dataclass(frozen=True)
class BinaryLabels:
    """One binary label per example."""

    y: np.ndarray
    """Bool `[N]`: True for the positive class."""
    classes: tuple[str, str]
    """(negative, positive) class names."""
    task: str
    """A readable name of the task, recorded with the result."""


def binary_labels(
    values: Sequence[Any] | np.ndarray,
    positive: Any = None,
    task: str = "",
    names: list[str] | None = None,
) -> BinaryLabels:
    """Binary labels from arbitrary label values.

    With `positive` None the values must take exactly two distinct values; the larger one (in
    sorted order) is positive. Otherwise `positive` is the positive class and every other value is
    negative ("rest"). `names` maps integer values to class names (a `ClassLabel`'s names).
    """
    values = np.asarray(values)
    if values.ndim != 1 or len(values) == 0:
        raise UserError(f"labels must be a non-empty 1-d sequence, got shape {values.shape}")

    def name(v: Any) -> str:
        return names[int(v)] if names is not None else str(v)

    distinct = np.unique(values)
    if positive is None:
        if len(distinct) != 2:
            raise UserError(
                f"labels take {len(distinct)} distinct values ({', '.join(name(v) for v in distinct[:6])}"
                f"{', ...' if len(distinct) > 6 else ''}); name the positive class for a one-vs-rest task"
            )
        negative, positive = distinct
        classes = (name(negative), name(positive))
    else:
        if names is not None and isinstance(positive, str):
            if positive not in names:
                raise UserError(f"no class {positive!r}; the classes are: {', '.join(names)}")
            positive = names.index(positive)
        if positive not in distinct:
            raise UserError(f"no example has the positive label {name(positive)!r}")
        if len(distinct) == 1:
            raise UserError(f"every example has label {name(positive)!r}: nothing to classify")
        rest = [name(v) for v in distinct if v != positive]
        classes = (rest[0] if len(rest) == 1 else "rest", name(positive))
    y = values == positive
    return BinaryLabels(y=y, classes=classes, task=task or f"{classes[1]} vs {classes[0]}")


def dataset_labels(dataset, label_column: str, positive: Any = None) -> BinaryLabels:
    """Binary labels from a column of a `datasets.Dataset` (one example per row).

    A `ClassLabel` column's integer values are named by its class names, and `positive` may be a
    name. The activations probed against these labels must have one row per dataset row, in order.
    """
    if label_column not in dataset.column_names:
        raise UserError(
            f"dataset has no column {label_column!r} (columns: {', '.join(dataset.column_names)})"
        )
    feature = dataset.features.get(label_column)
    names = list(feature.names) if hasattr(feature, "names") else None
    labels = binary_labels(dataset[label_column], positive, names=names)
    return BinaryLabels(labels.y, labels.classes, f"{label_column}: {labels.task}")


def store_column_labels(
    store, column: str = "source", positive: str | None = None
) -> tuple[BinaryLabels, np.ndarray]:
    """Per-sequence labels from a column of the store's corpus, and each sequence's document.

        Returns (labels over all `n_seq` sequences of the store, document row of each sequence).
        Any `datasets` dataset or local file with a label column works: harvest it, then probe that
        column. The builtin corpus's `source` column names four sources; unless `positive` says
    otherwise its task is speeches vs the rest (version 2 stores: wikipedia vs news).
    """
    from saelab.activations import builtin_corpus
    from saelab.activations.corpus import load_corpus

    attrs = store.attrs
    dataset = load_corpus(
        attrs["dataset"],
        attrs.get("split", "train"),
        attrs.get("text_column", "text"),
        attrs.get("builtin_version"),
    )
    if column not in dataset.column_names:
        raise UserError(
            f"the store's corpus {attrs['dataset']!r} has no column {column!r} "
            f"(columns: {', '.join(dataset.column_names)}); choose one as the `probe_column`"
        )
    docs = np.asarray(store.group["doc"][:], dtype=np.int64)
    feature = dataset.features.get(column)
    names = list(feature.names) if hasattr(feature, "names") else None
    values = np.asarray(dataset[column], dtype=object)[docs]
    if names is None:
        values = values.astype(str)
    if len(np.unique(values)) < 2:
        raise UserError(
            f"the store's corpus {attrs['dataset']!r} has a single {column!r} value: nothing to "
            "probe; probe your own labels with saelab.evaluation.probing.probes.probe_activations"
        )
    if (
        positive is None
        and column == "source"
        and _is_builtin(attrs)
        and len(np.unique(values)) > 2
    ):
        positive = builtin_corpus.PROBE_POSITIVE
    labels = binary_labels(values, positive, names=names)
    return BinaryLabels(labels.y, labels.classes, f"{column}: {labels.task}"), docs


def _is_builtin(attrs) -> bool:
    return attrs["dataset"] == "builtin" and (attrs.get("builtin_version") or 0) >= 3
