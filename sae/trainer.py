"""The sweep trainer: one pass over the activations trains every SAE of a sweep on each batch.

Per batch and per SAE: forward (loss terms), divergence check, backward, data-parallel
gradient average, decoder-gradient projection, Adam step with the scheduled LR, decoder
renormalisation, running estimates, dead-latent bookkeeping. Checkpoints (SAE folders with
the input scale folded in, plus one training-state file) are written every N tokens and at
the end; resuming from the state file continues bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.activations.store import refuse_inside_store
from saelab.base.errors import UserError
from saelab.sae import checkpoint as ckpt
from saelab.sae import ops
from saelab.sae.base import SAE, StepContext, TrainOutput
from saelab.sae.config import SAEConfig, TrainConfig
from saelab.sae.dead import DeadLatentTracker
from saelab.sae.distributed import DistContext, current
from saelab.sae.init import b_dec_init, input_scale
from saelab.sae.logger import MetricsLogger, start_wandb
from saelab.sae.memory import keep_freed_cpu_memory
from saelab.sae.optim import (
    L0Controller,
    build_optimizer,
    eval_state,
    lr_multiplier,
    set_lr,
    sparsity_multiplier,
    warmup_steps,
)
from saelab.sae.registry import build_sae
from saelab.sae.stream import BatchStream, batch_acts, batch_grad
from saelab.sae.subspace_init import init_in_active_subspace_

Hooks = str | tuple[str, ...]
"""One hook of a joint-hook loader, or several whose columns a dictionary reads side by side."""


@dataclass
class Member:
    """One SAE of the sweep with its optimiser and bookkeeping."""

    name: str
    sae: SAE
    optimizer: torch.optim.Optimizer
    dead: DeadLatentTracker
    folder: Path | None
    sums: dict[str, Tensor] = field(default_factory=dict)
    steps_in_window: int = 0
    controller: L0Controller | None = None
    """The target-L0 controller of a threshold SAE with `target_l0` (else None)."""
    lr_from_rule: bool = False
    """Whether the LR came from the default rule (the config gave none)."""
    input_hook: Hooks | None = None
    """The loader column (hook) the SAE reads; None: the whole row (a single-hook loader); a
    tuple: several hooks' columns side by side (a cross-layer transcoder's layers)."""
    target_hook: Hooks | None = None
    """The column a transcoder reconstructs (a tuple: several, side by side); None: the SAE
    reconstructs its input."""


class Diverged(Exception):
    def __init__(self, name: str, step: int, value: float) -> None:
        super().__init__(name, step, value)
        self.name, self.step, self.value = name, step, value


class Trainer:
    """Trains a sweep of SAE configs on one iterable of `[batch, d_in]` tensors."""

    def __init__(
        self,
        saes: SAEConfig | Sequence[SAEConfig],
        loader: Iterable[Tensor],
        cfg: TrainConfig,
        out: str | Path | None = None,
        resume: bool = False,
        state_source: Any | None = None,
        dist: DistContext | None = None,
        meta: dict[str, Any] | None = None,
        one_pass: bool = False,
    ) -> None:
        """`one_pass`: `cfg.tokens` is the loader's length, so its end (short of a dropped
        partial batch) is the planned end of the run, not data running out."""
        configs = [saes] if isinstance(saes, SAEConfig) else list(saes)
        if not configs:
            raise UserError("the sweep is empty: give at least one SAE config")
        cfg.validate()
        for c in configs:
            c.validate()
        self.configs = _unique_names(configs)
        self.cfg, self.loader = cfg, loader
        self.out = Path(out) if out is not None else None
        self.resume, self.one_pass = resume, one_pass
        self.dist = dist or current()
        self.device = _device(cfg.device, self.dist)
        self.meta = {**_loader_meta(loader), **(meta or {})}
        self.stream = BatchStream(loader, state_source)
        self.members: list[Member] = []
        self.step = self.tokens = 0
        self.total_steps = self.batch_rows = 0
        self.scale = 1.0
        self.columns: dict[str, slice] | None = getattr(
            loader, "columns", getattr(state_source, "columns", None)
        )
        """A joint-hook loader's hook -> columns of a row (transcoders read one hook and
        reconstruct another); None: every row is the one hook's activations."""
        self.scales: dict[str, float] = {}
        """With `columns`: each hook's training input scale (`scale` is the first hook's)."""
        self.last_saved_step: int | None = None
        self.recent: deque[Tensor] = deque()
        """The latest training batches (training units, every rank's rows), about
        `init_tokens` rows, for `SAE.calibrate_inference` (empty until this process trains)."""
        self.legacy_fields: list[str] = []
        """Config fields this run trains with at their value from before the field existed."""
        self._check_hook()
        self._check_output_folder()

    # -- setup --------------------------------------------------------------------------

    def _check_hook(self) -> None:
        hook = getattr(self.loader, "hook", None)
        wanted = self.cfg.hook
        if wanted and hook and wanted != hook:
            raise UserError(f"the SAEs are for hook {wanted!r} but the loader reads {hook!r}")
        hooks = self.meta.get("hooks")
        if wanted and isinstance(hooks, (dict, list)) and hooks and wanted not in hooks:
            raise UserError(
                f"hook {wanted!r} is not in the store; it has: {', '.join(sorted(hooks))}"
            )

    def _check_output_folder(self) -> None:
        if self.out is None:
            if self.resume:
                raise UserError("--resume needs the output folder of the run to resume")
            return
        refuse_inside_store(str(self.out), "the SAE output folder")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out} is a file, not a folder; choose another output folder")
        state = self.out / ckpt.STATE_FILE
        if self.resume and not state.is_file():
            raise UserError(f"nothing to resume in {self.out}: no {ckpt.STATE_FILE} there")
        if not self.resume and state.is_file():
            raise UserError(
                f"{self.out} already holds a training run; pass --resume to continue it "
                "or choose another output folder"
            )
        if not self.resume and self.out.is_dir() and any(self.out.iterdir()):
            # Not a saelab run (that has a state file) but not empty either: never mix files in.
            raise UserError(
                f"{self.out} is not empty and holds no saelab training run; choose a new or "
                "empty output folder"
            )

    def _resolve_d_in(self, first: Tensor) -> int:
        d_in = int(getattr(self.loader, "d_in", None) or first.shape[1])
        if first.shape[1] != d_in:
            raise UserError(
                f"the loader says d_in={d_in} but yields rows of width {first.shape[1]}"
            )
        for c in self.configs:
            if c.d_in is not None and c.d_in != d_in:
                raise UserError(
                    f"SAE {c.resolved_name()!r} expects inputs of width {c.d_in} but the hook "
                    f"{self.cfg.hook or getattr(self.loader, 'hook', '')!r} has width {d_in}; "
                    "drop d_in from its config or use the matching hook"
                )
        return d_in

    def _member_hooks(self, c: SAEConfig) -> tuple[Hooks | None, Hooks | None]:
        """The loader columns an SAE reads and (a transcoder) reconstructs: a hook each, or
        (a cross-layer transcoder, whose config lists `input_hooks` and `target_hooks`) a tuple
        of hooks each."""
        if hasattr(c, "target_hooks"):
            return self._member_hook_lists(c)
        target = getattr(c, "target_hook", None) or None
        if self.columns is None:
            if target is not None:
                raise UserError(
                    f"transcoder {c.resolved_name()!r} reconstructs {target!r} but the loader "
                    "gives one hook only; train it from a store with its target hook "
                    "(saelab train --arch transcoder --hook H --target-hook H2)"
                )
            return None, None
        primary = next(iter(self.columns))  # the joint loader's first hook
        source = getattr(c, "input_hook", None) or getattr(self.loader, "hook", primary)
        for h in (source, target):
            if h is not None and h not in self.columns:
                raise UserError(
                    f"SAE {c.resolved_name()!r} needs hook {h!r}, which the loader does not "
                    f"read; it reads: {', '.join(self.columns)}"
                )
        return source, target

    def _member_hook_lists(self, c: SAEConfig) -> tuple[Hooks, Hooks]:
        """`_member_hooks` of a dictionary over several layers (one input and target each)."""
        sources, targets = getattr(c, "input_hooks", None), getattr(c, "target_hooks", None)
        if not sources or not targets:
            raise UserError(
                f"{c.resolved_name()!r} ({c.architecture}) reads several layers: give its layers "
                "(saelab train --arch clt --layers 4-7) or its input_hooks and target_hooks"
            )
        needed = [*sources, *targets]
        missing = [h for h in needed if self.columns is None or h not in self.columns]
        if missing:
            reads = ", ".join(self.columns) if self.columns is not None else "one hook"
            raise UserError(
                f"{c.resolved_name()!r} needs hook {missing[0]!r}, which the loader does not "
                f"read (it reads: {reads}); train it through saelab train --layers, which reads "
                "every layer's hooks side by side"
            )
        return tuple(sources), tuple(targets)

    def _build_members(self, d_in: int) -> None:
        flat = len(self.configs) == 1
        for c in self.configs:
            source, target = self._member_hooks(c)
            if self.columns is not None:
                d_in = _side_width(self.columns, source)  # type: ignore[arg-type]
                _set_target(c, source, target, self.columns)
            c.d_in = d_in
            lr_from_rule = c.lr is None
            if lr_from_rule:
                c.lr = c.resolved_lr()
            if getattr(c, "aux_k", "absent") is None:
                c.aux_k = c.resolved_aux_k()  # type: ignore[attr-defined]
            sae = build_sae(c, d_in).to(self.device)
            opt = build_optimizer(
                sae, c.lr, self.cfg.adam_betas, self.cfg.adam_eps, self.cfg.optimizer
            )
            # The module's d_sae counts every latent (a cross-layer transcoder's config gives
            # them per layer).
            dead = DeadLatentTracker(sae.d_sae, self._dead_window(), self.device)
            name = c.resolved_name()
            folder = None if self.out is None else (self.out if flat else self.out / name)
            member = Member(
                name, sae, opt, dead, folder, controller=_controller(c), lr_from_rule=lr_from_rule,
                input_hook=source, target_hook=target,
            )  # fmt: skip
            self.members.append(member)

    def _dead_window(self) -> int:
        if self.cfg.dead_window_tokens is not None:
            return self.cfg.dead_window_tokens
        return max(1, min(10_000_000, self.cfg.tokens // 10))

    def _initialise_from_data(self) -> None:
        if self.columns is not None:
            self._initialise_joint()
            return
        sample = self.stream.peek_rows(self.cfg.init_tokens).to(self.device, torch.float32)
        self.scale = input_scale(sample) if self.cfg.normalize_inputs else 1.0
        sample = sample * self.scale
        inits: dict[str, Tensor | None] = {}
        for m in self.members:
            how = m.sae.cfg.b_dec_init
            if how not in inits:
                inits[how] = b_dec_init(sample, how)
            if inits[how] is not None:
                with torch.no_grad():
                    m.sae.b_dec.copy_(inits[how])
            if m.sae.cfg.active_subspace_dim is not None:
                init_in_active_subspace_(m.sae, sample, m.sae.cfg.active_subspace_dim)
            m.sae.init_sparsity_(sample)  # first: the encoder scale fits the sparse start
            if m.sae.cfg.init_encoder_scale:
                m.sae.init_encoder_scale_(sample)

    def _initialise_joint(self) -> None:
        """`_initialise_from_data` for a joint-hook loader: a scale per hook, each SAE's b_dec
        from its target's sample (its input's for an SAE), a transcoder's encoder scale
        fitted to its target."""
        assert self.columns is not None
        rows = self.stream.peek_rows(self.cfg.init_tokens).to(self.device, torch.float32)
        sample = {h: rows[:, cols] for h, cols in self.columns.items()}
        self.scales = {
            h: input_scale(v) if self.cfg.normalize_inputs else 1.0 for h, v in sample.items()
        }
        self.scale = self.scales[next(iter(self.columns))]
        sample = {h: v * self.scales[h] for h, v in sample.items()}
        inits: dict[tuple[str, str], Tensor | None] = {}
        for m in self.members:
            x = _side(sample, m.input_hook)  # type: ignore[arg-type]
            y = None if m.target_hook is None else _side(sample, m.target_hook)
            how = m.sae.cfg.b_dec_init
            out_hooks = _hook_list(m.target_hook or m.input_hook)  # type: ignore[arg-type]
            for h in out_hooks:
                if (h, how) not in inits:
                    inits[(h, how)] = b_dec_init(sample[h], how)
            parts = [inits[(h, how)] for h in out_hooks]
            if all(p is not None for p in parts):  # one b_dec row per target hook
                with torch.no_grad():
                    m.sae.b_dec.copy_(torch.cat(parts).view_as(m.sae.b_dec))  # type: ignore[arg-type]
            m.sae.init_sparsity_(x)
            if m.sae.cfg.init_encoder_scale:
                if y is None:
                    m.sae.init_encoder_scale_(x)
                else:
                    m.sae.init_encoder_scale_(x, y)  # type: ignore[call-arg]

    def member_scales(self, m: Member) -> tuple[Any, Any]:
        """The training scales of what the member reads and (a transcoder) reconstructs: a
        number per side, or a list (one per hook) for a side of several hooks."""
        if self.columns is None or m.input_hook is None:
            return self.scale, None
        target = None if m.target_hook is None else _side_scale(self.scales, m.target_hook)
        return _side_scale(self.scales, m.input_hook), target

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> dict[str, SAE]:
        """Train to `cfg.tokens`; returns each SAE (scale folded in, eval mode) by name."""
        self.setup()
        logger = self._make_logger()
        try:
            self._loop(logger)
        finally:
            logger.close()
        self.save()
        return self.eval_saes()

    def eval_saes(self) -> dict[str, SAE]:
        """Each SAE as it stands now (scale folded in, eval mode, the optimiser's evaluation
        weights), by name."""
        return {
            m.name: folded_copy(self.eval_module(m), *self.member_scales(m)) for m in self.members
        }

    def eval_module(self, m: Member) -> SAE:
        """The member's SAE with the weights to evaluate and save (training units): itself, or
        a copy holding a schedule-free optimiser's averaged `x` weights or the inference
        statistics `SAE.calibrate_inference` fits on the latest rows (on a copy, so that
        saving never changes the training state, on any rank)."""
        weights = eval_state(m.sae, m.optimizer)
        calibrate = bool(self.recent) and _calibrates(m.sae)
        if weights is None and not calibrate:
            return m.sae
        sae = build_sae(dataclasses.replace(m.sae.cfg), m.sae.d_in).to(_device_of(m.sae))
        sae.load_state_dict(m.sae.state_dict() if weights is None else weights)
        if calibrate:
            sae.calibrate_inference(torch.cat([_view(b, m.input_hook) for b in self.recent]))
        return sae

    def setup(self) -> None:
        """Build the SAEs and initialise them from the first sample (or the saved state)."""
        if self.members:
            return
        if self.device.type == "cpu" and self.cfg.keep_freed_cpu_memory:
            keep_freed_cpu_memory()
        first = self.stream.peek_rows(1)
        if self.columns is None:
            d_in = self._resolve_d_in(first)
        else:
            d_in = max(_width(cols) for cols in self.columns.values())
        check_memory(self.configs, d_in, first.shape[0], self.device)
        self._build_members(d_in)
        if self.resume:
            self._load_state()
        else:
            self.batch_rows = batch_acts(self.stream.pending[0]).shape[0]
            self.total_steps = math.ceil(self.cfg.tokens / self.batch_rows)
            self._initialise_from_data()

    def _make_logger(self) -> MetricsLogger:
        main = self.dist.is_main
        run = None
        if self.cfg.wandb and main:
            run = start_wandb(self.cfg.wandb_project, self.run_config())
        logger = MetricsLogger(
            self.out, self.total_steps * self.batch_rows, self.tokens, main, self.cfg.progress, run
        )
        if self.resume and main:
            logger.truncate_after(self.step)
        elif main and self.out is not None:
            ckpt.write_json(self.out / "train_config.json", self.run_config())
        return logger

    def _loop(self, logger: MetricsLogger) -> None:
        t0, tokens0 = time.perf_counter(), self.tokens
        while self.step < self.total_steps:
            batch = self.stream.next()
            if batch is None:
                if self.one_pass:
                    break
                logger.write(
                    f"the data ran out after {self.tokens:,} tokens (asked for "
                    f"{self.cfg.tokens:,}); saving what was trained"
                )
                break
            prev_tokens = self.tokens
            try:
                self.train_step(batch)
            except Diverged as d:
                self._raise_divergence(d)
            logger.advance(batch_acts(batch).shape[0])
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                rate = (self.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
                logger.log(self._metric_rows(rate))
            every = self.cfg.save_every_tokens
            if (
                every
                and self.tokens // every > prev_tokens // every
                and self.step < self.total_steps
            ):
                self.save()

    def train_step(self, batch: Tensor | tuple[Tensor, Tensor]) -> None:
        """One step of every SAE on one batch (with the LM loss gradient, from a live source)."""
        if self.columns is not None:
            self._joint_step(batch_acts(batch))
            return
        x = batch_acts(batch).to(self.device, torch.float32, non_blocking=True) * self.scale
        local = self.dist.shard(x)
        grad = batch_grad(batch)  # d loss / d(x * scale) = grad / scale
        grad = None if grad is None else self.dist.shard(grad.to(self.device) / self.scale)
        sparsity = sparsity_multiplier(
            self.step, self.total_steps, self.cfg.sparsity_warmup_fraction
        )
        warm = warmup_steps(self.total_steps, self.cfg.lr_warmup_steps, self.cfg.lr_warmup_fraction)
        lr_mult = lr_multiplier(self.step, self.total_steps, warm, self.cfg.lr_decay_fraction)
        for m in self.members:
            self._step_member(m, local, x.shape[0], sparsity, lr_mult, grad)
        self.recent.append(x)
        while sum(b.shape[0] for b in self.recent) - len(self.recent[0]) >= self.cfg.init_tokens:
            self.recent.popleft()
        self.step += 1
        self.tokens += x.shape[0]

    def _joint_step(self, rows: Tensor) -> None:
        """`train_step` on a joint-hook batch: each member reads its hook's columns (and a
        transcoder's target, its target hook's), each in its own training scale."""
        assert self.columns is not None
        rows = rows.to(self.device, torch.float32, non_blocking=True)
        views = {h: rows[:, cols] * self.scales[h] for h, cols in self.columns.items()}
        local = {h: self.dist.shard(v) for h, v in views.items()}
        sparsity = sparsity_multiplier(
            self.step, self.total_steps, self.cfg.sparsity_warmup_fraction
        )
        warm = warmup_steps(self.total_steps, self.cfg.lr_warmup_steps, self.cfg.lr_warmup_fraction)
        lr_mult = lr_multiplier(self.step, self.total_steps, warm, self.cfg.lr_decay_fraction)
        for m in self.members:
            target = None if m.target_hook is None else _side(local, m.target_hook)
            x = _side(local, m.input_hook)  # type: ignore[arg-type]
            self._step_member(m, x, rows.shape[0], sparsity, lr_mult, target=target)
        self.recent.append(views)  # type: ignore[arg-type]
        while _rows(self.recent) - _rows([self.recent[0]]) >= self.cfg.init_tokens:
            self.recent.popleft()
        self.step += 1
        self.tokens += rows.shape[0]

    def _step_member(
        self,
        m: Member,
        x: Tensor,
        global_rows: int,
        sparsity: float,
        lr_mult: float,
        grad: Tensor | None = None,
        target: Tensor | None = None,
    ) -> None:
        if m.controller is not None:
            sparsity = m.controller.scale()
        ctx = StepContext(
            sparsity_scale=sparsity, dead_mask=m.dead.dead_mask(), grad=grad, target=target
        )
        with self._autocast():
            out = m.sae.training_forward(x, ctx)
        value = float(out.loss.detach())
        if not math.isfinite(value) or value > self.cfg.max_loss:
            raise Diverged(m.name, self.step, value)
        m.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        ops.dense_grads_(m.sae.parameters())
        self.dist.all_reduce_grads(m.sae, x.shape[0], global_rows)
        m.sae.before_optimizer_step()
        set_lr(m.optimizer, m.sae.cfg.lr * lr_mult)  # type: ignore[operator]
        m.optimizer.step()
        m.sae.after_optimizer_step()
        m.sae.after_step_update(out)
        self.dist.average_buffers(m.sae)
        m.dead.update(self.dist.sum(out.code.fire_counts()), global_rows)
        if m.controller is not None:
            m.controller.update(float(self.dist.sum(out.code.l0().sum().detach())) / global_rows)
        self._accumulate(m, x if target is None else target, out)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.autocast_bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- metrics ------------------------------------------------------------------------

    @torch.no_grad()
    def _accumulate(self, m: Member, x: Tensor, out: TrainOutput) -> None:
        """Sums for the metrics; `x` is what the SAE reconstructs (a transcoder's target)."""
        err = (out.x_hat.detach().float() - x).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum()
        vals = {
            "sq_err": err,
            "var": var,
            "l0": out.code.l0().sum(),
            "rows": torch.tensor(float(x.shape[0]), device=x.device),
            "loss": out.loss.detach().float() * x.shape[0],
        }
        vals.update({k: v.detach().float() * x.shape[0] for k, v in out.terms.items()})
        for k, v in vals.items():
            m.sums[k] = m.sums[k] + v if k in m.sums else v.clone()
        m.steps_in_window += 1

    def _metric_rows(self, tokens_per_s: float) -> list[dict[str, Any]]:
        rows = []
        warm = warmup_steps(self.total_steps, self.cfg.lr_warmup_steps, self.cfg.lr_warmup_fraction)
        lr_mult = lr_multiplier(self.step - 1, self.total_steps, warm, self.cfg.lr_decay_fraction)
        for m in self.members:
            keys = sorted(m.sums)
            totals = self.dist.sum(torch.stack([m.sums[k] for k in keys]).float())
            s = dict(zip(keys, totals.tolist(), strict=True))
            rows_n = max(s.pop("rows"), 1.0)
            row: dict[str, Any] = {
                "step": self.step,
                "tokens": self.tokens,
                "sae": m.name,
                "lr": m.sae.cfg.lr * lr_mult,  # type: ignore[operator]
                "l0": s.pop("l0") / rows_n,
                "fvu": s.pop("sq_err") / max(s.pop("var"), 1e-30),
                "dead_pct": 100 * m.dead.dead_fraction(),
                "tokens_per_s": tokens_per_s,
            }
            row.update({k: v / rows_n for k, v in s.items()})
            if m.controller is not None:
                row["sparsity_scale"] = m.controller.scale()
            rows.append(row)
            m.sums, m.steps_in_window = {}, 0
        return rows

    # -- checkpoints --------------------------------------------------------------------

    def run_config(self) -> dict[str, Any]:
        return {
            "train": self.cfg.to_dict(),
            "dead_window_tokens": self._dead_window(),
            "input_scale": self.scale,
            "world_size": self.dist.world_size,
            "saes": {m.name: {**m.sae.cfg.to_dict()} for m in self.members},
            "meta": self.meta,
        }

    def save(self) -> None:
        """Write every SAE folder and the training state (rank 0), atomically."""
        if self.out is None:
            return
        if self.dist.is_main:
            meta = {
                **self.meta,
                "hook_name": self.cfg.hook or self.meta.get("hook_name"),
                "trained_tokens": self.tokens,
                "step": self.step,
            }
            # Each file is written atomically, the state last: a failure (a full disk) leaves
            # the previous checkpoint whole.
            for m in self.members:
                extra = {} if m.controller is None else {"target_l0": m.controller.state_dict()}
                if m.input_hook is not None:
                    extra["hook_name"] = _hook_list(m.input_hook)[0]
                s_in, s_out = self.member_scales(m)
                ckpt.save_sae(self.eval_module(m), m.folder, s_in, {**meta, **extra}, s_out)
            ckpt.save_training_state(self.out / ckpt.STATE_FILE, self._state())
        self.dist.barrier()
        self.last_saved_step = self.step

    def identity(self) -> dict[str, Any]:
        """What the run is trained on; a resume must match it field for field."""
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
        train["extra"] = {k: v for k, v in train.get("extra", {}).items() if k != "acts"}
        store = {k: self.meta.get(k) for k in STORE_IDENTITY if k in self.meta}
        identity = {"hook": self.cfg.hook, "store": store, "train": train}
        if self.columns is not None:
            identity["hooks"] = list(self.columns)
        return identity  # the SAEs' own configs are compared member by member in _load_state

    def _state(self) -> dict[str, Any]:
        return {
            "identity": self.identity(),
            "legacy_fields": self.legacy_fields,
            "step": self.step,
            "tokens": self.tokens,
            "total_steps": self.total_steps,
            "batch_rows": self.batch_rows,
            "scale": self.scale,
            **({"scales": dict(self.scales)} if self.columns is not None else {}),
            "rng": torch.get_rng_state(),
            "stream": self.stream.state_dict(),
            "members": {
                m.name: {
                    "architecture": m.sae.architecture,
                    "config": m.sae.cfg.to_dict(),
                    "model": m.sae.state_dict(),
                    "optimizer": m.optimizer.state_dict(),
                    "dead": m.dead.state_dict(),
                    "controller": None if m.controller is None else m.controller.state_dict(),
                }
                for m in self.members
            },
        }

    def _adopt_legacy_values(self, state: dict[str, Any]) -> None:
        """A run saved before a config field existed trained with that field's old value: where
        this command leaves the field at today's default, the resumed run keeps the old value
        (and the LR it derived), so it goes on as it was started. The adopted fields are listed
        in the state, so that later resumes adopt them again."""
        legacy = set(state.get("legacy_fields", []))
        train = state.get("identity", {}).get("train", {})
        for name, old in LEGACY_TRAIN_VALUES.items():
            if (name in legacy or name not in train) and _at_default(self.cfg, name):
                setattr(self.cfg, name, old)
                self.legacy_fields.append(name)
        for m in self.members:
            saved = state["members"].get(m.name, {}).get("config", {})
            missing = [n for n in LEGACY_SAE_VALUES if n in legacy or n not in saved]
            if not missing or not all(_at_default(m.sae.cfg, n) for n in missing):
                continue
            for name in missing:
                setattr(m.sae.cfg, name, LEGACY_SAE_VALUES[name])
                saved.pop(name, None)  # compared at its old value
            if m.lr_from_rule and "lr" in saved:
                m.sae.cfg.lr = saved["lr"]
            self.legacy_fields += [n for n in missing if n not in self.legacy_fields]

    def _load_state(self) -> None:
        assert self.out is not None
        state = ckpt.load_training_state(self.out / ckpt.STATE_FILE)
        self._adopt_legacy_values(state)
        if "identity" in state:  # states written before it was recorded skip this check
            diff = _first_difference(state["identity"], self.identity())
            if diff:
                field_name, was, now = diff
                raise UserError(
                    f"cannot resume the run in {self.out}: {field_name} differs (trained with "
                    f"{was!r}, now {now!r}); resume with the same settings, or train into a "
                    "new output folder"
                )
        saved = state["members"]
        names = [m.name for m in self.members]
        if sorted(saved) != sorted(names):
            raise UserError(
                f"the run in {self.out} trained SAEs {sorted(saved)}, but this sweep has "
                f"{sorted(names)}; resume with the same sweep"
            )
        for m in self.members:
            s = saved[m.name]
            if s["architecture"] != m.sae.architecture:
                raise UserError(
                    f"the checkpoint of {m.name!r} in {self.out} is a {s['architecture']!r} SAE "
                    f"but the sweep asks for {m.sae.architecture!r}; resume with the same sweep"
                )
            if _with_legacy(s["config"], LEGACY_SAE_VALUES) != m.sae.cfg.to_dict():
                raise UserError(
                    f"the checkpoint of {m.name!r} in {self.out} was trained with another "
                    f"config ({_config_diff(s['config'], m.sae.cfg.to_dict())}); resume with "
                    "the same sweep"
                )
            m.sae.load_state_dict(s["model"])
            m.optimizer.load_state_dict(s["optimizer"])
            m.dead.load_state_dict(s["dead"])
            if m.controller is not None:
                m.controller.load_state_dict(s["controller"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.total_steps, self.batch_rows = state["total_steps"], state["batch_rows"]
        self.scale = state["scale"]
        self.scales = dict(state.get("scales", {}))
        torch.set_rng_state(state["rng"])
        self.stream.load_state_dict(state["stream"])
        self.last_saved_step = self.step

    def _raise_divergence(self, d: Diverged) -> None:
        where = (
            f"the last good checkpoint (step {self.last_saved_step}) is kept in {self.out}"
            if self.last_saved_step is not None and self.out is not None
            else "no checkpoint had been written yet"
        )
        kind = "NaN/infinite" if not math.isfinite(d.value) else f"exploding ({d.value:.3g})"
        raise UserError(
            f"SAE {d.name!r} stopped at step {d.step}: {kind} loss; {where}. "
            "Lower its learning rate or sparsity coefficient and resume or restart"
        )


def train(
    saes: SAEConfig | Sequence[SAEConfig],
    loader: Iterable[Tensor],
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    **kwargs: Any,
) -> dict[str, SAE]:
    """Train one SAE or a sweep on `loader`; returns the trained SAEs by name."""
    return Trainer(saes, loader, cfg or TrainConfig(), out=out, resume=resume, **kwargs).run()


def folded_copy(sae: SAE, scale: float, target_scale: float | None = None) -> SAE:
    """A copy of `sae` that works on raw inputs (training scale folded in), in eval mode;
    `target_scale`: a transcoder's training scale of its target (None: `scale`)."""
    cfg = dataclasses.replace(sae.cfg)
    copy = build_sae(cfg, sae.d_in).to(_device_of(sae))
    if target_scale is None:
        copy.load_checkpoint_tensors(sae.checkpoint_tensors(scale))
    else:
        copy.load_checkpoint_tensors(sae.checkpoint_tensors(scale, target_scale))  # type: ignore[call-arg]
    return copy.eval()


def _width(cols: slice) -> int:
    return int(cols.stop) - int(cols.start)


def _view(batch: Tensor | dict[str, Tensor], hook: Hooks | None) -> Tensor:
    """A recent batch's rows of `hook` (a joint batch is a dict by hook)."""
    return _side(batch, hook) if isinstance(batch, dict) else batch  # type: ignore[arg-type]


def _hook_list(hooks: Hooks) -> list[str]:
    return [hooks] if isinstance(hooks, str) else list(hooks)


def _side(views: dict[str, Tensor], hooks: Hooks) -> Tensor:
    """The rows of one hook, or of several hooks side by side (in their order)."""
    if isinstance(hooks, str):
        return views[hooks]
    return torch.cat([views[h] for h in hooks], dim=1)


def _side_scale(scales: dict[str, float], hooks: Hooks) -> float | list[float]:
    return scales[hooks] if isinstance(hooks, str) else [scales[h] for h in hooks]


def _side_width(columns: dict[str, slice], hooks: Hooks) -> int:
    """The width of one hook, or of each of several hooks (which must agree)."""
    widths = {h: _width(columns[h]) for h in _hook_list(hooks)}
    if len(set(widths.values())) > 1:
        raise UserError(
            "the layers of one dictionary must have one width, but these differ: "
            + ", ".join(f"{h} {w}" for h, w in widths.items())
        )
    return next(iter(widths.values()))


def _device_of(sae: SAE) -> torch.device:
    return next(sae.parameters()).device


def _rows(batches: Iterable[Tensor | dict[str, Tensor]]) -> int:
    return sum(
        next(iter(b.values())).shape[0] if isinstance(b, dict) else b.shape[0] for b in batches
    )


def _set_target(
    c: SAEConfig, source: Hooks | None, target: Hooks | None, columns: dict[str, slice]
) -> None:
    """Fill a transcoder config's input hook and output width from the loader (refusing a
    width that disagrees with the store)."""
    if target is None:
        return
    width = _side_width(columns, target)
    d_out = getattr(c, "d_out", None)
    if d_out is not None and d_out != width:
        raise UserError(
            f"transcoder {c.resolved_name()!r} expects a target of width {d_out} but "
            f"{target!r} has width {width}; drop d_out or use the matching target hook"
        )
    c.d_out = width  # type: ignore[attr-defined]
    if getattr(c, "input_hook", None) is None:
        c.input_hook = source  # type: ignore[attr-defined]


def _calibrates(sae: SAE) -> bool:
    """Whether the architecture fits inference statistics (overrides the no-op hook)."""
    return type(sae).calibrate_inference is not SAE.calibrate_inference


def _unique_names(configs: list[SAEConfig]) -> list[SAEConfig]:
    seen: dict[str, int] = {}
    out = []
    for c in configs:
        name = c.resolved_name()
        if name in seen:
            seen[name] += 1
            c = dataclasses.replace(c, name=f"{name}-{seen[name]}")
        else:
            seen[name] = 0
        out.append(c)
    return out


def _controller(cfg: SAEConfig) -> L0Controller | None:
    target = getattr(cfg, "sparsity_target", lambda: None)()
    if target is None:
        return None
    return L0Controller(target, cfg.target_l0_gain)  # type: ignore[attr-defined]


def _device(name: str, dist: DistContext) -> torch.device:
    if name == "cuda" and dist.enabled:
        import os

        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', dist.rank)}")
    return torch.device(name)


def _loader_meta(loader: Any) -> dict[str, Any]:
    info = getattr(loader, "store_info", None)
    meta: dict[str, Any] = {}
    if isinstance(info, dict):
        meta.update(
            {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, dict, list))}
        )
        model = info.get("model")
        if isinstance(model, dict):
            meta["model_name"] = model.get("name") or model.get("spec")
        elif isinstance(model, str):
            meta["model_name"] = model
    hook = getattr(loader, "hook", None)
    if hook:
        meta["hook_name"] = hook
    return meta


# TrainConfig fields that may change on resume: they do not change what is trained.
RESUMABLE_CHANGES = (
    "save_every_tokens",
    "log_every",
    "device",
    "keep_freed_cpu_memory",
    "progress",
    "wandb",
    "wandb_project",
)
# Fields added after runs were saved without them, with the value those runs trained with
# (issue 17 raised the TopK family's LR and warm-up): see Trainer._adopt_legacy_values.
LEGACY_TRAIN_VALUES: dict[str, Any] = {"lr_warmup_fraction": 0.05, "optimizer": "adam"}
LEGACY_SAE_VALUES: dict[str, Any] = {"lr_base": 2e-4, "lr_min_width": 1}


def _at_default(cfg: Any, name: str) -> bool:
    """Whether a dataclass config's field holds its declared default."""
    default = {f.name: f.default for f in dataclasses.fields(cfg)}.get(name, dataclasses.MISSING)
    return default is not dataclasses.MISSING and getattr(cfg, name) == default


def _with_legacy(saved: dict[str, Any], legacy: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields it predates filled with the values it trained with."""
    return {**{k: v for k, v in legacy.items() if k not in saved}, **saved}


# Store attributes that identify the activations a run reads.
STORE_IDENTITY = (
    "model",
    "model_sha256",
    "dataset",
    "split",
    "text_column",
    "seq_len",
    "bos",
    "dtype",
    "hooks",
    "n_seq",
    "chunk_seqs",
    "committed_sequences",
)


def _first_difference(saved: Any, now: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted field, saved, now) where two nested dicts differ; a field that one
    side does not know (None: a source without store metadata) is not compared."""
    if saved is None or now is None:
        return None
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now), key=str):
            diff = _first_difference(
                saved.get(key), now.get(key), f"{path}.{key}" if path else str(key)
            )
            if diff:
                return diff
        return None
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return None if saved == now else (path or "config", saved, now)


def check_memory(configs: Sequence[SAEConfig], d_in: int, batch: int, device: torch.device) -> None:
    """Refuse a sweep whose parameters, Adam state and per-batch buffers cannot fit in the
    device's free memory, before anything is allocated."""
    from saelab.sae.memory import free_memory

    # Per SAE: encoder + decoder, each with a gradient and two Adam moments (4 copies of
    # float32), plus the dense [batch, d_sae] pre-activations a step builds (a few buffers).
    need = sum(_memory_bytes(c, d_in, batch) for c in configs)
    free = free_memory(device)
    if free is not None and need > free:
        widths = ", ".join(str(c.d_sae) for c in configs)
        raise UserError(
            f"the SAEs (d_sae {widths}, d_in {d_in}) need about {need / 2**30:.3g} GiB of "
            f"{device.type} memory but {free / 2**30:.3g} GiB is free; choose a smaller d_sae, "
            "fewer SAEs in the sweep or a smaller batch"
        )


def _memory_bytes(c: SAEConfig, d_in: int, batch: int) -> int:
    """`check_memory`'s estimate for one SAE; a cross-layer transcoder over L layers has L
    encoders and L(L+1)/2 decoder blocks of its per-layer d_sae."""
    n = len(getattr(c, "input_hooks", None) or ()) or 1
    rows = c.d_sae * (n + n * (n + 1) // 2) if n > 1 else 2 * c.d_sae
    return 16 * d_in * rows + 3 * 4 * batch * n * c.d_sae


def _config_diff(saved: dict, now: dict) -> str:
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys)
