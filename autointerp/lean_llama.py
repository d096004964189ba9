"""A lean forward pass of a Llama-family causal LM over a ragged batch, for the local server.

`LeanLlama.forward` takes several sequences at once, each a chunk of new tokens (a prompt, one
decode token, or a token and its speculative drafts) written into that sequence's own
preallocated KV cache. The chunks' rows are concatenated, so every weight matrix is read once
per step for all of them (decoding on a CPU is bound by reading the weights), and attention runs
per chunk against its own cache (no padding, no cross-sequence mask). It computes what
`LlamaForCausalLM` computes, with the same operations in the same order (RMSNorm in float32, the
rotary table from the model's `inv_freq`, SDPA with grouped KV heads); q/k/v and gate/up are
each one matrix (the HF modules' weights become views into it), and steps of a few rows use
oneDNN-packed copies of the weights (`SMALL_ROWS`). So a row's logits are not bitwise fixed:
steps of 2 to `SMALL_ROWS` rows multiply through oneDNN, 1 row and more rows through MKL, and a
row's logits depend on the step it is in. They equal transformers' and the one-at-a-time
output up to float rounding (an exact near-tie could flip a greedy token).
Models it does not cover (`supports` says which) are served through transformers instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROPE_POSITIONS = 32768
"""Most positions the rotary table covers (or the model's own limit, if smaller)."""
SMALL_ROWS = 16
"""Steps of 2 to this many rows (a token and its drafts, a few requests decoding) multiply by
oneDNN-packed copies of the weights: MKL's sgemm repacks the weights on every call at so few
rows, which made such a step cost 2-3x a 1-row step (oneDNN: ~1.3-1.7x). One row (plain
decoding) and more rows (prefill) use MKL, as transformers does."""


def supports(model) -> str | None:
    """None if `model` is a plain Llama this module covers, else why not."""
    cfg = model.config
    if cfg.model_type != "llama" or type(model).__name__ != "LlamaForCausalLM":
        return f"model type {cfg.model_type!r}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type')!r}"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biases"
    if cfg.hidden_act != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return f"activation {cfg.hidden_act!r}"
    if next(model.parameters()).dtype != torch.float32:
        return "not float32"
    return None


@dataclass
class Chunk:
    """New tokens of one sequence for one forward step."""

    cache: torch.Tensor
    """That sequence's KV cache, [layers, 2, kv_heads, capacity, head_dim]."""
    start: int
    """Position of the first new token (= tokens already in the cache)."""
    ids: list[int]
    logits_from: int
    """Logits are returned for rows logits_from.. of this chunk (0: all; len(ids)-1: the last)."""


class LeanLlama:
    def __init__(self, model) -> None:
        why = supports(model)
        if why:
            raise ValueError(f"LeanLlama does not cover this model ({why})")
        cfg = model.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        base = model.model
        self.embed = base.embed_tokens.weight
        self.final_norm = base.norm.weight
        self.lm_head = model.lm_head.weight
        self.layers = [_fuse(layer) for layer in base.layers]
        self.packed = [tuple(_pack(w) for w in layer) for layer in self.layers]
        self.lm_head_packed = _pack(self.lm_head)
        limit = min(getattr(cfg, "max_position_embeddings", ROPE_POSITIONS), ROPE_POSITIONS)
        freqs = torch.arange(limit).float()[:, None] * base.rotary_emb.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = getattr(base.rotary_emb, "attention_scaling", 1.0)
        self.cos, self.sin = emb.cos() * scale, emb.sin() * scale
        self.max_positions = limit

    def new_cache(self, capacity: int) -> torch.Tensor:
        shape = (self.n_layers, 2, self.n_kv, capacity, self.head_dim)
        return torch.empty(shape, dtype=self.embed.dtype)

    def forward(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        """Run the chunks' new tokens through the model, filling their caches; per chunk, the
        logits of its rows `logits_from`.. ([rows, vocab])."""
        with torch.inference_mode():
            ids, positions, bounds = [], [], []
            for c in chunks:
                bounds.append((len(ids), len(ids) + len(c.ids)))
                ids += c.ids
                positions += range(c.start, c.start + len(c.ids))
            pos = torch.tensor(positions)
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
            h = F.embedding(torch.tensor(ids), self.embed)
            q_width, kv_width = self.n_heads * self.head_dim, self.n_kv * self.head_dim
            for i, (ln1, qkv_w, o_w, ln2, gu_w, down_w) in enumerate(self.layers):
                _, qkv_p, o_p, _, gu_p, down_p = self.packed[i]
                x = self._norm(h, ln1)
                q, k, v = _linear(x, qkv_w, qkv_p).split((q_width, kv_width, kv_width), dim=-1)
                q = _rope(q.view(len(ids), self.n_heads, self.head_dim), cos, sin)
                k = _rope(k.view(len(ids), self.n_kv, self.head_dim), cos, sin)
                v = v.view(len(ids), self.n_kv, self.head_dim)
                outs = [
                    self._attend(c, i, q[a:b], k[a:b], v[a:b])
                    for c, (a, b) in zip(chunks, bounds)
                ]  # fmt: skip
                h = h + _linear(outs[0] if len(outs) == 1 else torch.cat(outs), o_w, o_p)
                x = self._norm(h, ln2)
                gate, up = _linear(x, gu_w, gu_p).chunk(2, dim=-1)
                h = h + _linear(F.silu(gate) * up, down_w, down_p)
            keep = [r for c, (a, b) in zip(chunks, bounds) for r in range(a + c.logits_from, b)]
            logits = _linear(
                self._norm(h[keep], self.final_norm), self.lm_head, self.lm_head_packed
            )
            out, at = [], 0
            for c, (a, b) in zip(chunks, bounds):
                n = b - a - c.logits_from
                out.append(logits[at : at + n])
                at += n
            return out

    def _attend(self, c: Chunk, layer: int, q, k, v) -> torch.Tensor:
        n, end = q.shape[0], c.start + q.shape[0]
        kv = c.cache[layer]
        kv[0, :, c.start : end] = k.transpose(0, 1)
        kv[1, :, c.start : end] = v.transpose(0, 1)
        mask, causal = None, False
        if n > 1 and c.start == 0:
            causal = True
        elif n > 1:  # new rows see the cached prefix and the new rows up to their own
            mask = torch.ones(n, end, dtype=torch.bool).tril(c.start)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], kv[0, :, :end][None], kv[1, :, :end][None],
            attn_mask=mask, is_causal=causal, enable_gqa=True,
        )  # fmt: skip
        return out[0].transpose(0, 1).reshape(n, -1)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _linear(x: torch.Tensor, w: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor:
    if packed is not None and 1 < x.shape[0] <= SMALL_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return F.linear(x, w)


def _pack(w: torch.Tensor) -> torch.Tensor | None:
    """`w` packed for oneDNN's small-batch matmul (None for vectors, or where torch has no
    oneDNN)."""
    if w.dim() != 2:
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8)
    except (AttributeError, RuntimeError):
        return None


def _fuse(layer) -> tuple:
    """The layer's weights, q/k/v and gate/up fused; the HF modules then hold views of them."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
    at = 0
    for module in (attn.q_proj, attn.k_proj, attn.v_proj):
        rows = module.weight.shape[0]
        module.weight = torch.nn.Parameter(qkv[at : at + rows], requires_grad=False)
        at += rows
    rows = mlp.gate_proj.weight.shape[0]
    mlp.gate_proj.weight = torch.nn.Parameter(gate_up[:rows], requires_grad=False)
    mlp.up_proj.weight = torch.nn.Parameter(gate_up[rows:], requires_grad=False)
    return (
        layer.input_layernorm.weight,
        qkv,
        attn.o_proj.weight,
        layer.post_attention_layernorm.weight,
        gate_up,
        mlp.down_proj.weight,
    )
