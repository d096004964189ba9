"""The SAE-spliced model: SAEs at any set of hooks, each keeping its error node.

At every spliced hook the activation x is split into the SAE's sparse features f (the active
set: `idx`, `vals` per row, never a dense `[tokens, d_sae]`) and the error ε = x − x̂, and
the hook outputs x̂ + ε. The spliced model therefore computes the original model's logits
(up to float rounding), and gradients reach both f and ε: ∂m/∂ε is the gradient at the hook's
output g, and ∂m/∂f_i = g · W_dec[i] (the decoder is affine in f).

An attention SAE is spliced at `blocks.L.attn.hook_z` (`[B, T, n_heads, d_head]`, before the
output projection W_O): every edit here sees it flattened to `[B, T, n_heads · d_head]`, the
heads concatenated as the SAE reads them and as the activation store holds them, and its
result is put back in the per-head shape, so the SAE's output and its error term reach the
residual stream through W_O like the heads' own output.

Hooks are installed by `hooks()`, a context manager that removes them on the way out, also when
the body raises. Nothing here knows about tasks or circuits; steering may reuse it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.sae.base import Code

SELECTIONS = ("frozen", "reselect")
"""How a spliced SAE at a downstream hook encodes an input that an upstream patch or ablation
changed: `frozen` keeps the clean run's active latents (their values follow the input; no other
latent turns on or off), `reselect` runs the SAE's own selection again (TopK picks a new top k)."""

SUBMODULES = {"attn.hook_z": 0, "hook_attn_out": 1, "hook_mlp_out": 2, "hook_resid_post": 3}
"""The hooks an SAE may be spliced at, in their order inside one block (the heads' outputs
`attn.hook_z` come before the output projection that makes `hook_attn_out`)."""
_HOOK = re.compile(r"^blocks\.(\d+)\.(attn\.hook_z|hook_attn_out|hook_mlp_out|hook_resid_post)$")
_LABELS = ("z", "attn", "mlp", "resid")
_PER_HEAD = re.compile(r"\.attn\.hook_(z|q|k|v|result)$")
"""Hooks whose activation is `[batch, pos, n_heads, d_head]`: edits see them flattened."""

HookEdit = Callable[[Tensor], Tensor | None]
"""A hook function on the activation `[batch, pos, d]`: returns a replacement or None."""


def hook_order(hook: str) -> tuple[int, int]:
    """(layer, place in the block) of a spliceable hook; a one-line error for any other."""
    match = _HOOK.match(hook)
    if not match:
        raise UserError(
            f"cannot splice an SAE at {hook!r}: circuits use blocks.L.hook_resid_post, "
            "blocks.L.hook_attn_out, blocks.L.hook_mlp_out or blocks.L.attn.hook_z"
        )
    return int(match.group(1)), SUBMODULES[match.group(2)]


def hook_label(hook: str) -> str:
    """Short name for displays: `resid_2`, `mlp_4`, `attn_3`, `z_3` (the heads' outputs)."""
    layer, place = hook_order(hook)
    return f"{_LABELS[place]}_{layer}"


def hook_width(model, hook: str) -> int:
    """The activation width at a spliceable hook as edits see it: d_model, or
    n_heads · d_head at `attn.hook_z` (the heads concatenated)."""
    if hook_order(hook)[1] == SUBMODULES["attn.hook_z"]:
        cfg = model.bridge.cfg
        return cfg.n_heads * cfg.d_head
    return model.d_model


def per_token(name: str, edit: HookEdit) -> HookEdit:
    """`edit` as a hook function on `name`'s activation: a per-head hook's `[B, T, H, d_head]`
    is handed over as `[B, T, H · d_head]` and the result put back in its shape."""
    if not _PER_HEAD.search(name):
        return edit

    def flat(act: Tensor) -> Tensor | None:
        out = edit(act.flatten(2))
        return None if out is None else out.reshape(act.shape)

    return flat


@contextlib.contextmanager
def hooks(bridge, edits: dict[str, HookEdit]) -> Iterator[None]:
    """Install forward hooks on a TransformerBridge for the body; always removed afterwards."""
    installed = []
    try:
        for name, edit in edits.items():
            point = bridge.hook_dict[name]
            fn = per_token(name, edit)
            handle = point.add_hook(lambda act, hook, _edit=fn: _edit(act))
            installed.append((point, handle))
        yield
    finally:
        for point, handle in installed:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


@dataclass
class SpliceState:
    """What one spliced hook saw in one forward pass (rows = batch × positions, flattened)."""

    x: Tensor
    """The hook's original activation `[B, T, d]`."""
    idx: Tensor
    """Active latents per row `[B*T, k]` (padded slots hold value 0)."""
    vals: Tensor
    """Their activations `[B*T, k]`, in the autograd graph of x."""
    x_hat: Tensor
    """The reconstruction `[B, T, d]`."""
    err: Tensor
    """The error node ε = x − x̂ `[B, T, d]`."""
    out: Tensor
    """What the hook passed on, x̂ + ε (equal to x up to rounding)."""


