"""Turn feature statistics and logit effects into the store's per-feature tables (Arrow)."""

from __future__ import annotations

import numpy as np

from saelab.evaluation.core.reconstruction import DENSE_THRESHOLD
from saelab.evaluation.features.logits import LogitEffects
from saelab.evaluation.features.stats import HIST_EDGES, FeatureStats, _RunningTop


def _list_column(values: np.ndarray, pa_type):
    """A `[n, w]` array as an Arrow list column (one list of w per row)."""
    import pyarrow as pa

    n, w = values.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa_type))


def feature_rows(sae_id: str, stats: FeatureStats, min_examples: int):
    import pyarrow as pa

    d_sae = len(stats.fire_counts)
    density = stats.density
    with np.errstate(divide="ignore"):
        log_density = np.where(density > 0, np.log10(np.maximum(density, 1e-300)), -np.inf)
    return pa.table(
        {
            "sae_id": [sae_id] * d_sae,
            "feature": pa.array(np.arange(d_sae), pa.int32()),
            "n_tokens": pa.array(np.full(d_sae, stats.n_tokens), pa.int64()),
            "n_active": pa.array(stats.fire_counts.astype(np.int64)),
            "density": density,
            "log10_density": log_density,
            "max_act": stats.max_acts.astype(np.float64),
            "mean_act": stats.mean_acts,
            "dead": stats.fire_counts == 0,
            "dense": density > DENSE_THRESHOLD,
            "too_few_examples": stats.fire_counts < min_examples,
        }
    )


def example_rows(sae_id: str, stats: FeatureStats):
    """Top, quantile, random and non-activating windows, with token ids and activations."""
    import pyarrow as pa

    cfg = stats.config
    parts = [_top(stats), *_reservoir(stats, cfg), _nonactivating(stats, cfg["n_nonactivating"])]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    window = cols["acts"].shape[1]
    token_windows = stats.tokens[cols["seq"][:, None], cols["start"][:, None] + np.arange(window)]
    n = len(cols["seq"])
    order = np.lexsort((cols["rank"], cols["band"], cols["kind_code"], cols["feature"]))
    cols = {k: v[order] for k, v in cols.items()}
    token_windows = token_windows[order]
    kinds = np.array(["top", "quantile", "random", "nonactivating"])
    return pa.table(
        {
            "sae_id": [sae_id] * n,
            "feature": pa.array(cols["feature"], pa.int32()),
            "kind": kinds[cols["kind_code"]].tolist(),
            "band": pa.array(cols["band"], pa.int32()),
            "rank": pa.array(cols["rank"], pa.int32()),
            "seq": pa.array(cols["seq"], pa.int64()),
            "pos": pa.array(cols["pos"], pa.int32()),
            "window_start": pa.array(cols["start"], pa.int32()),
            "activation": cols["value"].astype(np.float64),
            "tokens": _list_column(token_windows.astype(np.int32), pa.int32()),
            "acts": _list_column(cols["acts"].astype(np.float32), pa.float32()),
        }
    )


def _entries(kind_code: int, feature, rank, band, value, seq, pos, start, acts) -> dict:
    return {
        "kind_code": np.full(len(feature), kind_code),
        "feature": feature,
        "rank": rank,
        "band": band,
        "value": value,
        "seq": seq,
        "pos": pos,
        "start": start,
        "acts": acts,
    }


def _top(stats: FeatureStats) -> dict:
    top = stats.top
    value = top.value.numpy()
    k_idx, feat = np.nonzero(value > 0)  # rows are already sorted best-first per latent
    return _entries(
        0,
        feat,
        k_idx,
        np.full(len(feat), -1),
        value[k_idx, feat],
        top.seq.numpy()[k_idx, feat],
        top.pos.numpy()[k_idx, feat],
        top.start.numpy()[k_idx, feat],
        top.acts.numpy()[k_idx, feat],
    )


def _reservoir(stats: FeatureStats, cfg: dict) -> list[dict]:
    """Quantile bands (equal count by rank over the sample) and random picks, per latent."""
    sample = stats.sample
    valid = sample.filled.numpy()  # [R, d_sae]; reservoir rows are in random-key order
    value = sample.value.numpy()
    bands, randoms = [], []
    n_bands, per_band, n_random = cfg["n_bands"], cfg["per_band"], cfg["n_random"]
    for feat in np.nonzero(valid.any(0))[0]:
        rows = np.nonzero(valid[:, feat])[0]
        randoms.append((feat, rows[:n_random]))
        by_value = rows[np.argsort(value[rows, feat], kind="stable")]
        for band, members in enumerate(np.array_split(by_value, n_bands)):
            if len(members):
                pick = members[
                    np.linspace(0, len(members) - 1, min(per_band, len(members)))
                    .round()
                    .astype(int)
                ]
                bands.append((feat, band, np.array(list(dict.fromkeys(pick.tolist())))))
    return [
        _gather(sample, 1, [(f, b, r) for f, b, r in bands]),
        _gather(sample, 2, [(f, -1, r) for f, r in randoms]),
    ]


