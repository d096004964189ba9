"""The probing tasks of SCR and TPP: their texts, the model's activations on them, and the
probes trained on those activations. None of it depends on the SAE, so a prepared task is
cached in-process (`CACHE_BYTES`) and the SAEs of a sweep share it.

A task holds the unique texts of its train and test parts, and per probe ("key") which of
them are its positives and negatives (SAEBench's `prepare_probe_data`):

- SCR, for a class pair (c0, c1) and spurious values (s0, s1), with q = size // 4 texts per
  quadrant: "biased" (c0,s0) vs (c1,s1), 2q each, the two labels perfectly correlated;
  "class" (c0,s0)+(c0,s1) vs (c1,s0)+(c1,s1), q each (the class probe, balanced);
  "spurious" (c0,s0)+(c1,s0) vs (c0,s1)+(c1,s1) (the spurious probe, balanced). The first q
  texts of (c0,s0) and (c1,s1) serve every key, as in SAEBench.
- TPP, for classes c_1..c_K: class i has q texts of each spurious value; probe i's positives are
  its 2q texts, its negatives 2q texts drawn evenly from the other classes (seeded, and fixed
  for a task, where SAEBench redraws them at each accuracy).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.evaluation.datasets.text_acts import TokenActivations, token_activations
from saelab.evaluation.scr_tpp.config import SPURIOUS, ScrTppSettings
from saelab.evaluation.scr_tpp.probes import LinearProbe, train_probe

CACHE_BYTES = 2 * 1024**3
"""Most bytes of model activations kept between SAEs (the oldest task is dropped first)."""


@dataclass
class Part:
    """One part's unique texts and their activations."""

    texts: list[str]
    acts: TokenActivations
    pooled: Tensor
    """`[N, d]` mean over each text's real tokens."""


@dataclass
class ProbeKey:
    """Which texts of each part a probe reads: positives then negatives, and labels."""

    train: np.ndarray
    train_y: Tensor
    test: np.ndarray
    test_y: Tensor


@dataclass
class Task:
    """A prepared task: parts, keys, and the probes trained on the model's activations."""

    train: Part
    test: Part
    keys: dict[str, ProbeKey]
    probes: dict[str, LinearProbe] = field(default_factory=dict)
    source: str = "stand-in"

    def clean_accuracy(self, probe: str, key: str) -> float:
        """Probe `probe`'s test accuracy on the test texts of `key`."""
        k = self.keys[key]
        return self.probes[probe].accuracy(self.test.pooled[k.test], k.test_y)


def quadrant_texts(
    dataset: str, cls: str, spurious: str, n: int, part: str, seed: int, path: str | None
) -> list[str]:
    if dataset == "bios":
        from saelab.evaluation.datasets.bios import bios_texts

        return bios_texts(cls, spurious, n, part=part, seed=seed, path=path)
    from saelab.evaluation.datasets.reviews import review_texts

    return review_texts(cls, spurious, n, part=part, seed=seed, path=path)


def local_copy_kind(path: str) -> str:
    """ "bios" or "reviews": which data set a local copy is, by its columns."""
    from saelab.evaluation.datasets.common import read_table

    columns = set(read_table(path)["train"].columns)
    if {"hard_text", "profession", "gender"} <= columns:
        return "bios"
    if {"text", "category", "rating"} <= columns:
        return "reviews"
    raise UserError(
        f"{path!r} is neither Bias in Bios (hard_text, profession, gender) nor Amazon reviews "
        f"(text, category, rating); it has {', '.join(sorted(map(str, columns)))}"
    )


def _layout(quads: dict[tuple[str, str], list[str]]) -> tuple[list[str], dict]:
    """The unique texts, quadrant after quadrant, and each quadrant's text indices."""
    texts, where = [], {}
    for q, rows in quads.items():
        where[q] = np.arange(len(texts), len(texts) + len(rows))
        texts += rows
    return texts, where


def _part(model, hook: str, texts: list[str], s: ScrTppSettings) -> Part:
    acts = token_activations(
        model, texts, hook, max_length=s.context_length, batch_size=s.llm_batch_size
    )
    return Part(texts, acts, acts.pooled())


def _labelled(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, Tensor]:
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    return np.concatenate([pos, neg]), y


