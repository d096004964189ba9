"""Llama-family blocks on a window of positions, with hand-written vector-Jacobian products:
the fast edge path's backward without autograd.

What `window.run_blocks` plus `autograd.grad(is_grads_batched=True)` compute, written out for
the blocks of the Llama family (RMSNorm, rotary grouped-query attention, SiLU-gated MLP, no
biases): one forward over the prompts saves what the backward reads, and each backward row
then names its prompt. Rows are therefore the (node, prompt) pairs that carry a seed, not
slots x prompts (where a slot runs every prompt whether or not a node is active on it), and
each backward is a handful of plain matmuls on `[rows, d]` with no graph, vmap or hook calls.

The positions before the window enter the attention as constant keys and values (each distinct
prefix runs once, in the same matmuls as the window), as `window.PrefixKV` does for the
bridge's blocks.

`LlamaWindow.build` returns None for any block it does not recognise, and `mismatch` compares
every forward with the model's own values at the downstream hooks (recorded in the spliced run)
before the fast path trusts its backward; `tests/circuits/test_window_vjp.py` checks the
backward against autograd through the bridge's blocks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.circuits.splice import SUBMODULES, SplicedModel, hook_order

Z, ATTN, MLP, RESID = (
    SUBMODULES[h] for h in ("attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
)
"""Places inside a block (`SUBMODULES`); a leaf or target may be any but `attn.hook_z`."""

_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per decoder layer: the stacked weights, with the source tensors' (address, version) they
were stacked from (rebuilt when a weight is replaced or changed in place)."""


@dataclass
class _Block:
    """One decoder layer's weights, taken from the bridge (not copied)."""

    ln1: Tensor
    """input RMSNorm weight `[d]`."""
    ln2: Tensor
    """post-attention RMSNorm weight `[d]`."""
    eps: float
    """RMSNorm epsilon (both norms)."""
    W_qkv: Tensor
    """query, key and value projections stacked `[d_q + 2 d_kv, d]`."""
    W_o: Tensor
    """attention output projection `[d, d_q]`."""
    W_gu: Tensor
    """gate and up projections stacked `[2 d_mlp, d]`."""
    W_down: Tensor
    """MLP down projection `[d, d_mlp]`."""
    n_heads: int
    """query heads."""
    n_kv: int
    """key-value heads (grouped-query attention: query head h reads key-value head h // (H / n_kv))."""
    d_head: int
    """width of one head."""
    scale: float
    """the attention scores' factor."""


def _block_weights(layer) -> _Block | None:
    """The weights of a Llama decoder layer (by structure: RMSNorms, q/k/v/o projections
    without bias, a SiLU-gated MLP without bias), or None for anything else."""
    try:
        attn, mlp = layer.self_attn, layer.mlp
        n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
        projections = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        projections += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(getattr(p, "bias", None) is not None for p in projections):
            return None
        if type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return None
        eps = float(n1.variance_epsilon)
        if float(n2.variance_epsilon) != eps or getattr(attn, "sliding_window", None):
            return None
        w = [p.weight.detach() for p in projections]
        stamp = tuple((t.data_ptr(), t._version) for t in w + [n1.weight, n2.weight])
        cached = _WEIGHTS.get(layer)
        if cached is not None and cached[0] == stamp:  # the stacked copies are still current
            return cached[1]
        d_head = int(attn.head_dim)
        n_heads, n_kv = w[0].shape[0] // d_head, w[1].shape[0] // d_head
        block = _Block(
            ln1=n1.weight.detach(),
            ln2=n2.weight.detach(),
            eps=eps,
            W_qkv=torch.cat(w[:3]),
            W_o=w[3],
            W_gu=torch.cat(w[4:6]),
            W_down=w[6],
            n_heads=n_heads,
            n_kv=n_kv,
            d_head=d_head,
            scale=float(attn.scaling),
        )
        _WEIGHTS[layer] = (stamp, block)
        return block
    except AttributeError:
        return None