def _gather(sample, kind_code: int, groups: list[tuple[int, int, np.ndarray]]) -> dict:
    feats = (
        np.concatenate([np.full(len(r), f) for f, _, r in groups]) if groups else np.zeros(0, int)
    )
    rows = np.concatenate([r for _, _, r in groups]) if groups else np.zeros(0, int)
    band = (
        np.concatenate([np.full(len(r), b) for _, b, r in groups]) if groups else np.zeros(0, int)
    )
    rank = np.concatenate([np.arange(len(r)) for _, _, r in groups]) if groups else np.zeros(0, int)
    return _entries(
        kind_code,
        feats,
        rank,
        band,
        sample.value.numpy()[rows, feats],
        sample.seq.numpy()[rows, feats],
        sample.pos.numpy()[rows, feats],
        sample.start.numpy()[rows, feats],
        sample.acts.numpy()[rows, feats].reshape(len(rows), -1),
    )


def _nonactivating(stats: FeatureStats, n: int) -> dict:
    bg = stats.background
    valid = (bg["score"] > _RunningTop.EMPTY).numpy()  # filled slots of the shared position sample
    acts = bg["acts"].numpy()[valid]  # [Q, d_sae, window]
    seq, pos, start = (bg[k].numpy()[valid] for k in ("seq", "pos", "start"))
    center = acts[np.arange(len(pos)), :, pos - start]  # [Q, d_sae]
    q_idx, feat = np.nonzero(center == 0)
    window_active = (acts[q_idx, feat] > 0).any(-1)
    order = np.lexsort((q_idx, window_active, feat))  # per latent: silent windows first
    q_idx, feat = q_idx[order], feat[order]
    rank = np.arange(len(feat)) - np.searchsorted(feat, feat)  # position within each latent's run
    keep = rank < n
    q_idx, feat, rank = q_idx[keep], feat[keep], rank[keep]
    return _entries(
        3,
        feat,
        rank,
        np.full(len(feat), -1),
        np.zeros(len(feat)),
        seq[q_idx],
        pos[q_idx],
        start[q_idx],
        acts[q_idx, feat],
    )


def histogram_rows(sae_id: str, stats: FeatureStats, logits: LogitEffects | None):
    import pyarrow as pa

    d_sae = len(stats.fire_counts)
    kinds, feats, edges, counts = [], [], [], []
    for f in range(d_sae):
        kinds.append("activation")
        feats.append(f)
        edges.append(HIST_EDGES.tolist())
        counts.append(stats.hist_counts[f].astype(np.int64).tolist())
        if logits is not None:
            kinds.append("logit")
            feats.append(f)
            edges.append(logits.hist_edges[f].astype(np.float64).tolist())
            counts.append(logits.hist_counts[f].astype(np.int64).tolist())
    return pa.table(
        {
            "sae_id": [sae_id] * len(feats),
            "feature": pa.array(feats, pa.int32()),
            "kind": kinds,
            "bin_edges": pa.array(edges, pa.list_(pa.float64())),
            "counts": pa.array(counts, pa.list_(pa.int64())),
        }
    )


def logit_rows(sae_id: str, logits: LogitEffects):
    import pyarrow as pa

    d_sae, n = logits.top_ids.shape
    feature = np.repeat(np.arange(d_sae), n)
    rank = np.tile(np.arange(n), d_sae)
    return pa.table(
        {
            "sae_id": [sae_id] * (2 * d_sae * n),
            "feature": pa.array(np.concatenate([feature, feature]), pa.int32()),
            "side": ["top"] * (d_sae * n) + ["bottom"] * (d_sae * n),
            "rank": pa.array(np.concatenate([rank, rank]), pa.int32()),
            "token_id": pa.array(
                np.concatenate([logits.top_ids.reshape(-1), logits.bottom_ids.reshape(-1)]),
                pa.int32(),
            ),
            "value": np.concatenate(
                [logits.top_values.reshape(-1), logits.bottom_values.reshape(-1)]
            ).astype(np.float64),
        }
    )
