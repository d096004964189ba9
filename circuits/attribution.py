"""Node attribution: attribution patching (AtP), integrated gradients (IG), exact patching.

A node is one SAE feature or one error node at a spliced hook and a position. Its effect is
the change of the metric when the node moves from its clean value to its patch value:
- AtP: Î(n) = Δn · ∂m/∂n at the clean input (one forward and one backward for every node);
- IG: the same with ∂m/∂n averaged over N points on the straight path from clean to patch.
  The path moves every node of one hook at once (feature-circuits' choice; one batched
  forward-backward of N copies per hook), at the midpoints α = (k + ½)/N;
- exact: run the model with just that node patched (one forward per node; the reference).

Because the splice is x̂ + ε with x̂ affine in the features, a node's gradient follows from the
gradient g at the hook's output: ∂m/∂ε = g, ∂m/∂f_i = g · W_dec[i]; and a node's patch is an
additive change of the hook's output: Δf_i W_dec[i] or Δε. Patch values come from the patch
prompt, or from zero / mean ablation (means over the activation store's tokens).

Position 0 (BOS) is outside the graph: it is the same in every prompt, the SAEs never trained
on it, and it is never attributed or ablated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.circuits.splice import SplicedModel, SpliceState

METHODS = ("atp", "ig")
BASELINES = ("patch", "zero", "mean")


# -- metrics ---------------------------------------------------------------------------------


@dataclass
class LogitDiff:
    """m = logit(correct) − logit(wrong) at the last position, per prompt."""

    correct: Tensor
    wrong: Tensor
    reads: tuple[str, ...] = ()

    def __call__(self, logits: Tensor, captured: dict[str, Tensor]) -> Tensor:
        last = logits[:, -1, :]
        reps = last.shape[0] // self.correct.shape[0]
        c, w = self.correct.repeat(reps), self.wrong.repeat(reps)
        rows = torch.arange(last.shape[0])
        return last[rows, c] - last[rows, w]


@dataclass
class Readout:
    """m = direction · (activation at `hook`, last position): linear in that hook (tests)."""

    hook: str
    direction: Tensor

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.hook,)

    def __call__(self, logits: Tensor, captured: dict[str, Tensor]) -> Tensor:
        return captured[self.hook][:, -1, :] @ self.direction


def metric_values(spliced: SplicedModel, tokens: Tensor, metric, edits=None) -> Tensor:
    """The metric per prompt with optional hook edits (no gradients)."""
    with torch.no_grad():
        logits, captured = spliced.forward(tokens, edits, capture=metric.reads)
        return metric(logits, captured)


def check_finite(values: Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise UserError(
            f"the metric is NaN or infinite on {bad} prompt(s) ({what}); check the model, the "
            "SAEs and the answer tokens"
        )


# -- patch values ----------------------------------------------------------------------------


@dataclass
class HookStats:
    """Means over the activation store's tokens at one hook (mean ablation)."""

    feature_mean: Tensor
    """Mean activation of every latent `[d_sae]` (0 where it never fires)."""
    error_mean: Tensor
    """Mean error node `[d]`."""
    x_mean: Tensor
    """Mean activation `[d]` (= decode(feature_mean) + error_mean)."""
    tokens: int


def store_means(
    spliced: SplicedModel, acts: str, hooks: list[str] | None = None, max_tokens: int = 16384
) -> dict[str, HookStats]:
    """Per-hook feature and error means from an activation store (BOS and specials masked)."""
    from saelab.activations.store import ActivationStore

    store = ActivationStore(acts)
    sha = store.attrs.get("model_sha256")
    if sha and sha != spliced.model.weights_sha256:
        raise UserError(f"activation store {acts} was harvested from another model's weights")
    out: dict[str, HookStats] = {}
    for hook in hooks or spliced.hooks:
        if hook not in store.hooks:
            raise UserError(
                f"mean ablation needs {hook} in the activation store {acts} (it holds "
                f"{', '.join(store.hooks)}); harvest it, or use zero or resample ablation"
            )
        sae = spliced.saes[hook]
        f_sum = torch.zeros(sae.d_sae, dtype=torch.float64)
        e_sum = torch.zeros(sae.d_in, dtype=torch.float64)
        x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
        n = 0
        for chunk in store.committed_chunks():
            mask = torch.as_tensor(store.token_mask(chunk)).reshape(-1)
            x = store.read_acts(hook, chunk).float().reshape(-1, sae.d_in)[mask]
            with torch.no_grad():
                code = sae.encode_sparse(x)
                x_hat = sae.decode_sparse(code)
            f_sum.index_add_(0, code.idx.reshape(-1), code.vals.reshape(-1).double())
            e_sum += (x - x_hat).double().sum(0)
            x_sum += x.double().sum(0)
            n += x.shape[0]
            if n >= max_tokens:
                break
        if n == 0:
            raise UserError(f"activation store {acts} has no usable tokens for {hook}")
        out[hook] = HookStats((f_sum / n).float(), (e_sum / n).float(), (x_sum / n).float(), n)
    return out


