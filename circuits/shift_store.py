"""A SHIFT result as the results store's rows (`resultstore/shift.py` writes them)."""

from __future__ import annotations

import json

from saelab import resultstore as results
from saelab.base import __version__


def store_shift(store, result, spliced, model, data_hash: str, config: dict, interval: str) -> str:
    """Write a `ShiftResult` (config, accuracies with intervals, every candidate and its
    verdict); `config` is the run's config as stored (without paths and display settings)."""
    from saelab.circuits.run import _records

    records = _records(spliced, model)
    sae_ids = [records[h].sae_id for h in spliced.hooks if h in records]
    chash = results.config_hash(config)
    rid = results.shift_run_id(chash, data_hash, sae_ids, model.weights_sha256)
    accuracies = [
        results.ShiftAccuracyRow(
            rid, a.method, a.label, a.accuracy, a.ci_low, a.ci_high, a.n_ablated
        )
        for a in result.accuracies
    ]
    rank: dict[str, int] = {}
    features = []
    for f in result.features:
        r = rank[f.kind] = rank.get(f.kind, -1) + 1
        v = f.verdict
        features.append(results.ShiftFeatureRow(
            run_id=rid, kind=f.kind, rank=r, hook=f.hook, sae_id=f.sae_id, feature=f.feature,
            effect=f.effect, spurious=f.spurious, judge=v.judge, corr_gender=v.corr_gender,
            corr_profession=v.corr_profession, description=v.description or None,
            answer=v.answer or None,
        ))  # fmt: skip
    run = results.ShiftRunRow(
        run_id=rid, model=model.name, model_sha256=model.weights_sha256, sae_ids=sae_ids,
        hooks=list(spliced.hooks), probe_hook=result.probe_hook,
        professions=list(result.config.professions), data_source=result.data_source,
        data_hash=data_hash, judge=result.judge,
        n_candidates=sum(f.kind == "latent" for f in result.features),
        n_ablated=len(result.ablated), n_train=result.n_texts["biased_train"],
        n_test=result.n_texts["test"], train_accuracy=result.train_accuracy, interval=interval,
        config_json=json.dumps(config, default=str), config_hash=chash, seconds=result.seconds,
        saelab_version=__version__,
    )  # fmt: skip
    return results.write_shift(store, run, accuracies, features, list(records.values()))
