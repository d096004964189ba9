"""End-to-end fine-tuning of a trained SAE (Braun, Taylor, Goldowsky-Dill, Sharkey 2024,
"Identifying Functionally Important Features with End-to-End Sparse Dictionary Learning").

The SAE is spliced into the live model at its hook (its reconstruction replaces the activation at
the positions SAEs train on: not BOS or special tokens) and trained on the store's token
sequences to keep the model's next-token distribution, not the activation:

    e2e:     L = λ_KL · KL(clean ‖ spliced) + φ · L_sparsity
    e2e+ds:  L = λ_KL · KL(clean ‖ spliced) + (λ_ds / D) · Σ_l MSE(a_l, â_l) + φ · L_sparsity

KL is the mean over next-token predictions; a_l and â_l are the clean and spliced residual
streams after each of the D blocks downstream of the hook (blocks.l.hook_resid_post), and MSE is
the mean over their elements. L_sparsity is the architecture's own sparsity term as its training
loss has it (the loss less its reconstruction terms, with AuxK off): the L1 of ReLU and Gated,
JumpReLU's L0; TopK, BatchTopK and Matryoshka keep their k and have none. The defaults are the
paper's: λ_KL = 1 for e2e; λ_KL = 0.5, λ_ds = 2.5 for e2e+ds. A g-SAE is spliced with its
inference selection (plain TopK; there is no gradient to select with inside the forward).

Sparsity schedules and target-L0 controllers are not run: the coefficient is the checkpoint's,
at full strength. The SAE trains in the units it was trained in (the checkpoint's folded input scale is undone,
then folded in again when saving), so its sparsity coefficient keeps its meaning. The model's
weights are frozen. The run writes a normal checkpoint folder (`out`) plus a training state
every `save_every_tokens` and at the end; `resume` continues from it exactly (the sequence order
is a seeded permutation per epoch of the store's train split).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.sae import checkpoint as ckpt
from saelab.sae.base import SAE, StepContext
from saelab.sae.config import TrainConfig, check_numbers

MODES = ("kl", "kl+ds")
PAPER_KL = {"kl": 1.0, "kl+ds": 0.5}
"""λ_KL of each mode in Braun et al. (their GPT-2 runs)."""


@dataclass
class E2EConfig:
    """End-to-end fine-tuning of a trained SAE with the model's next-token distribution."""

    sae: str
    """The checkpoint folder of the SAE to fine-tune (any architecture)."""
    mode: Literal["kl", "kl+ds"] = "kl"
    """`kl`: KL(clean ‖ spliced) + sparsity; `kl+ds`: plus the MSE of the downstream blocks'
    residual streams, clean against spliced."""
    kl_coefficient: float | None = None
    """λ_KL; None: the paper's (1 for kl, 0.5 for kl+ds)."""
    ds_coefficient: float = 2.5
    """λ_ds of kl+ds, shared equally by the downstream layers (the paper's 2.5)."""
    sparsity_coefficient: float = 1.0
    """φ: multiplies the architecture's own sparsity term (which already holds its coefficient)."""
    lr: float = 1e-4
    """Adam learning rate of the fine-tuning (warm-up and decay from the training options)."""
    forward_batch: int | None = None
    """Sequences per forward pass; None: all of a step's sequences (batch_size // seq_len)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def resolved_kl(self) -> float:
        return PAPER_KL[self.mode] if self.kl_coefficient is None else self.kl_coefficient

    def validate(self) -> None:
        check_numbers(self, "the e2e config")
        if self.mode not in MODES:
            raise UserError(f"the e2e mode must be kl or kl+ds, got {self.mode!r}")
        if not (Path(self.sae) / ckpt.CFG_FILE).is_file():
            raise UserError(
                f"{self.sae} is not an SAE checkpoint folder (no {ckpt.CFG_FILE}); give the folder "
                "a training run wrote"
            )
        for name in ("ds_coefficient", "sparsity_coefficient"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_coefficient is not None and self.kl_coefficient < 0:
            raise UserError(f"kl_coefficient must be >= 0, got {self.kl_coefficient}")
        if not self.lr > 0:
            raise UserError(f"the e2e learning rate must be positive, got {self.lr}")
        if self.forward_batch is not None and self.forward_batch < 1:
            raise UserError(f"forward_batch must be at least 1, got {self.forward_batch}")


_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def downstream_hooks(hook: str, n_layers: int) -> list[str]:
    """The residual streams after each block past the hook's (for e2e+ds)."""
    match = re.match(r"^blocks\.(\d+)\.", hook)
    if not match:
        raise UserError(f"e2e+ds needs a block hook (blocks.L....), got {hook!r}")
    layer = int(match.group(1))
    first = layer + 1 if _RESID.match(hook) else layer
    return [f"blocks.{i}.hook_resid_post" for i in range(first, n_layers)]