def _build(model, hook, s: ScrTppSettings, quads_of, keys_of, seed: int, source: str) -> Task:
    """`quads_of(part, size)`: quadrant -> texts; `keys_of(part, size, where)`: key ->
    (positive, negative) text indices, given each quadrant's indices `where`."""
    parts, keys = {}, {}
    for part, size in (("train", s.train_size), ("test", s.test_size)):
        texts, where = _layout(quads_of(part, size))
        parts[part] = _part(model, hook, texts, s)
        keys[part] = keys_of(part, size, where)
    task = Task(parts["train"], parts["test"], {}, source=source)
    for i, key in enumerate(keys["train"]):
        train, train_y = _labelled(*keys["train"][key])
        test, test_y = _labelled(*keys["test"][key])
        task.keys[key] = ProbeKey(train, train_y, test, test_y)
        task.probes[key] = train_probe(
            task.train.pooled[train], train_y, task.test.pooled[test], test_y,
            batch_size=s.probe_batch_size, epochs=s.probe_epochs, lr=s.probe_lr,
            l1=s.probe_l1, seed=seed * 1000 + i,
        )  # fmt: skip
    return task


def scr_task(
    model, hook: str, s: ScrTppSettings, dataset: str, pair: tuple[str, str], seed: int,
    path: str | None,
) -> Task:  # fmt: skip
    """The SCR task of one class pair (keys "biased", "class", "spurious")."""
    c0, c1 = pair
    s0, s1 = SPURIOUS[dataset]

    def quads(part, size):
        q = size // 4
        return {
            (c0, s0): quadrant_texts(dataset, c0, s0, 2 * q, part, seed, path),
            (c1, s1): quadrant_texts(dataset, c1, s1, 2 * q, part, seed, path),
            (c0, s1): quadrant_texts(dataset, c0, s1, q, part, seed, path),
            (c1, s0): quadrant_texts(dataset, c1, s0, q, part, seed, path),
        }

    def keys(part, size, where):
        q = size // 4
        first = {quad: idx[:q] for quad, idx in where.items()}
        return {
            "biased": (where[(c0, s0)], where[(c1, s1)]),
            "class": (
                np.concatenate([first[(c0, s0)], first[(c0, s1)]]),
                np.concatenate([first[(c1, s0)], first[(c1, s1)]]),
            ),
            "spurious": (
                np.concatenate([first[(c0, s0)], first[(c1, s0)]]),
                np.concatenate([first[(c0, s1)], first[(c1, s1)]]),
            ),
        }

    key = ("scr", dataset, pair, seed, path)
    return _cached(
        key, model, hook, s, lambda: _build(model, hook, s, quads, keys, seed, path or "stand-in")
    )


def tpp_task(
    model, hook: str, s: ScrTppSettings, dataset: str, classes: tuple[str, ...], seed: int,
    path: str | None,
) -> Task:  # fmt: skip
    """The TPP task of K classes (one key per class, named by it)."""
    s0, s1 = SPURIOUS[dataset]

    def quads(part, size):
        q = size // 4
        return {
            (c, v): quadrant_texts(dataset, c, v, q, part, seed, path)
            for c in classes
            for v in (s0, s1)
        }

    def keys(part, size, where):
        rng = np.random.default_rng([seed, 7, 0 if part == "train" else 1])
        of_class = {c: np.concatenate([where[(c, s0)], where[(c, s1)]]) for c in classes}
        out = {}
        for c in classes:
            pos = of_class[c]
            others = [o for o in classes if o != c]
            take = math.ceil(len(pos) / len(others))
            pool = np.concatenate([rng.permutation(of_class[o])[:take] for o in others])
            out[c] = (pos, rng.permutation(pool)[: len(pos)])
        return out

    key = ("tpp", dataset, tuple(classes), seed, path)
    return _cached(
        key, model, hook, s, lambda: _build(model, hook, s, quads, keys, seed, path or "stand-in")
    )


_CACHE: OrderedDict[tuple, Task] = OrderedDict()


def _cached(key: tuple, model, hook: str, s: ScrTppSettings, build) -> Task:
    probe_fields = (
        s.train_size, s.test_size, s.context_length, s.probe_batch_size, s.probe_epochs,
        s.probe_lr, s.probe_l1,
    )  # fmt: skip
    full = (getattr(model, "weights_sha256", id(model)), hook, probe_fields, *key)
    if full in _CACHE:
        _CACHE.move_to_end(full)
        return _CACHE[full]
    task = build()
    _CACHE[full] = task
    while len(_CACHE) > 1 and sum(_nbytes(t) for t in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)
    return task


def _nbytes(task: Task) -> int:
    return sum(p.acts.acts.numel() * p.acts.acts.element_size() for p in (task.train, task.test))


def clear_cache() -> None:
    _CACHE.clear()