@dataclass
class SplicedModel:
    """A loaded model with one SAE per hook (hooks sorted in computation order)."""

    model: object
    """The `saelab.activations.models.LoadedModel`."""
    saes: dict[str, torch.nn.Module]
    """Hook name → SAE (`saelab.sae.base.SAE`), each reading the hook's raw activations."""
    folders: dict[str, str] = field(default_factory=dict)
    """Hook name → the checkpoint folder it came from (provenance)."""
    selection: str = "frozen"
    """`frozen` or `reselect` (see SELECTIONS): applies inside `frozen_at`."""
    _frozen: dict[str, tuple[Tensor, Tensor, tuple[int, int]]] = field(
        default_factory=dict, repr=False
    )
    """Hook → (clean active latents `[B*T, k]`, their mask, (B, T)) while `frozen_at` holds."""

    def __post_init__(self) -> None:
        self.saes = dict(sorted(self.saes.items(), key=lambda kv: hook_order(kv[0])))
        self.model.validate_hooks(list(self.saes))
        if self.selection not in SELECTIONS:
            raise UserError(
                f"unknown selection policy {self.selection!r}: choose {', '.join(SELECTIONS)}"
            )
        for hook, sae in self.saes.items():
            width = self.width(hook)
            if sae.d_in != width:
                raise UserError(
                    f"the SAE for {hook} reads width {sae.d_in} but {self.model.name} has "
                    f"width {width} there: it was trained on another model or hook"
                )
            sae.eval()
            for p in sae.parameters():
                p.requires_grad_(False)

    @property
    def hooks(self) -> list[str]:
        return list(self.saes)

    def width(self, hook: str) -> int:
        """The activation width at a spliced hook as edits see it (`hook_width`)."""
        return hook_width(self.model, hook)

    @property
    def bridge(self):
        return self.model.bridge

    def forward(
        self,
        tokens: Tensor,
        edits: dict[str, HookEdit] | None = None,
        capture: list[str] | tuple[str, ...] = (),
        stop_at_layer: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the model with `edits` at hooks; returns (logits or last residual, captured).

        `capture` names hooks whose (edited) output is returned; edits run first."""
        captured: dict[str, Tensor] = {}
        fns: dict[str, HookEdit] = {}
        for name in set(edits or {}) | set(capture):
            fns[name] = _edit_then_capture((edits or {}).get(name), name, captured, name in capture)
        with hooks(self.bridge, fns):
            if stop_at_layer is None:
                out = self.bridge(tokens, return_type="logits")
            else:
                out = self.bridge(tokens, stop_at_layer=stop_at_layer)
        return out, captured

    def encode(self, hook: str, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sparse features and reconstruction of `[B, T, d]`: (idx, vals, x_hat).

        Inside `frozen_at` (selection `frozen`) the active set is the clean run's, repeated
        when x holds several copies of the clean batch."""
        sae = self.saes[hook]
        rows = x.reshape(-1, sae.d_in)
        if hook not in self._frozen:
            code = sae.encode_sparse(rows)
        else:
            idx, mask = self._held(hook, x)
            code = Code(idx, sae.encode_at(rows, idx) * mask, sae.d_sae)
        x_hat = sae.decode_sparse(code).reshape(x.shape)
        return code.idx, code.vals, x_hat

    @contextlib.contextmanager
    def frozen_at(self, states: dict[str, SpliceState]) -> Iterator[None]:
        """In the body, the SAEs keep the active sets of `states` (a clean run), when the
        selection policy is `frozen`; with `reselect` this changes nothing. Inputs encoded in
        the body must be that run's batch `[B, T, d]` or copies of it stacked along B."""
        if self.selection != "frozen":
            yield
            return
        before = self._frozen
        self._frozen = {
            h: (s.idx, (s.vals.detach() != 0).to(s.vals.dtype), s.x.shape[:2])
            for h, s in states.items()
        }
        try:
            yield
        finally:
            self._frozen = before

    def _held(self, hook: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """The frozen active set and mask for x, repeated for stacked copies of the batch."""
        idx, mask, (B, T) = self._frozen[hook]
        if x.dim() != 3 or x.shape[1] != T or x.shape[0] % B:  # per-head hooks come flat
            raise ValueError(
                f"the frozen selection at {hook} holds a batch of {B} prompts x {T} tokens, got "
                f"{tuple(x.shape[:-1])}: encode other prompts outside `frozen_at`"
            )
        reps = x.shape[0] // B
        return idx.repeat(reps, 1), mask.repeat(reps, 1)

    def switched(self, hook: str, x: Tensor) -> Tensor | None:
        """Per row of x `[B, T, d]`: latents that re-selection would turn on which the frozen
        clean set does not hold, `[B, T]` (None outside `frozen_at`)."""
        if hook not in self._frozen:
            return None
        B, T, d = x.shape
        code = self.saes[hook].encode_sparse(x.reshape(-1, d))
        idx, mask = self._held(hook, x)
        on = code.vals != 0
        held = ((code.idx.unsqueeze(-1) == idx.unsqueeze(1)) & (mask.unsqueeze(1) != 0)).any(-1)
        return (on & ~held).sum(-1).float().view(B, T)

    def splice_edit(self, hook: str, states: dict[str, SpliceState], grads: bool) -> HookEdit:
        """The splice itself: x → x̂ + ε, recording the state (with retained gradients)."""

        def edit(x: Tensor) -> Tensor:
            if grads and not x.requires_grad:  # the first spliced hook
                x = x.detach().requires_grad_(True)
            idx, vals, x_hat = self.encode(hook, x)
            if grads:
                # ε from a second, equal encoding: f and ε are then separate nodes
                # (∂out/∂f = W_dec, ∂out/∂ε = I) while ∂out/∂x stays the identity.
                err = x - self.encode(hook, x)[2]
                err.retain_grad()
                vals.retain_grad()
            else:
                err = x - x_hat
            out = x_hat + err
            if grads:
                out.retain_grad()
            states[hook] = SpliceState(x, idx, vals, x_hat, err, out)
            return out

        return edit

    def run_spliced(
        self,
        tokens: Tensor,
        grads: bool = False,
        extra: dict[str, HookEdit] | None = None,
        capture: tuple[str, ...] = (),
    ) -> tuple[Tensor, dict[str, SpliceState], dict[str, Tensor]]:
        """A forward pass with every SAE spliced in; returns (logits, states, captured)."""
        states: dict[str, SpliceState] = {}
        frozen, self._frozen = self._frozen, {}  # a run of its own: its own selection
        try:
            return self._run_spliced(tokens, grads, extra, capture, states)
        finally:
            self._frozen = frozen

    def _run_spliced(self, tokens, grads, extra, capture, states):
        edits = {h: self.splice_edit(h, states, grads) for h in self.hooks}
        for name, fn in (extra or {}).items():
            if name in edits:
                raise ValueError(f"{name} is spliced; edit it through the splice")
            edits[name] = fn
        with torch.enable_grad() if grads else torch.no_grad():
            logits, captured = self.forward(tokens, edits, capture)
        return logits, states, captured


def _edit_then_capture(
    edit: HookEdit | None, name: str, captured: dict[str, Tensor], keep: bool
) -> HookEdit:
    def fn(x: Tensor) -> Tensor:
        out = edit(x) if edit is not None else None
        out = x if out is None else out
        if keep:
            captured[name] = out
        return out

    return fn


# -- loading ---------------------------------------------------------------------------------


def sae_folders(paths: list[str]) -> list[Path]:
    """SAE folders given directly, or every SAE subfolder of a sweep folder."""
    from saelab.sae.checkpoint import CFG_FILE

    found: list[Path] = []
    for path in paths:
        root = Path(path)
        if (root / CFG_FILE).is_file():
            found.append(root)
            continue
        subs = sorted(p.parent for p in root.glob(f"*/{CFG_FILE}"))
        if not subs:
            raise UserError(f"{path!r} is neither an SAE folder nor a sweep folder of them")
        found.extend(subs)
    return found


def load_spliced(
    model, paths: list[str], device: str = "cpu", selection: str = "frozen"
) -> SplicedModel:
    """Load SAE folders (or sweep folders), check each against the model, one SAE per hook."""
    from saelab.sae.checkpoint import load_sae, read_cfg

    saes: dict[str, torch.nn.Module] = {}
    folders: dict[str, str] = {}
    for folder in sae_folders(paths):
        cfg = read_cfg(folder)
        block = cfg.get("saelab") or {}
        hook = cfg.get("hook_name") or block.get("hook_name")
        if not hook:
            raise UserError(f"{folder} does not record the hook it was trained on (hook_name)")
        hook_order(hook)
        sha = block.get("model_sha256") or (block.get("provenance") or {}).get("model_sha256")
        if sha and sha != model.weights_sha256:
            raise UserError(
                f"SAE {folder} was trained on another model's activations "
                f"({cfg.get('model_name')}, weights {sha[:12]}…) than {model.name} "
                f"({model.weights_sha256[:12]}…)"
            )
        if hook in saes:
            raise UserError(
                f"two SAEs for {hook} ({folders[hook]} and {folder}): give one SAE per hook"
            )
        saes[hook] = load_sae(folder, device=device)
        folders[hook] = str(folder)
    return SplicedModel(model, saes, folders, selection)
