"""k-sparse probing: how well k SAE latents classify a binary property, beside the raw activation.

For each k, the k latents whose mean activation differs most between the classes on the
training split (|mean over positives − mean over negatives|, ties to the lower index) feed a
logistic regression; its test accuracy is reported beside the same regression on the full raw
activation. Both regressions standardise their inputs on the training split (L2 penalty `C`).

Entry points:
- `probe_activations(sae, acts, labels, groups)`: any labelled activations `[N, d_in]`;
- `probe_dataset(sae, acts, dataset, label_column)`: labels from a `datasets` column, with
  activations the caller harvested (one pooled row per dataset row);
- `source_probing(sae, store, hook)`: the offline default task, which corpus source (Wikipedia or
  news for the builtin corpus) a store's sequence came from.

Conventions (recorded in `ProbingResult.conventions()`): the train/test split is by group,
stratified by class, seeded. For a store the group is the sequence (`split_by="sequence"`, so no
sequence is on both sides even with token pooling) or the document (`split_by="document"`,
stricter: sequences of one document share topic words that can leak its label, but it needs at
least two documents per class; the small test stores hold a single Wikipedia article).
`pooling="mean"` makes one example per sequence, the mean over its eligible tokens (not
BOS, special tokens or invalid sequences) of the raw activation and of the SAE latents (latents
are computed per token, then averaged); `pooling="token"` makes one example per eligible token,
at most `max_tokens_per_sequence` of them per sequence. With `balance` each split is
down-sampled (seeded) to equal classes, so chance accuracy is 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.evaluation.probing.config import ProbingConfig
from saelab.evaluation.probing.labels import (
    BinaryLabels,
    binary_labels,
    dataset_labels,
    store_column_labels,
)


@dataclass
class ProbingResult:
    """Test accuracies of the sparse probes and the full probe on one binary task."""

    config: ProbingConfig
    task: str
    """What is classified, e.g. "source: speeches vs rest"."""
    classes: tuple[str, str]
    """(negative, positive) class names."""
    accuracy: dict[int, float]
    """k → test accuracy of the probe on the top-k latents."""
    latents: dict[int, list[int]]
    """k → the chosen latents, most discriminating first."""
    full_accuracy: float
    """Test accuracy of the probe on the full raw activation."""
    n_train: int
    n_test: int
    train_positive_fraction: float
    test_positive_fraction: float
    positive_fraction: float
    """Class balance of all examples before splitting and balancing."""
    n_examples: int
    """Examples before splitting and balancing."""
    n_tokens: int
    """Tokens the examples were built from."""
    split_unit: str
    """What the split keeps on one side: "sequence" or "document" for a store, "group" for
    caller-given groups."""
    pooling: str
    """"mean" or "token" for a store; "given" when the caller passed the examples."""

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of always answering the test split's majority class."""
        return max(self.test_positive_fraction, 1 - self.test_positive_fraction)

    def metrics(self) -> dict[str, float]:
        """Long-form rows: probe_acc_full, probe_acc_k{k}, counts and class balance."""
        out = {
            "probe_acc_full": self.full_accuracy,
            **{f"probe_acc_k{k}": acc for k, acc in sorted(self.accuracy.items())},
            "probe_chance_acc": self.chance_accuracy,
            "probe_n_train": float(self.n_train),
            "probe_n_test": float(self.n_test),
            "probe_positive_fraction": self.positive_fraction,
        }
        return out

    def conventions(self) -> dict:
        """Everything needed to reproduce or compare the run (config and convention fields)."""
        return {
            **asdict(self.config),
            "task": self.task,
            "classes": list(self.classes),
            "split_unit": self.split_unit,
            "pooling": self.pooling,
            "selection": "top-k |mean(pos) - mean(neg)| on train",
        }

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "config": asdict(self.config),
            "chance_accuracy": self.chance_accuracy,
        }


# -- encoding ---------------------------------------------------------------------------------


