"""RAVEL end to end: ask the model every prompt, keep those it answers correctly, then for each
attribute train a mask on prompt pairs and score it on held-out pairs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from saelab.base.errors import UserError
from saelab.evaluation.ravel.config import RavelSettings
from saelab.evaluation.ravel.entities import EntityTable
from saelab.evaluation.ravel.mask import Pair, hard_mask, intervention_hook, train_mask
from saelab.evaluation.ravel.prompts import (
    Prompt,
    answer_prompts,
    build_prompts,
    greedy,
    is_correct,
    pad_left,
    pad_token,
)
from saelab.evaluation.ravel.scores import Outcomes, attribute_pairs, slug, split_pairs


@dataclass
class RavelRun:
    """What one RAVEL run measured."""

    outcomes: Outcomes
    model_accuracy: dict[str, float]
    """Attribute -> share of its prompts the model answered correctly before filtering."""
    entities: dict[str, int]
    """Attribute -> entities with at least one correctly answered prompt of it."""
    mask_sizes: dict[str, int]
    """Attribute -> latents in its learned mask."""
    n_pairs: dict[str, int] = field(default_factory=dict)
    """Attribute -> prompt pairs (train + test)."""
    empty_mask_isolation: dict[str, float] = field(default_factory=dict)
    """Attribute -> isolation with the empty mask: the SAE's reconstruction (no error term)
    alone at the entity token; the ceiling the learned mask's isolation can reach."""
    n_tokens: int = 0
    """Prompt tokens run through the model (answering, training)."""

    def metrics(self) -> dict[str, float]:
        out = dict(self.outcomes.scores())
        for a in self.model_accuracy:
            out[f"ravel_model_acc_{slug(a)}"] = self.model_accuracy[a]
            out[f"ravel_entities_{slug(a)}"] = float(self.entities[a])
        if self.empty_mask_isolation:
            out["ravel_isolation_empty_mask"] = sum(self.empty_mask_isolation.values()) / len(
                self.empty_mask_isolation
            )
        for a in self.mask_sizes:
            out[f"ravel_mask_size_{slug(a)}"] = float(self.mask_sizes[a])
            out[f"ravel_test_pairs_{slug(a)}"] = float(
                len(self.outcomes.cause[a]) + len(self.outcomes.isolation[a])
            )
        return out