def training_units(sae: SAE, scale: float) -> SAE:
    """A copy of a checkpoint SAE (raw units) that works on x · scale, as it was trained."""
    from saelab.sae.registry import build_sae

    copy = build_sae(dataclasses.replace(sae.cfg), sae.d_in)
    copy.load_checkpoint_tensors(sae.checkpoint_tensors(1.0 / scale))
    return copy


def sparsity_term(out) -> Tensor:
    """The architecture's loss less its reconstruction (`mse*`) terms."""
    recon = sum((v for k, v in out.terms.items() if k.startswith("mse")), out.loss.new_zeros(()))
    return out.loss - recon


@dataclass
class SpliceLoss:
    """The terms of one e2e step (each a scalar tensor)."""

    loss: Tensor
    kl: Tensor
    ds_mse: Tensor | None
    sparsity: Tensor
    l0: Tensor
    fvu: Tensor
    """Fraction of the hook's variance the spliced reconstruction leaves unexplained."""
    fired: Tensor
    """Rows each latent fired on `[d_sae]`."""
    out: Any = None
    """The SAE's `TrainOutput` on the spliced rows (for `after_step_update`)."""


def splice_loss(
    bridge,
    hook: str,
    sae: SAE,
    scale: float,
    tokens: Tensor,
    mask: Tensor,
    cfg: E2EConfig,
    ds_hooks: list[str],
) -> SpliceLoss:
    """The e2e loss of `sae` (training units, inputs × `scale`) spliced at `hook` on `tokens`
    `[B, T]`, replacing the activation where `mask` `[B, T]` is True."""
    with torch.no_grad():
        if ds_hooks:
            logits, cache = bridge.run_with_cache(
                tokens, names_filter=list(ds_hooks), return_cache_object=False
            )
        else:
            logits, cache = bridge(tokens, return_type="logits"), {}
        clean = logits.float().log_softmax(-1)[:, :-1]
    outs: dict[str, Any] = {}
    cache_x: dict[str, Tensor] = {}
    spliced: dict[str, Tensor] = {}
    grad = None
    if getattr(sae, "needs_lm_grad", False):
        grad = torch.zeros(int(mask.sum()), sae.d_in, device=tokens.device)
    ctx = StepContext(sparsity_scale=1.0, dead_mask=None, grad=grad)

    def splice(act: Tensor, hook=None) -> Tensor:
        cache_x["x"] = act[mask].detach().float() * scale
        out = sae.training_forward(cache_x["x"], ctx)
        outs["out"] = out
        patched = act.clone()
        patched[mask] = (out.x_hat / scale).to(act.dtype)
        return patched

    def keep(name: str):
        def record(act: Tensor, hook=None) -> None:
            spliced[name] = act

        return record

    hooks = [(hook, splice)] + [(h, keep(h)) for h in ds_hooks]
    logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
    logp = logits.float().log_softmax(-1)[:, :-1]
    kl = (clean.exp() * (clean - logp)).sum(-1).mean()
    out = outs["out"]
    sparsity = sparsity_term(out)
    loss = cfg.resolved_kl() * kl + cfg.sparsity_coefficient * sparsity
    ds_mse = None
    if ds_hooks:
        ds_mse = torch.stack(
            [(spliced[h].float() - cache[h].float()).pow(2).mean() for h in ds_hooks]
        ).mean()
        loss = loss + cfg.ds_coefficient * ds_mse
    with torch.no_grad():
        x = cache_x["x"]
        fvu = (out.x_hat.float() - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)
    return SpliceLoss(
        loss, kl.detach(), None if ds_mse is None else ds_mse.detach(), sparsity.detach(),
        out.code.l0().mean(), fvu, out.code.fire_counts(), out,
    )  # fmt: skip