@dataclass
class PatchSide:
    """The patch values at one hook: a patch-prompt state, or an ablation."""

    kind: str
    """patch, zero or mean."""
    state: SpliceState | None = None
    stats: HookStats | None = None

    def x(self, spliced: SplicedModel, hook: str, like: Tensor) -> Tensor:
        """The hook's activation with every node at its patch value `[B, T, d]`."""
        if self.kind == "patch":
            return self.state.x
        sae = spliced.saes[hook]
        if self.kind == "zero":
            return sae.b_dec.detach().expand_as(like)
        return self.stats.x_mean.expand_as(like)

    def err(self, like: Tensor) -> Tensor:
        if self.kind == "patch":
            return self.state.err
        if self.kind == "zero":
            return torch.zeros_like(like)
        return self.stats.error_mean.expand_as(like)


def patch_sides(
    spliced: SplicedModel, task_patch: Tensor | None, baseline: str, stats=None
) -> dict[str, PatchSide]:
    if baseline == "patch":
        if task_patch is None:
            raise UserError(
                "the task has no patch prompts to patch nodes to: use baseline zero or mean, or "
                "leave the baseline unset (mean)"
            )
        _, states, _ = spliced.run_spliced(task_patch)
        return {h: PatchSide("patch", state=states[h]) for h in spliced.hooks}
    if baseline == "mean" and stats is None:
        raise UserError("mean ablation needs an activation store (means of each hook)")
    return {h: PatchSide(baseline, stats=(stats or {}).get(h)) for h in spliced.hooks}


# -- effects ---------------------------------------------------------------------------------


@dataclass
class HookEffects:
    """Per-prompt, per-position node effects at one hook."""

    hook: str
    feature: Tensor
    """Sparse COO `[B, T, d_sae]` (coalesced): effect of each feature node."""
    error: Tensor
    """`[B, T]`: effect of each error node."""
    activation: Tensor
    """Sparse COO `[B, T, d_sae]`: the clean feature activations (for reports)."""
    error_norm: Tensor
    """`[B, T]`: the clean error node's norm (for reports)."""


def _grad_dot(g: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    """(g[n] · W_dec[idx[n, j]]) for rows n: `[N, k]` without a dense [N, d_sae]."""
    return torch.einsum("nd,nkd->nk", g, W_dec[idx])


def _sparse(B: int, T: int, d_sae: int, idx: Tensor, vals: Tensor) -> Tensor:
    """COO `[B, T, d_sae]` from per-row `[B*T, k]` entries (duplicates add up)."""
    rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx).reshape(-1)
    vals = vals.reshape(-1)
    keep = vals != 0
    rows, cols = rows[keep], idx.reshape(-1)[keep]
    index = torch.stack([rows // T, rows % T, cols])
    return torch.sparse_coo_tensor(
        index, vals[keep], (B, T, d_sae), check_invariants=False
    ).coalesce()


def hook_effects(
    spliced: SplicedModel, hook: str, clean: SpliceState, side: PatchSide, grad: Tensor
) -> HookEffects:
    """Δ-node · gradient for every feature and error node of one hook (BOS row zeroed)."""
    sae = spliced.saes[hook]
    B, T, d = clean.x.shape
    g = grad.reshape(-1, d).detach().clone()
    g.view(B, T, d)[:, 0] = 0  # BOS is outside the graph
    W = sae.W_dec.detach()
    vals_c = clean.vals.detach()
    parts_idx = [clean.idx]
    parts_val = [-vals_c * _grad_dot(g, clean.idx, W)]
    if side.kind == "patch":
        vp = side.state.vals.detach()
        parts_idx.append(side.state.idx)
        parts_val.append(vp * _grad_dot(g, side.state.idx, W))
    elif side.kind == "mean":
        live = torch.nonzero(side.stats.feature_mean).squeeze(1)
        mu = side.stats.feature_mean[live]
        parts_idx.append(live.expand(B * T, -1))
        parts_val.append((g @ W[live].T) * mu)
    idx = torch.cat(parts_idx, 1)
    vals = torch.cat(parts_val, 1)
    feature = _sparse(B, T, sae.d_sae, idx, vals)
    d_err = side.err(clean.err) - clean.err.detach()
    error = (d_err.reshape(-1, d) * g).sum(-1).reshape(B, T)
    activation = _sparse(B, T, sae.d_sae, clean.idx, vals_c)
    err_norm = clean.err.detach().norm(dim=-1)
    return HookEffects(hook, feature, error, activation, err_norm)


def attribute(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    sides: dict[str, PatchSide],
    method: str = "atp",
    steps: int = 10,
    step_batch: int = 16,
    progress=None,
) -> tuple[dict[str, HookEffects], Tensor]:
    """Node effects at every spliced hook; returns (effects, clean metric per prompt)."""
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}: choose {', '.join(METHODS)}")
    logits, states, captured = spliced.run_spliced(tokens, grads=True, capture=metric.reads)
    values = metric(logits, captured)
    check_finite(values.detach(), "clean prompts")
    outs = [states[h].out for h in spliced.hooks]
    grads = torch.autograd.grad(values.sum(), outs, allow_unused=True)
    grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)]
    effects: dict[str, HookEffects] = {}
    for hook, grad in zip(spliced.hooks, grads):
        if method == "ig":
            delta = sides[hook].x(spliced, hook, states[hook].x) - states[hook].x.detach()
            grad = path_gradient(spliced, tokens, metric, hook, delta, steps, step_batch)
        effects[hook] = hook_effects(spliced, hook, states[hook], sides[hook], grad)
        if progress is not None:
            progress.update(1)
    return effects, values.detach()