def run_ravel(
    model, hook: str, sae, table: EntityTable, s: RavelSettings, bos: int, device: str = "cpu",
    log=None,
) -> RavelRun:  # fmt: skip
    """RAVEL of `sae` at `hook`; `model` has `.bridge` and `.tokenizer`."""
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    prompts = build_prompts(table, model.tokenizer, bos)
    states = answer_prompts(
        model, hook, prompts, s.n_generated_tokens, s.forward_batch_size, device
    )
    n_tokens = sum(len(p.tokens) for p in prompts) * s.n_generated_tokens
    accuracy = {
        a: _share([p.correct for p in prompts if p.attribute == a]) for a in table.attributes
    }
    keep = [i for i, p in enumerate(prompts) if p.correct]
    kept, states = [prompts[i] for i in keep], states[keep].to(device)
    entities = {a: len({p.entity for p in kept if p.attribute == a}) for a in table.attributes}
    _say(log, f"ravel: asked {len(prompts)} prompts in {time.perf_counter() - t0:.0f}s; "
         f"model accuracy {_fmt(accuracy)}; entities kept {entities}")  # fmt: skip
    for a in table.attributes:
        if len({p.value for p in kept if p.attribute == a}) < 2:
            raise UserError(
                f"the model answered the {a} prompts correctly for fewer than two distinct values "
                f"({entities[a]} entities kept of {len(table.values)}); ask more entities "
                "(--ravel-n-entities) or use other templates"
            )
    outcomes, sizes, n_pairs, empty_iso = Outcomes(), {}, {}, {}
    pad = pad_token(model.tokenizer)
    for a in table.attributes:
        pairs = attribute_pairs(kept, a, table.attributes, s.n_pairs, rng)
        train, test = split_pairs(pairs, s.train_fraction)
        for kind, is_cause in (("cause", True), ("isolation", False)):
            if not any(p.cause == is_cause for p in test):
                # A score of no pairs would be stored as 0 with a (0, 0) interval.
                raise UserError(
                    f"RAVEL: the attribute {a!r} has no {kind} pairs ({len(pairs)} pairs in "
                    "all: too few entities answered correctly with distinct values); raise "
                    "`n_entities` or `n_pairs`"
                )
        batches = [
            _batch(kept, states, train[i : i + s.batch_size], pad, device)
            for i in range(0, len(train), s.batch_size)
        ]
        t1 = time.perf_counter()
        w = train_mask(model.bridge, hook, sae, batches, s.n_epochs, s.learning_rate, device)
        mask = hard_mask(w)
        sizes[a], n_pairs[a] = int(mask.sum()), len(pairs)
        results = score_pairs(model, hook, sae, mask, kept, states, test, s, pad, device)
        outcomes.cause[a] = [ok for pair, ok in zip(test, results, strict=True) if pair.cause]
        outcomes.isolation[a] = [
            ok for pair, ok in zip(test, results, strict=True) if not pair.cause
        ]
        iso_test = [p for p in test if not p.cause]
        empty = score_pairs(
            model, hook, sae, torch.zeros_like(mask), kept, states, iso_test, s, pad, device
        )
        empty_iso[a] = _share(empty)
        n_tokens += sum(len(kept[p.base].tokens) for p in train) * s.n_epochs
        _say(log, f"ravel: {a}: {len(train)} train / {len(test)} test pairs, mask of {sizes[a]} "
             f"latents, cause {_share(outcomes.cause[a]):.3f} isolation "
             f"{_share(outcomes.isolation[a]):.3f}, isolation with the empty mask "
             f"{empty_iso[a]:.3f} ({time.perf_counter() - t1:.0f}s)")  # fmt: skip
    return RavelRun(outcomes, accuracy, entities, sizes, n_pairs, empty_iso, n_tokens)


def _batch(prompts: list[Prompt], states, pairs: list[Pair], pad: int, device: str):
    tokens, attention, offsets = pad_left([prompts[p.base].tokens for p in pairs], pad, device)
    pos = offsets + torch.tensor([prompts[p.base].entity_pos for p in pairs], device=device)
    source = states[[p.source for p in pairs]]
    target = torch.tensor([p.target_token for p in pairs], device=device)
    return tokens, attention, pos, source, target


@torch.no_grad()
def score_pairs(model, hook, sae, mask, prompts, states, pairs, s, pad, device) -> list[bool]:
    """Whether the model, with the hard mask's intervention, generates each pair's expected
    value (SAEBench's `generate_batched_interventions` and `evaluate_completion`)."""
    out: list[bool] = []
    for i in range(0, len(pairs), s.forward_batch_size):
        chunk = pairs[i : i + s.forward_batch_size]
        tokens, attention, pos, source, _ = _batch(prompts, states, chunk, pad, device)
        edit = intervention_hook(sae, mask, source, pos)
        new = greedy(model.bridge, tokens, attention, s.n_generated_tokens, [(hook, edit)])
        for pair, ids in zip(chunk, new.tolist(), strict=True):
            out.append(is_correct(pair.target_value, model.tokenizer.decode(ids)))
    return out


def _share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in d.items())


def _say(log, message: str) -> None:
    if log is not None:
        log(message)


def conventions(s: RavelSettings, table: EntityTable, run: RavelRun) -> dict[str, Any]:
    """Settings and conventions stored with the run."""
    from dataclasses import asdict

    return {
        **asdict(s),
        "attributes": list(s.attributes),
        "source": table.source,
        "n_candidate_entities": len(table.values),
        "templates": table.templates,
        "pairs": run.n_pairs,
        "mask": "SAEBench 0.6 code: binary mask over latents, sigmoid(w/T) with T annealed 1 -> "
        "1e-4, hard mask w > 0 at evaluation",
        "intervention": "f' = (1-m) f_base + m f_source at the entity's last token, decoded "
        "without the error term",
        "interval": f"95% percentile bootstrap over the held-out prompt pairs ({s.n_bootstrap} "
        "resamples; masks fixed, so training variance is not included)",
    }