class E2ETrainer:
    """Fine-tunes one SAE end to end on a store's train-split token sequences."""

    def __init__(
        self,
        e2e: E2EConfig,
        acts: str,
        train: TrainConfig,
        out: str | None,
        *,
        tokens: int | None = None,
        batch_size: int = 4096,
        seed: int = 0,
        resume: bool = False,
        hook: str | None = None,
        model=None,
    ) -> None:
        from saelab.activations.loader import TEST_FRACTION, split_chunks
        from saelab.activations.store import ActivationStore, refuse_inside_store

        e2e.validate()
        train.validate()
        self.e2e, self.train, self.seed, self.resume = e2e, train, seed, resume
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            refuse_inside_store(str(self.out), "the SAE output folder")
            state = self.out / ckpt.STATE_FILE
            if resume and not state.is_file():
                raise UserError(f"nothing to resume in {self.out}: no {ckpt.STATE_FILE} there")
            if not resume and self.out.is_dir() and any(self.out.iterdir()):
                raise UserError(
                    f"{self.out} is not empty; choose a new or empty output folder (or --resume)"
                )
        elif resume:
            raise UserError("--resume needs the output folder of the run to resume")
        cfg = ckpt.read_cfg(e2e.sae)
        self.source_block = cfg.get("saelab") or {}
        self.hook = cfg.get("hook_name") or self.source_block.get("hook_name")
        if hook and self.hook and hook != self.hook:
            raise UserError(
                f"the SAE in {e2e.sae} reads {self.hook!r}, not {hook!r}; drop the hook or "
                "give the matching one"
            )
        self.hook = self.hook or hook
        if not self.hook:
            raise UserError(f"{e2e.sae} records no hook; give `hook`")
        self.scale = float(self.source_block.get("folded_input_scale") or 1.0)
        self.store = ActivationStore(acts)
        self.acts = acts
        chunks = split_chunks(self.store.committed_chunks(), "train", TEST_FRACTION)
        self.tokens_all = torch.from_numpy(
            np.concatenate([self.store.read_tokens(c) for c in chunks])
        ).long()
        self.mask_all = torch.from_numpy(np.concatenate([self.store.token_mask(c) for c in chunks]))
        if model is None:
            from saelab.activations.live import store_model

            model = store_model(self.store, train.device)
        self.model = model
        model.validate_hooks([self.hook])
        self.ds_hooks = downstream_hooks(self.hook, model.n_layers) if e2e.mode == "kl+ds" else []
        seq_len = self.tokens_all.shape[1]
        self.seqs_per_step = max(1, batch_size // seq_len)
        per_step = self.seqs_per_step * seq_len
        planned = tokens or self.tokens_all.shape[0] * seq_len
        self.total_steps = max(1, math.ceil(planned / per_step))
        self.step = self.tokens = 0
        self._order: tuple[int, np.ndarray] | None = None
        device = torch.device(train.device)
        raw = ckpt.load_sae(e2e.sae, device="cpu")
        if raw.d_in != model.d_model and _RESID.match(self.hook):
            raise UserError(f"the SAE reads width {raw.d_in} but the model has {model.d_model}")
        self.sae = training_units(raw, self.scale).to(device).train()
        self.params = [p for p in self.sae.parameters() if p.requires_grad]
        from saelab.sae.optim import build_optimizer

        self.optimizer = build_optimizer(self.sae, e2e.lr, train.adam_betas, train.adam_eps, "adam")
        self.device = device
        if resume:
            self._load_state()

    # -- data -----------------------------------------------------------------------------

    def step_sequences(self, step: int) -> Tensor:
        """Indices of the train-split sequences of a step (a seeded permutation per epoch)."""
        n = self.tokens_all.shape[0]
        start = step * self.seqs_per_step
        out = []
        for pos in range(start, start + self.seqs_per_step):
            epoch, i = divmod(pos, n)
            if self._order is None or self._order[0] != epoch:
                self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
            out.append(int(self._order[1][i]))
        return torch.tensor(out)

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> SAE:
        """Fine-tune to the planned steps; returns the SAE in raw units (eval mode)."""
        from saelab.sae.logger import MetricsLogger
        from saelab.sae.optim import lr_multiplier, set_lr, warmup_steps

        seq_len = self.tokens_all.shape[1]
        logger = MetricsLogger(
            self.out, self.total_steps * self.seqs_per_step * seq_len, self.tokens,
            True, self.train.progress,
        )  # fmt: skip
        if self.out is not None:
            if self.resume:
                logger.truncate_after(self.step)
            else:
                ckpt.write_json(self.out / "train_config.json", self.run_config())
        warm = warmup_steps(
            self.total_steps, self.train.lr_warmup_steps, self.train.lr_warmup_fraction
        )
        fb = self.e2e.forward_batch or self.seqs_per_step
        t0, sums, fired = time.perf_counter(), {}, 0
        try:
            while self.step < self.total_steps:
                idx = self.step_sequences(self.step)
                toks = self.tokens_all[idx].to(self.device)
                mask = self.mask_all[idx].to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                parts = list(range(0, len(idx), fb))
                for start in parts:
                    terms = splice_loss(
                        self.model.bridge, self.hook, self.sae, self.scale,
                        toks[start : start + fb], mask[start : start + fb], self.e2e,
                        self.ds_hooks,
                    )  # fmt: skip
                    value = float(terms.loss.detach())
                    if not math.isfinite(value) or value > self.train.max_loss:
                        raise UserError(
                            f"e2e fine-tuning stopped at step {self.step}: loss {value:.3g}; "
                            "lower the e2e learning rate"
                        )
                    # only the SAE's gradients: the model's weights stay untouched
                    torch.autograd.backward(terms.loss / len(parts), inputs=self.params)
                    fired = fired + terms.fired
                    for k in ("loss", "kl", "ds_mse", "sparsity", "l0", "fvu"):
                        v = getattr(terms, k)
                        if v is not None:
                            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(parts)
                self.sae.before_optimizer_step()
                mult = lr_multiplier(
                    self.step, self.total_steps, warm, self.train.lr_decay_fraction
                )
                set_lr(self.optimizer, self.e2e.lr * mult)
                self.optimizer.step()
                self.sae.after_optimizer_step()
                self.sae.after_step_update(terms.out)  # running estimates (BatchTopK's threshold)
                self.step += 1
                prev = self.tokens
                self.tokens += int(toks.numel())
                logger.advance(int(toks.numel()))
                sums["n"] = sums.get("n", 0) + 1
                if self.step % self.train.log_every == 0 or self.step == self.total_steps:
                    n = sums.pop("n")
                    row = {
                        "step": self.step,
                        "tokens": self.tokens,
                        "sae": self.name,
                        "lr": self.e2e.lr * mult,
                        "tokens_per_s": self.tokens / max(time.perf_counter() - t0, 1e-9),
                    }
                    row.update({k: v / n for k, v in sums.items()})  # fmt: skip
                    row["dead_pct"] = 100 * float((fired == 0).float().mean())
                    logger.log([row])
                    sums, fired = {}, 0
                every = self.train.save_every_tokens
                if every and self.tokens // every > prev // every and self.step < self.total_steps:
                    self.save()
        finally:
            logger.close()
        self.save()
        return self.raw_sae()

    @property
    def name(self) -> str:
        return f"{self.sae.cfg.resolved_name()}-e2e-{self.e2e.mode}"

    def raw_sae(self) -> SAE:
        from saelab.sae.trainer import folded_copy

        return folded_copy(self.sae, self.scale)

    # -- checkpoints --------------------------------------------------------------------------

    def run_config(self) -> dict[str, Any]:
        return {
            "e2e": dataclasses.asdict(self.e2e),
            "train": self.train.to_dict(),
            "acts": self.acts,
            "hook": self.hook,
            "seqs_per_step": self.seqs_per_step,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "input_scale": self.scale,
        }

    def identity(self) -> dict[str, Any]:
        run = self.run_config()
        run["train"] = {
            k: v for k, v in run["train"].items() if k not in ("save_every_tokens", "log_every",
                                                              "progress", "device")
        }  # fmt: skip
        return run

    def save(self) -> None:
        if self.out is None:
            return
        provenance = dict(self.source_block.get("provenance") or {})
        meta = {
            **provenance,
            "hook_name": self.hook,
            "model_name": self.source_block.get("model_name") or provenance.get("model_name"),
            "trained_tokens": (self.source_block.get("trained_tokens") or 0) + self.tokens,
            "step": self.step,
            "e2e": {**dataclasses.asdict(self.e2e), "tokens": self.tokens, "acts": self.acts},
        }
        ckpt.save_sae(self.sae, self.out, self.scale, meta)
        state = {
            "identity": self.identity(),
            "step": self.step,
            "tokens": self.tokens,
            "model": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        ckpt.save_training_state(self.out / ckpt.STATE_FILE, state)

    def _load_state(self) -> None:
        assert self.out is not None
        state = ckpt.load_training_state(self.out / ckpt.STATE_FILE)
        saved, now = state.get("identity"), self.identity()
        if saved != now:
            diff = sorted(
                k for k in set(saved or {}) | set(now) if (saved or {}).get(k) != now.get(k)
            )
            raise UserError(
                f"cannot resume the e2e run in {self.out}: {', '.join(diff)} differ; resume with "
                "the same settings, or fine-tune into a new output folder"
            )
        self.sae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens = state["step"], state["tokens"]