@torch.no_grad()
def encode_sparse(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """SAE latents of rows `x [N, d_in]` as a coalesced sparse COO tensor `[N, d_sae]` on CPU.

    Sparse so that large evaluations do not hold a dense `[N, d_sae]` matrix.
    """
    device = sae.W_dec.device
    parts = [
        sae.encode(x[i : i + batch_size].to(device, torch.float32)).float().cpu().to_sparse()
        for i in range(0, len(x), batch_size)
    ]
    if not parts:
        return torch.zeros(0, sae.d_sae).to_sparse()
    return torch.cat(parts).coalesce()


def dense_rows(f: Tensor, rows: np.ndarray | Tensor) -> Tensor:
    """The given rows of a (sparse or dense) latent matrix, dense."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    out = f.index_select(0, rows)
    return out.to_dense() if out.is_sparse else out


def class_means(f: Tensor, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean latent activation `[d_sae]` over the positive and over the negative rows (float64)."""
    onehot = torch.from_numpy(np.stack([y, ~y], axis=1).astype(np.float64))
    sums = (
        f.t().double() @ onehot if not f.is_sparse else torch.sparse.mm(f.t().double(), onehot)
    ).t()
    counts = onehot.sum(0).clamp_min(1)[:, None]
    means = sums / counts
    return means[0], means[1]


def top_latents(f: Tensor, y: np.ndarray, k: int, signed: bool = False) -> list[int]:
    """The k latents whose mean activation differs most between the classes.

    By |mean(pos) − mean(neg)|, or by mean(pos) − mean(neg) with `signed` (latents that fire
    more on the positives); ties go to the lower index.
    """
    pos, neg = class_means(f, y)
    diff = (pos - neg).numpy()
    score = diff if signed else np.abs(diff)
    return np.argsort(-score, kind="stable")[:k].tolist()


# -- regression -------------------------------------------------------------------------------


def fit_probe(
    x: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 1000, balanced: bool = False
):
    """An L2 logistic regression on standardised features (a fitted sklearn pipeline)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced" if balanced else None),
    )
    with warnings.catch_warnings():
        # An unconverged fit of a separable problem still classifies; accuracy is what counts.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(x, dtype=np.float64), y)
    return model


def probe_direction(model) -> np.ndarray:
    """Unit vector in the raw feature space along which a fitted probe's logit grows."""
    scaler, reg = model[0], model[-1]
    w = reg.coef_[0] / scaler.scale_
    return w / max(float(np.linalg.norm(w)), 1e-30)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(np.asarray(x, dtype=np.float64)) == y).mean())


# -- splitting --------------------------------------------------------------------------------


