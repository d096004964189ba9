"""Run SCR or TPP for one SAE: every repetition × data set × class pair (or class set), scored,
averaged over the tasks of a repetition, then over the repetitions with a 95% t-interval."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from saelab.base.errors import UserError
from saelab.evaluation.scr_tpp.config import (
    SCR_PAIRS,
    SPURIOUS,
    TPP_CLASSES,
    ScrSettings,
    ScrTppSettings,
    TppSettings,
)
from saelab.evaluation.scr_tpp.effects import pooled_latents
from saelab.evaluation.scr_tpp.scores import mean_over, scr_scores, summarise, tpp_scores
from saelab.evaluation.scr_tpp.tasks import local_copy_kind, scr_task, tpp_task
from saelab.evaluation.spec import EvalResult


def dataset_paths(s: ScrTppSettings) -> dict[str, str | None]:
    """Each chosen data set -> its local copy's path, or None for the stand-in."""
    paths: dict[str, str | None] = {name: None for name in s.datasets}
    if s.dataset:
        kind = local_copy_kind(s.dataset)
        if kind not in paths:
            raise UserError(
                f"the local copy {s.dataset!r} is {kind}, which `datasets` "
                f"({', '.join(s.datasets)}) leaves out; add {kind}"
            )
        paths[kind] = s.dataset
    return paths


def evaluate_scr_tpp(sae, model, hook: str, s: ScrTppSettings, log=None) -> EvalResult:
    """SCR for `ScrSettings`, TPP for `TppSettings`."""
    scr = isinstance(s, ScrSettings)
    if not scr and not isinstance(s, TppSettings):
        raise TypeError(f"expected ScrSettings or TppSettings, got {type(s).__name__}")
    s.validate()
    if model is None:
        raise UserError("SCR and TPP run the language model; none is loaded")
    n_values = sorted({n for n in s.n_values if n <= sae.d_sae})
    if not n_values:
        raise UserError(
            f"every n of n_values ({', '.join(map(str, s.n_values))}) is above the SAE's "
            f"{sae.d_sae} latents; give smaller ones"
        )
    paths = dataset_paths(s)
    W_dec = sae.W_dec.detach().float().cpu()
    per_repeat, per_dataset, n_tokens, t0 = [], {}, 0, time.perf_counter()
    for r in range(s.repeats):
        seed = s.seed + r
        rows = []
        for dataset, path in paths.items():
            if scr:
                groups = [("scr", pair) for pair in SCR_PAIRS[dataset][: s.pairs]]
            else:
                groups = [("tpp", TPP_CLASSES[dataset][: s.classes])]
            for kind, classes in groups:
                if kind == "scr":
                    task = scr_task(model, hook, s, dataset, classes, seed, path)
                else:
                    task = tpp_task(model, hook, s, dataset, classes, seed, path)
                f_train = pooled_latents(sae, task.train.acts, s.sae_batch_size)
                f_test = pooled_latents(sae, task.test.acts, s.sae_batch_size)
                score = scr_scores if scr else tpp_scores
                row = score(task, f_train, f_test, W_dec, n_values)
                rows.append(row)
                per_dataset.setdefault(dataset, []).append(row)
                n_tokens += len(task.train.acts.acts) + len(task.test.acts.acts)
                if log:
                    log(f"{'scr' if scr else 'tpp'} repeat {r} {dataset} {'/'.join(classes)}: "
                        f"{time.perf_counter() - t0:.0f}s")  # fmt: skip
        per_repeat.append(mean_over(rows))
    metrics, intervals = summarise(per_repeat)
    conventions = {
        **asdict(s),
        "n_values_run": n_values,
        "data": {d: (p or "stand-in") for d, p in paths.items()},
        "spurious_values": {d: list(SPURIOUS[d]) for d in paths},
        "interval": f"95% Student-t over {s.repeats} repetitions (seeds {s.seed}..{s.seed + s.repeats - 1}: new texts and probe seeds each)",
        "per_dataset": {d: mean_over(rows) for d, rows in per_dataset.items()},
        "per_repeat": per_repeat,
        "definition": "SAEBench 0.6 evals/scr_and_tpp",
        "deviations": [
            "ablation means over real tokens only (SAEBench also sums decoded BOS/padding positions)",
            "TPP test negatives drawn once per task (SAEBench redraws them at each accuracy)",
            "SCR headline on a tie of the biased probe's two accuracies: dir1 (SAEBench: unset)",
        ],
        "seconds_per_repeat": (time.perf_counter() - t0) / s.repeats,
    }
    conventions["tasks_per_repeat"] = int(
        np.sum([len(v) for v in per_dataset.values()]) // s.repeats
    )
    return EvalResult(metrics, int(n_tokens), conventions, intervals=intervals)