def _rms(x: Tensor, eps: float) -> Tensor:
    """1 / RMS(x) over the last dimension `[..., 1]`."""
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rms_back(g: Tensor, x: Tensor, inv: Tensor, w: Tensor) -> Tensor:
    """The cotangent of x in y = x · inv · w, inv = 1 / RMS(x), given the cotangent g of y."""
    gw = g * w
    return inv * gw - x * (inv.pow(3) * (gw * x).mean(-1, keepdim=True))


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + _rotate_half(x) * sin


def _rope_back(g: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # rotate_half is R x with R^T = -R
    return g * cos - _rotate_half(g * sin)


class LlamaWindow:
    """Blocks `first..last` on positions `start..start+P-1` of every prompt, the positions
    before `start` as constant keys and values; `vjp` runs the backward for any rows."""

    def __init__(self, blocks: list[_Block], first: int, cos: Tensor, sin: Tensor) -> None:
        self.blocks = blocks
        self.first = first
        self.cos, self.sin = cos, sin  # `[1, T, d_head]`, every position of the prompts
        self.saved: list[dict] = []  # per block, what `vjp` and `mismatch` read

    @classmethod
    def build(cls, spliced: SplicedModel, first: int, last: int, kw: dict) -> LlamaWindow | None:
        """The window over blocks first..last, or None where a block is not a plain Llama
        decoder layer. `kw`: a block's keywords in a full forward (`window.block_kwargs`)."""
        blocks = []
        for i in range(first, last + 1):
            block = _block_weights(spliced.bridge.blocks[i].original_component)
            if block is None:
                return None
            blocks.append(block)
        cos, sin = kw["position_embeddings"]
        return cls(blocks, first, cos, sin)

    def _attend(self, blk: _Block, qkv: Tensor, start: int, prefix) -> tuple:
        """Attention of projected queries, keys and values `[B, P, ·]` at positions start..,
        after the prefix's keys and values; returns (z `[B, P, d_q]`, this span's (k, v),
        what the backward reads)."""
        B, P, _ = qkv.shape
        H, Hk, dh = blk.n_heads, blk.n_kv, blk.d_head
        cos = self.cos[:, start : start + P].unsqueeze(1)
        sin = self.sin[:, start : start + P].unsqueeze(1)
        q, k, v = qkv.split([H * dh, Hk * dh, Hk * dh], -1)
        q = _rope(q.view(B, P, H, dh).transpose(1, 2), cos, sin)
        k = _rope(k.view(B, P, Hk, dh).transpose(1, 2), cos, sin)
        v = v.view(B, P, Hk, dh).transpose(1, 2)
        if prefix is not None:
            K, V = torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2)
        else:
            K, V = k, v
        S0 = K.shape[2] - P
        # query head h reads key-value head h // G: group the queries under their kv head
        G = H // Hk
        qg = q.reshape(B, Hk, G * P, dh)
        scores = (qg @ K.transpose(-1, -2)) * blk.scale  # [B, Hk, G·P, S0 + P]
        if P > 1:
            mask = torch.ones(P, S0 + P, dtype=torch.bool).tril(S0)
            scores = scores.masked_fill(~mask.repeat(G, 1), float("-inf"))
        A = torch.softmax(scores, -1)
        z = (A @ V).view(B, H, P, dh).transpose(1, 2).reshape(B, P, H * dh)
        return z, (k, v), {"q": qg, "K": K, "V": V, "A": A, "cos": cos, "sin": sin}

    @torch.no_grad()
    def forward(
        self,
        hidden: Tensor,
        start: int,
        prefix: Tensor | None = None,
        inverse: Tensor | None = None,
    ) -> Tensor:
        """Run the blocks on `hidden` `[B, P, d]` (the residual entering block `first` at
        positions start..start+P-1), saving what `vjp` reads; returns the last block's output.

        `prefix` `[n, start, d]`: the residual entering block `first` at positions 0..start-1
        of n distinct prefixes, prompt b's being `prefix[inverse[b]]`. It runs alongside the
        window (one pass over each weight matrix for both) and supplies the window's constant
        keys and values."""
        self.saved = []
        B, P, d = hidden.shape
        n_pre = 0 if prefix is None else prefix.shape[0] * prefix.shape[1]
        x = hidden.reshape(B * P, d)
        if n_pre:
            x = torch.cat([prefix.reshape(n_pre, d), x])
        win = slice(n_pre, None)
        for blk in self.blocks:
            inv1 = _rms(x, blk.eps)
            qkv = (x * inv1 * blk.ln1) @ blk.W_qkv.T
            kv = None
            z = []
            if n_pre:
                pre = qkv[:n_pre].view(prefix.shape[0], prefix.shape[1], -1)
                zp, (k, v), _ = self._attend(blk, pre, 0, None)
                kv = (k[inverse], v[inverse])
                z.append(zp.reshape(n_pre, -1))
            zw, _, att = self._attend(blk, qkv[win].view(B, P, -1), start, kv)
            z.append(zw.reshape(B * P, -1))
            attn_out = torch.cat(z) @ blk.W_o.T
            x1 = x + attn_out
            inv2 = _rms(x1, blk.eps)
            gate, up = ((x1 * inv2 * blk.ln2) @ blk.W_gu.T).chunk(2, -1)
            sig = torch.sigmoid(gate)
            act = gate * sig
            mlp_out = (act * up) @ blk.W_down.T
            out = x1 + mlp_out
            # the MLP's local derivatives: d mlp_in = [d_h · up · silu'(gate), d_h · silu(gate)]
            coef = torch.cat([up[win] * sig[win] * (1 + gate[win] * (1 - sig[win])), act[win]], -1)
            self.saved.append(
                {
                    "P": P,
                    "x0": x[win].view(B, P, d),
                    "inv1": inv1[win].view(B, P, 1),
                    "x1": x1[win].view(B, P, d),
                    "inv2": inv2[win].view(B, P, 1),
                    "coef": coef.view(B, P, -1),
                    "sites": {  # the values at the places a hook may read
                        ATTN: attn_out[win].view(B, P, d),
                        MLP: mlp_out[win].view(B, P, d),
                        RESID: out[win].view(B, P, d),
                    },
                    **att,
                }
            )
            x = out
        return x[win].view(B, P, d)

    def mismatch(self, hidden: Tensor, expected: dict[tuple[int, int], Tensor]) -> str | None:
        """None where the last `forward` reproduces the model's values at the given sites
        {(layer, place): `[B, P, d]`}, else what differs. Per (prompt, position) row, the error
        is measured against what the window's blocks add there (`hidden`: what entered the
        first block), so the residual stream's few large dimensions cannot hide it: float32
        rounding gives ~1e-5, one weight off by 0.1% ~1e-3, and the bound is 1e-4."""
        for (layer, place), want in expected.items():
            got = self.saved[layer - self.first]["sites"][place]
            added = want - hidden if place == RESID else want
            rel = (got - want).norm(dim=-1) / (added.norm(dim=-1) + 1e-12)
            worst = float(rel.max()) if rel.numel() else 0.0
            if not worst <= 1e-4:
                return f"blocks.{layer} place {place}: relative error {worst:.3g}"
        return None

    def _mlp_back(self, i: int, g: Tensor, rows: Tensor) -> Tensor:
        """The cotangent of x1 through the MLP branch, from the cotangent g of mlp_out."""
        blk, s = self.blocks[i], self.saved[i]
        R, P, _ = g.shape
        d_h = (g @ blk.W_down).unsqueeze(-2)  # [R, P, 1, d_mlp]
        d_n = (s["coef"][rows].view(R, P, 2, -1) * d_h).view(R, P, -1) @ blk.W_gu
        return _rms_back(d_n, s["x1"][rows], s["inv2"][rows], blk.ln2)

    def _attn_back(self, i: int, g: Tensor, rows: Tensor) -> Tensor:
        """The cotangent of x0 through the attention branch, from the cotangent g of
        attn_out; the prefix's keys and values are constants."""
        blk, s = self.blocks[i], self.saved[i]
        R, P = g.shape[0], s["P"]
        H, Hk, dh, G = blk.n_heads, blk.n_kv, blk.d_head, blk.n_heads // blk.n_kv
        q, K, V, A = s["q"][rows], s["K"][rows], s["V"][rows], s["A"][rows]
        dz = (g @ blk.W_o).view(R, P, H, dh).transpose(1, 2).reshape(R, Hk, G * P, dh)
        dA = dz @ V.transpose(-1, -2)
        dS = A * (dA - (dA * A).sum(-1, keepdim=True)) * blk.scale
        dq = (dS @ K).view(R, H, P, dh)
        win = slice(K.shape[2] - P, None)  # only the window's keys and values move
        dk = (dS[..., win].transpose(-1, -2) @ q).view(R, Hk, P, dh)
        dv = (A[..., win].transpose(-1, -2) @ dz).view(R, Hk, P, dh)
        cos, sin = s["cos"], s["sin"]
        dq, dk = _rope_back(dq, cos, sin), _rope_back(dk, cos, sin)
        d_qkv = torch.cat(
            [t.transpose(1, 2).reshape(R, P, -1) for t in (dq, dk, dv)], -1
        )  # [R, P, d_q + 2 d_kv]
        return _rms_back(d_qkv @ blk.W_qkv, s["x0"][rows], s["inv1"][rows], blk.ln1)

    @torch.no_grad()
    def vjp(
        self,
        seed: Tensor,
        rows: Tensor,
        leaf: tuple[int, int],
        target: tuple[int, int],
        frozen: set[tuple[int, int]],
    ) -> Tensor:
        """J^T seed for rows `[R, P, d]` (row r on prompt `rows[r]`): the cotangent at the
        `leaf` site (layer, place) of `seed` on the `target` site, through direct paths only
        (a branch whose output site is in `frozen` passes nothing back)."""
        r: Tensor | None = None  # the residual stream's cotangent; None while it is zero

        def plus(x: Tensor | None, y: Tensor | None) -> Tensor | None:
            return y if x is None else x if y is None else x + y

        for layer in range(target[0], self.first - 1, -1):
            i = layer - self.first
            if (layer, RESID) == target:
                r = seed
            d_mlp = plus(r, seed if (layer, MLP) == target else None)
            if (layer, MLP) == leaf:
                return torch.zeros_like(seed) if d_mlp is None else d_mlp
            if d_mlp is not None and (layer, MLP) not in frozen:
                r = plus(r, self._mlp_back(i, d_mlp, rows))
            d_attn = plus(r, seed if (layer, ATTN) == target else None)
            if (layer, ATTN) == leaf:
                return torch.zeros_like(seed) if d_attn is None else d_attn
            if d_attn is not None and (layer, ATTN) not in frozen:
                r = plus(r, self._attn_back(i, d_attn, rows))
        return torch.zeros_like(seed) if r is None else r


def sites(a: str, b: str, hooks: list[str]) -> tuple | None:
    """(leaf, target, frozen) sites for the pair of spliced hooks a → b, or None where a or b
    is a place `LlamaWindow.vjp` does not take (the heads' outputs `attn.hook_z`). A frozen
    `attn.hook_z` cuts its block's attention branch, as a frozen `hook_attn_out` does."""
    leaf, target = hook_order(a), hook_order(b)
    if leaf[1] not in (ATTN, MLP, RESID) or target[1] not in (ATTN, MLP, RESID):
        return None
    frozen = set()
    for h in hooks:
        layer, place = hook_order(h)
        if leaf < (layer, place) < target:
            frozen.add((layer, ATTN if place == Z else place))
    if any(place == RESID for _, place in frozen):  # not a direct pair (`hook_pairs`)
        return None
    return leaf, target, frozen