def split_groups(
    groups: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, balance: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test example indices, each group wholly on one side.

    Stratified: the groups of each class (a group's class is that of its first example) are
    permuted with `seed` and `test_fraction` of them (at least one, never all) go to test. With
    `balance` the larger class of each side is down-sampled to the smaller one.
    """
    rng = np.random.default_rng(seed)
    unique, first = np.unique(groups, return_index=True)
    test_groups = []
    for cls in (False, True):
        members = unique[y[first] == cls]
        if len(members) < 2:
            raise UserError(
                f"only {len(members)} group(s) (sequences or documents) of one class: a split "
                "needs two; use more data (harvest more tokens) or split by sequence"
            )
        n_test = min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test_groups.append(rng.permutation(members)[:n_test])
    in_test = np.isin(groups, np.concatenate(test_groups))
    train, test = np.nonzero(~in_test)[0], np.nonzero(in_test)[0]
    if balance:
        train, test = _balance(train, y, rng), _balance(test, y, rng)
    return train, test


def _balance(idx: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pos, neg = idx[y[idx]], idx[~y[idx]]
    n = min(len(pos), len(neg))
    keep = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    return np.sort(keep)


# -- probing ----------------------------------------------------------------------------------


def probe_features(
    x: Tensor, f: Tensor, labels: BinaryLabels, groups: np.ndarray, cfg: ProbingConfig
) -> tuple[dict[int, float], dict[int, list[int]], float, np.ndarray, np.ndarray]:
    """Sparse and full probes on raw `x [N, d]` and latents `f [N, d_sae]` (sparse or dense).

    Returns ({k: accuracy}, {k: latents}, full accuracy, train indices, test indices).
    """
    y = labels.y
    train, test = split_groups(groups, y, cfg.test_fraction, cfg.seed, cfg.balance)
    for side, idx in (("training", train), ("test", test)):
        if len(np.unique(y[idx])) < 2:
            raise UserError(f"the {side} split lacks one of the classes; use more data")
    xn = x.double().numpy()
    full = accuracy(fit_probe(xn[train], y[train], cfg.C, cfg.max_iter), xn[test], y[test])
    ks = [k for k in cfg.ks if k <= f.shape[1]]
    # The top-k latents are a prefix of one ranking; only the ranked columns are made dense.
    ranking = top_latents(f.index_select(0, torch.from_numpy(train)), y[train], max(ks, default=0))
    cols = torch.tensor(ranking, dtype=torch.long)
    f_train = dense_rows(f.index_select(1, cols), train).numpy()
    f_test = dense_rows(f.index_select(1, cols), test).numpy()
    accs, chosen = {}, {}
    for k in ks:
        probe = fit_probe(f_train[:, :k], y[train], cfg.C, cfg.max_iter)
        accs[k] = accuracy(probe, f_test[:, :k], y[test])
        chosen[k] = ranking[:k]
    return accs, chosen, full, train, test


def _result(
    x,
    f,
    labels: BinaryLabels,
    groups,
    cfg: ProbingConfig,
    n_tokens: int,
    split_unit: str,
    pooling: str,
) -> ProbingResult:
    accs, chosen, full, train, test = probe_features(x, f, labels, groups, cfg)
    y = labels.y
    return ProbingResult(
        config=cfg,
        task=labels.task,
        classes=labels.classes,
        accuracy=accs,
        latents=chosen,
        full_accuracy=full,
        n_train=len(train),
        n_test=len(test),
        train_positive_fraction=float(y[train].mean()),
        test_positive_fraction=float(y[test].mean()),
        positive_fraction=float(y.mean()),
        n_examples=len(y),
        n_tokens=n_tokens,
        split_unit=split_unit,
        pooling=pooling,
    )


def probe_activations(
    sae,
    acts: Tensor,
    labels: BinaryLabels | np.ndarray | list,
    groups: np.ndarray | None = None,
    cfg: ProbingConfig | None = None,
    positive=None,
) -> ProbingResult:
    """k-sparse probing of any labelled activations `acts [N, d_in]` (one example per row).

    `labels` are `BinaryLabels` or raw label values (see `binary_labels`, with `positive`).
    `groups [N]` keeps examples that must not straddle the split together (e.g. the sequence or
    document of each token); None: every example is its own group.
    """
    cfg = cfg or ProbingConfig()
    cfg.validate()
    acts = torch.as_tensor(acts)
    if not isinstance(labels, BinaryLabels):
        labels = binary_labels(labels, positive)
    if len(labels.y) != len(acts):
        raise UserError(f"{len(labels.y)} labels for {len(acts)} activation rows")
    groups = np.arange(len(acts)) if groups is None else np.asarray(groups)
    f = encode_sparse(sae, acts, cfg.batch_size)
    x = acts.detach().float().cpu()
    return _result(x, f, labels, groups, cfg, len(acts), "group", "given")


def probe_dataset(
    sae, acts: Tensor, dataset, label_column: str, positive=None, cfg: ProbingConfig | None = None
) -> ProbingResult:
    """k-sparse probing of a `datasets.Dataset`'s label column.

    `acts [len(dataset), d_in]` holds one (pooled) activation per dataset row, harvested by the
    caller; rows are split independently.
    """
    return probe_activations(sae, acts, dataset_labels(dataset, label_column, positive), cfg=cfg)


@torch.no_grad()
def pooled_store(
    sae, store, hook: str, cfg: ProbingConfig, chunks: list[int] | None = None
) -> tuple[Tensor, Tensor, np.ndarray, int]:
    """Examples of a store's committed sequences (of `chunks`, default all): raw `[E, d]`,
    latents (sparse `[E, d_sae]`), the sequence index of each example, and the number of
    tokens used."""
    store.check_hook(hook)
    rng = np.random.default_rng(cfg.seed)
    xs, fs, seqs, n_tokens = [], [], [], 0
    for chunk in store.committed_chunks() if chunks is None else chunks:
        acts = store.read_acts(hook, chunk).float()
        mask = store.token_mask(chunk)
        if cfg.pooling == "token":
            mask = _sample_tokens(mask, cfg.max_tokens_per_sequence, rng)
        s_idx, t_idx = np.nonzero(mask)
        if len(s_idx) == 0:
            continue
        x_tok = acts[torch.from_numpy(s_idx), torch.from_numpy(t_idx)]
        f_tok = encode_sparse(sae, x_tok, cfg.batch_size)
        first_seq = store.chunk_rows(chunk).start
        n_tokens += len(s_idx)
        if cfg.pooling == "token":
            xs.append(x_tok)
            fs.append(f_tok)
            seqs.append(first_seq + s_idx)
            continue
        present, inverse, counts = np.unique(s_idx, return_inverse=True, return_counts=True)
        xs.append(_mean_rows(x_tok, inverse, counts))
        fs.append(_mean_rows(f_tok, inverse, counts))
        seqs.append(first_seq + present)
    if not xs:
        raise UserError(f"store {store.url!r} has no committed eligible tokens")
    return torch.cat(xs), torch.cat(fs).coalesce(), np.concatenate(seqs), n_tokens


def _mean_rows(t: Tensor, inverse: np.ndarray, counts: np.ndarray) -> Tensor:
    """Means of the rows of `t [T, d]` (dense or sparse COO) grouped by `inverse [T]`."""
    weight = torch.from_numpy(1.0 / counts).float()
    if not t.is_sparse:
        sums = torch.zeros(len(counts), t.shape[1]).index_add_(0, torch.from_numpy(inverse), t)
        return sums * weight[:, None]
    row, col = t.indices()
    group = torch.from_numpy(inverse)[row]
    # coalesce() sums the entries of a group that land on the same latent.
    return torch.sparse_coo_tensor(
        torch.stack([group, col]),
        t.values() * weight[group],
        (len(counts), t.shape[1]),
        check_invariants=True,
    ).coalesce()


def _sample_tokens(mask: np.ndarray, per_seq: int, rng: np.random.Generator) -> np.ndarray:
    """At most `per_seq` eligible positions of each row of `mask`, chosen at random."""
    out = np.zeros_like(mask)
    for s, row in enumerate(mask):
        pos = np.nonzero(row)[0]
        if len(pos):
            out[s, rng.choice(pos, min(per_seq, len(pos)), replace=False)] = True
    return out


def source_probing(
    sae,
    store,
    hook: str,
    cfg: ProbingConfig | None = None,
    column: str = "source",
    positive: str | None = None,
    chunks: list[int] | None = None,
) -> ProbingResult:
    """Probe a label column of the store's corpus (default: which source each sequence came
    from), on the sequences of `chunks` (default: every committed chunk).

    The column needs exactly two values, or a named positive class (one vs rest); the builtin
    corpus's `source` has four (default task: speeches vs rest). The split is by sequence or document
    (`cfg.split_by`), stratified by label.
    """
    cfg = cfg or ProbingConfig()
    cfg.validate()
    seq_labels, docs = store_column_labels(store, column, positive)
    x, f, seqs, n_tokens = pooled_store(sae, store, hook, cfg, chunks)
    labels = BinaryLabels(seq_labels.y[seqs], seq_labels.classes, seq_labels.task)
    groups = docs[seqs] if cfg.split_by == "document" else seqs
    return _result(x, f, labels, groups, cfg, n_tokens, cfg.split_by, cfg.pooling)