def path_gradient(
    spliced: SplicedModel,
    tokens: Tensor,
    metric,
    hook: str,
    delta: Tensor,
    steps: int,
    step_batch: int = 16,
) -> Tensor:
    """Mean of ∂m/∂(hook output) at x + α·delta, α = (k + ½)/N (midpoint rule); `[B, T, d]`.

    Copies for several α run as one batch (`step_batch` α per forward)."""
    if steps < 1:
        raise UserError(f"integrated gradients need at least 1 step, got {steps}")
    B = tokens.shape[0]
    delta = delta.detach().clone()
    delta[:, 0] = 0
    total = torch.zeros_like(delta)
    alphas = [(k + 0.5) / steps for k in range(steps)]
    for start in range(0, steps, step_batch):
        chunk = torch.tensor(alphas[start : start + step_batch])
        reps = len(chunk)
        leaf: dict[str, Tensor] = {}

        def edit(x: Tensor, chunk=chunk, reps=reps, leaf=leaf) -> Tensor:
            moved = x.detach() + chunk.repeat_interleave(B).view(-1, 1, 1) * delta.repeat(
                reps, 1, 1
            )
            leaf["x"] = moved.requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad():
            logits, captured = spliced.forward(
                tokens.repeat(reps, 1), {hook: edit}, capture=metric.reads
            )
            values = metric(logits, captured)
            (grad,) = torch.autograd.grad(values.sum(), leaf["x"])
        total += grad.view(reps, B, *delta.shape[1:]).sum(0)
    return total / steps


def exact_effect(
    spliced: SplicedModel, tokens: Tensor, metric, hook: str, delta: Tensor, base: Tensor
) -> Tensor:
    """m(hook output + delta) − m(clean) per prompt: exact activation patching (reference)."""

    def edit(x: Tensor) -> Tensor:
        return x + delta

    return metric_values(spliced, tokens, metric, {hook: edit}) - base


def node_delta(
    spliced: SplicedModel,
    hook: str,
    clean: SpliceState,
    side: PatchSide,
    feature: int | None,
    pos: int | None,
) -> Tensor:
    """The change of the hook's output `[B, T, d]` that patches one node (feature or error, at
    one position or, with pos None, at every position but BOS)."""
    B, T, d = clean.x.shape
    if feature is None:
        delta = side.err(clean.err) - clean.err
    else:
        W = spliced.saes[hook].W_dec.detach()
        f_c = _dense_feature(clean.idx, clean.vals, feature).view(B, T)
        if side.kind == "patch":
            f_p = _dense_feature(side.state.idx, side.state.vals, feature).view(B, T)
        elif side.kind == "mean":
            f_p = side.stats.feature_mean[feature].expand(B, T)
        else:
            f_p = torch.zeros(B, T)
        delta = (f_p - f_c).unsqueeze(-1) * W[feature]
    delta = delta.detach().clone()
    mask = torch.zeros(B, T, 1)
    if pos is None:
        mask[:, 1:] = 1
    else:
        mask[:, pos] = 1
    return delta * mask


def _dense_feature(idx: Tensor, vals: Tensor, feature: int) -> Tensor:
    return (vals.detach() * (idx == feature)).sum(1)
