"""The local replacement model of one prompt: transcoders in place of MLPs, everything else
frozen from the real forward pass, so the model is linear in its nodes.

One real forward records what the attribution graph freezes: the attention patterns, the
RMSNorm scales (ln1, ln2, ln_final `hook_scale`), each transcoder's input
(`blocks.L.ln2.hook_normalized`) and each MLP's real output (`blocks.L.hook_mlp_out`). The
replacement model then recomputes the residual stream from those pieces with the model's own
weights:

    r_0 = embedding
    r_mid[L] = r[L] + Σ_h P_h (ln1(r[L]) W_V,h) W_O,h          (patterns P frozen)
    r[L+1] = r_mid[L] + Σ_i a_i W_dec,i + b_dec + (r_mid[L] / s2) W_skip + ε_L
    logits = ln_final(r[n_layers]) W_U                           (every norm scale frozen)

where a_i are the transcoder's active latents on the real input and ε_L = real MLP output −
transcoder output is the error node. A layer with no transcoder contributes its whole MLP
output as its error. With the scales and patterns frozen every map above is linear, so the
direct effect of a source node on a target's input is its contribution times the gradient
along paths that cross no other node: `backward` computes exactly that, batched over targets.

The residual stream is recomputed here (with frozen patterns, a rotary model's attention is
`P (x W_V) W_O`: positions enter only through P) rather than by editing the bridge's hooks,
for three reasons: the same code runs in float64 for the parity tests, the backward only
visits the layers and positions a target can reach, and no hook semantics of the adapter can
silently change the result. The bridge does honour edits at `hook_pattern` and `hook_scale`
(checked, see docs/architecture.md); the test that this forward reproduces the real logits
(error nodes included) is what ties the two together.

A cross-layer transcoder (CLT) over layers l_0..l_n replaces those MLPs together: latent i of
source layer l (node `L{l}.f{i}@{t}`) reads x_l = ln2.hook_normalized of layer l and writes
a_i · W_dec[l → l'][i] into the MLP output of EVERY layer l' ≥ l of its range, at its own
position; layer l''s error node is mlp_out_l' − b_dec[l'] − Σ_{l ≤ l'} f_l W_dec[l → l'].
A per-layer transcoder is the special case l' = l. A target reading the residual before
layer m's MLP sees the writes to layers l' < m only (the backward visits layers downward), so
a CLT latent's edge is a · Σ_{l ≤ l' < m} g_l' · W_dec[l → l'][i], g_l' the gradient at
layer l''s MLP output: the CLT's `write_gradient` rule, summed write by write.

An attention-output SAE at layer L (reading `blocks.L.attn.hook_z`, heads concatenated)
replaces that layer's attention output: z = ẑ + ε_z with ẑ = Σ_i a_i W_dec,i + b_dec, so
r_mid[L] = r[L] + (Σ_i a_i W_dec,i + b_dec + ε_z) W_O (+ b_O). Its latents (node `A{L}.f{i}@{t}`)
and its error node ε_z per position (`attn_err.L{L}@{t}`) are sources written at the attention
output; nothing upstream reaches r_mid[L] through that attention any more. A latent's input is
its pre-activation's linear part z · W_enc[:, i], with z = Σ_h P_h (ln1(r[L]) W_V,h) computed
from upstream with P and the ln1 scale frozen, so its edges are the gradient along that value
path. Attention latents come after the transcoder latents in node order (`Nodes.attn`), their
error nodes after the MLP error grid (`Nodes.error_attn`).

Position 0 holds BOS when the prompt starts with it: its MLP outputs are kept as constants
(circuit-tracer's `zero_bos`), so it has no latent or error nodes; its embedding is a node.
The same holds for an attention SAE's layer: the real hook_z at BOS is a constant.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelab.base.errors import UserError

INPUT_HOOK = "blocks.{layer}.ln2.hook_normalized"
Z_HOOK = "blocks.{layer}.attn.hook_z"
_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
TARGET_HOOK = "blocks.{layer}.hook_mlp_out"
_INPUT = re.compile(r"^blocks\.(\d+)\.ln2\.hook_normalized$")
_TARGET = re.compile(r"^blocks\.(\d+)\.hook_mlp_out$")


def transcoder_layer(tc) -> int:
    """The layer a transcoder replaces; a one-line error unless it maps
    `blocks.L.ln2.hook_normalized` to `blocks.L.hook_mlp_out` (the pair graphs trace)."""
    source = getattr(tc, "input_hook", None)
    target = getattr(tc, "target_hook", None)
    a = _INPUT.match(source or "")
    b = _TARGET.match(target or "")
    if getattr(tc, "architecture", None) != "transcoder" or not (a and b):
        raise UserError(
            f"attribution graphs need transcoders from blocks.L.ln2.hook_normalized to "
            f"blocks.L.hook_mlp_out; got {getattr(tc, 'architecture', type(tc).__name__)} "
            f"reading {source!r} and writing {target!r}: train one with saelab train --arch "
            "transcoder --hook blocks.L.ln2.hook_normalized --target-hook blocks.L.hook_mlp_out"
        )
    if a.group(1) != b.group(1):
        raise UserError(
            f"a transcoder reads layer {a.group(1)} and writes layer {b.group(1)}; graphs "
            "replace one MLP per transcoder: use a pair from the same layer"
        )
    return int(a.group(1))


def attention_sae_layer(hook: str | None) -> int:
    """The layer of an attention-output SAE trained on `blocks.L.attn.hook_z`; a one-line error
    for any other hook."""
    m = _Z.match(hook or "")
    if not m:
        raise UserError(
            f"attention SAEs in graphs read blocks.L.attn.hook_z (heads concatenated); this one "
            f"reads {hook!r}: train one with saelab train --hook blocks.L.attn.hook_z"
        )
    return int(m.group(1))


def is_clt(dictionary) -> bool:
    """Whether a dictionary is a cross-layer transcoder (several layers, `target_hooks`)."""
    return getattr(dictionary, "architecture", None) == "clt"


def dictionary_layers(dictionary) -> list[int]:
    """The layers a dictionary replaces: a transcoder's one (`transcoder_layer`), or every layer
    of a cross-layer transcoder (each reading blocks.L.ln2.hook_normalized and writing
    blocks.L.hook_mlp_out)."""
    if not is_clt(dictionary):
        return [transcoder_layer(dictionary)]
    layers = []
    for source, target in zip(dictionary.input_hooks, dictionary.target_hooks, strict=True):
        a, b = _INPUT.match(source), _TARGET.match(target)
        if not (a and b and a.group(1) == b.group(1)):
            raise UserError(
                f"attribution graphs need a cross-layer transcoder from blocks.L.ln2."
                f"hook_normalized to blocks.L.hook_mlp_out at each layer; this one pairs "
                f"{source!r} with {target!r}"
            )
        layers.append(int(a.group(1)))
    return layers


@dataclass
class Weights:
    """The model's weights the frozen linear model uses (x @ W layout), in one dtype."""

    ln1: list[Tensor]
    """Per layer, the first RMSNorm's weight `[d]`."""
    w_v: list[Tensor]
    """Per layer, the value projection `[d, n_kv * d_head]`."""
    b_v: list[Tensor | None]
    w_o: list[Tensor]
    """Per layer, the output projection `[n_heads * d_head, d]`."""
    b_o: list[Tensor | None]
    ln_final: Tensor
    w_u: Tensor
    """The unembedding `[d, d_vocab]`."""
    b_u: Tensor | None
    n_heads: int
    n_kv: int
    d_head: int

    @classmethod
    def from_bridge(cls, bridge, dtype: torch.dtype) -> Weights:
        cfg = bridge.cfg
        if getattr(cfg, "parallel_attn_mlp", False):
            raise UserError(
                "attribution graphs need a sequential block (attention, then MLP); this model "
                "runs them in parallel"
            )
        if not getattr(cfg, "normalization_type", "RMS").startswith("RMS"):
            raise UserError(
                f"attribution graphs support RMSNorm models (llama-style); this one uses "
                f"{cfg.normalization_type}"
            )

        def linear(module) -> tuple[Tensor, Tensor | None]:
            lin = module.original_component
            bias = None if lin.bias is None else lin.bias.detach().to(dtype)
            return lin.weight.detach().to(dtype).t().contiguous(), bias

        ln1, w_v, b_v, w_o, b_o = [], [], [], [], []
        for block in bridge.blocks:
            ln1.append(block.ln1.original_component.weight.detach().to(dtype))
            v, bv = linear(block.attn.v)
            o, bo = linear(block.attn.o)
            w_v.append(v)
            b_v.append(bv)
            w_o.append(o)
            b_o.append(bo)
        w_u, b_u = linear(bridge.unembed)
        n_heads = int(cfg.n_heads)
        d_head = int(cfg.d_head)
        n_kv = w_v[0].shape[1] // d_head
        return cls(
            ln1, w_v, b_v, w_o, b_o,
            bridge.ln_final.original_component.weight.detach().to(dtype), w_u, b_u,
            n_heads, n_kv, d_head,
        )  # fmt: skip


@dataclass
class FrozenPass:
    """What the real forward pass of one prompt left behind (batch of one, squeezed)."""

    tokens: list[int]
    embed: Tensor
    """`blocks.0.hook_resid_pre` `[T, d]`."""
    scale1: Tensor
    """ln1 scales `[n_layers, T, 1]`."""
    scale2: Tensor
    """ln2 scales `[n_layers, T, 1]`."""
    scale_final: Tensor
    """ln_final's scale `[T, 1]`."""
    pattern: Tensor
    """Attention patterns `[n_layers, n_heads, T, T]`."""
    mlp_in: Tensor
    """ln2.hook_normalized `[n_layers, T, d]` (the transcoders' input)."""
    mlp_out: Tensor
    """hook_mlp_out `[n_layers, T, d]`."""
    logits: Tensor
    """The real logits `[T, d_vocab]`."""
    z: dict[int, Tensor] = field(default_factory=dict)
    """Per layer asked for: attn.hook_z, heads concatenated `[T, n_heads * d_head]`."""


def frozen_pass(
    model, tokens: list[int], dtype: torch.dtype = torch.float32, z_layers: tuple[int, ...] = ()
) -> FrozenPass:
    """Run the real model once and keep what the replacement model freezes (and hook_z at
    `z_layers`, the attention SAEs' inputs)."""
    n = model.n_layers
    names = ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]
    names += [Z_HOOK.format(layer=layer) for layer in z_layers]
    for layer in range(n):
        names += [
            f"blocks.{layer}.ln1.hook_scale",
            f"blocks.{layer}.ln2.hook_scale",
            f"blocks.{layer}.attn.hook_pattern",
            INPUT_HOOK.format(layer=layer),
            TARGET_HOOK.format(layer=layer),
        ]
    ids = torch.tensor([tokens], device=model.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits, cache = model.bridge.run_with_cache(
            ids, names_filter=names, return_cache_object=False
        )

    def stack(fmt: str) -> Tensor:
        return torch.stack([cache[fmt.format(layer=i)][0] for i in range(n)]).to(dtype)

    return FrozenPass(
        tokens=list(tokens),
        embed=cache["blocks.0.hook_resid_pre"][0].to(dtype),
        scale1=stack("blocks.{layer}.ln1.hook_scale"),
        scale2=stack("blocks.{layer}.ln2.hook_scale"),
        scale_final=cache["ln_final.hook_scale"][0].to(dtype),
        pattern=stack("blocks.{layer}.attn.hook_pattern"),
        mlp_in=stack(INPUT_HOOK),
        mlp_out=stack(TARGET_HOOK),
        logits=logits[0].to(dtype),
        z={layer: cache[Z_HOOK.format(layer=layer)][0].flatten(-2).to(dtype) for layer in z_layers},
    )


@dataclass
class Nodes:
    """The graph's source nodes in circuit-tracer's order: latents, errors, embeddings."""

    layer: Tensor
    """Per latent: its layer `[n_latents]` (sorted by layer, then position, then feature)."""
    pos: Tensor
    feature: Tensor
    activation: Tensor
    """Per latent: its activation on the prompt."""
    error_layer: Tensor
    """Per error node: layer and position `[n_errors]`."""
    error_pos: Tensor
    n_pos: int
    attn: Tensor | None = None
    """Per latent: whether it is an attention SAE's (None: none is)."""
    error_attn: Tensor | None = None
    """Per error node: whether it is an attention SAE's error (None: none is)."""

    def is_attn(self) -> Tensor:
        """Per latent: whether it belongs to an attention SAE `[n_latents]` (bool)."""
        if self.attn is None:
            return torch.zeros(self.n_latents, dtype=torch.bool, device=self.layer.device)
        return self.attn

    def is_attn_error(self) -> Tensor:
        """Per error node: whether it is an attention SAE's error `[n_errors]` (bool)."""
        if self.error_attn is None:
            return torch.zeros(self.n_errors, dtype=torch.bool, device=self.error_layer.device)
        return self.error_attn

    @property
    def n_latents(self) -> int:
        return int(self.layer.numel())

    @property
    def n_errors(self) -> int:
        return int(self.error_layer.numel())

    @property
    def n_sources(self) -> int:
        return self.n_latents + self.n_errors + self.n_pos


@dataclass
class ReplacementModel:
    """A prompt's frozen linear replacement model (see the module docstring)."""

    weights: Weights
    frozen: FrozenPass
    transcoders: dict[int, torch.nn.Module]
    """Layer → transcoder (any subset of layers); a cross-layer transcoder is given at every
    layer of its range (the same module)."""
    first: int
    """First position with latent and error nodes (1 when position 0 is BOS)."""
    attention_saes: dict[int, torch.nn.Module] = field(default_factory=dict)
    """Layer → attention-output SAE on `blocks.L.attn.hook_z` (replaces that attention's
    output; see the module docstring)."""
    nodes: Nodes = field(init=False)
    decoder: Tensor = field(init=False)
    """Per latent: its contribution a_i W_dec,i `[n_latents, d]` to its own layer's MLP output."""
    cross: Tensor = field(init=False)
    """Cross-layer writes (CLT latents to later layers) `[n_cross, d]`: latent
    `cross_latent[j]`'s contribution to layer `cross_layer[j]`'s MLP output at its position,
    sorted by layer, then position. Empty without a CLT."""
    cross_latent: Tensor = field(init=False)
    cross_layer: Tensor = field(init=False)
    errors: Tensor = field(init=False)
    """Per error node: its vector `[n_errors, d]`."""
    const: Tensor = field(init=False)
    """Per layer and position, the MLP output that is no node `[n_layers, T, d]`: b_dec, and
    the whole output before `first`."""
    const_attn: dict[int, Tensor] = field(init=False)
    """Per attention-SAE layer, the attention output that is no node `[T, d]`: b_dec W_O + b_O,
    and the real attention output before `first`."""
    n_attn_latents: int = field(init=False)
    """How many latents (the last ones) belong to attention SAEs."""

    def __post_init__(self) -> None:
        fp, dtype = self.frozen, self.frozen.embed.dtype
        n_layers, n_pos, d = fp.mlp_out.shape
        device = fp.embed.device
        self.transcoders = dict(sorted(self.transcoders.items()))
        layers, pos, feats, acts, decs = [], [], [], [], []
        cross: list[tuple[Tensor, Tensor, Tensor]] = []  # (latent index, layer, vector)
        n_done = 0
        const = torch.zeros(n_layers, n_pos, d, dtype=dtype, device=device)
        errors = fp.mlp_out.clone()
        with torch.no_grad():
            for layer in self.transcoders:
                x = fp.mlp_in[layer, self.first :]
                code = self._encode(layer, x)
                vals = code.vals.to(dtype)
                rows, slots = (code.vals != 0).nonzero(as_tuple=True)
                order = torch.argsort(code.idx[rows, slots] + rows * code.d_sae)
                rows, slots = rows[order], slots[order]
                index = code.idx[rows, slots]
                a = vals[rows, slots, None]
                for dst in self._writes_to(layer):
                    w_dec = self._decoder(layer, dst).to(dtype)
                    recon = vals.new_zeros(x.shape[0], d)
                    recon.index_add_(0, *_rows(code.idx, vals, w_dec))
                    errors[dst, self.first :] -= recon
                    if dst == layer:
                        decs.append(w_dec[index] * a)
                    else:
                        latent = torch.arange(n_done, n_done + len(index), device=device)
                        cross.append((latent, torch.full_like(latent, dst), w_dec[index] * a))
                bias = self._bias(layer).to(dtype)
                skip = self.skip(layer, x)
                errors[layer, self.first :] -= bias + skip
                const[layer, self.first :] = bias
                feats.append(index)
                acts.append(vals[rows, slots])
                pos.append(rows + self.first)
                layers.append(torch.full_like(rows, layer))
                n_done += len(index)
        n_mlp = n_done
        attn_decs, attn_errors, self.const_attn = self._attention_nodes(
            layers, pos, feats, acts, dtype
        )
        const[:, : self.first] = fp.mlp_out[:, : self.first]
        for layer in self.transcoders:  # the skip path at BOS is live: keep the sum exact
            const[layer, : self.first] -= self.skip(layer, fp.mlp_in[layer, : self.first])
        empty = torch.zeros(0, dtype=torch.long, device=device)
        grid_l, grid_p = torch.meshgrid(
            torch.arange(n_layers), torch.arange(self.first, n_pos), indexing="ij"
        )
        error_layer, error_pos = grid_l.reshape(-1).to(device), grid_p.reshape(-1).to(device)
        attn, error_attn = None, None
        if self.attention_saes:
            span = n_pos - self.first
            attn_layers = torch.tensor(list(self.attention_saes), device=device)
            n_total = sum(len(x) for x in feats)
            attn = torch.arange(n_total, device=device) >= n_mlp
            error_attn = torch.cat([
                torch.zeros(len(error_layer), dtype=torch.bool, device=device),
                torch.ones(len(attn_layers) * span, dtype=torch.bool, device=device),
            ])  # fmt: skip
            error_layer = torch.cat([error_layer, attn_layers.repeat_interleave(span)])
            error_pos = torch.cat([error_pos, grid_p[0].to(device).repeat(len(attn_layers))])
        self.n_attn_latents = sum(len(x) for x in feats) - n_mlp
        self.nodes = Nodes(
            layer=torch.cat(layers) if layers else empty,
            pos=torch.cat(pos) if pos else empty,
            feature=torch.cat(feats) if feats else empty,
            activation=torch.cat(acts) if acts else empty.to(dtype),
            error_layer=error_layer,
            error_pos=error_pos,
            n_pos=n_pos,
            attn=attn,
            error_attn=error_attn,
        )
        decs = decs + attn_decs
        self.decoder = torch.cat(decs) if decs else torch.zeros(0, d, dtype=dtype)
        n_grid = grid_l.numel()
        self.errors = errors[error_layer[:n_grid], error_pos[:n_grid]]
        if attn_errors:
            self.errors = torch.cat([self.errors, *attn_errors])
        self.const = const
        if cross:
            latent = torch.cat([c[0] for c in cross])
            layer_of = torch.cat([c[1] for c in cross])
            vectors = torch.cat([c[2] for c in cross])
            order = torch.argsort(layer_of * n_pos + self.nodes.pos[latent], stable=True)
            self.cross_latent, self.cross_layer = latent[order], layer_of[order]
            self.cross = vectors[order]
        else:
            self.cross_latent, self.cross_layer = empty, empty
            self.cross = torch.zeros(0, d, dtype=dtype)

    def _attention_nodes(self, layers, pos, feats, acts, dtype):
        """Append each attention SAE's latents to the node lists; return their writes to the
        residual `[n, d]` (a_i W_dec,i W_O), their error nodes' writes ((z − ẑ) W_O per
        position), and each layer's constant attention output."""
        fp, w = self.frozen, self.weights
        decs, errs, const = [], [], {}
        with torch.no_grad():
            for layer, sae in sorted(self.attention_saes.items()):
                z = fp.z[layer]
                w_o, b_o = w.w_o[layer], w.b_o[layer]
                code = sae.encode_sparse(z[self.first :].to(sae.W_dec.dtype))
                vals = code.vals.to(dtype)
                rows, slots = (code.vals != 0).nonzero(as_tuple=True)
                order = torch.argsort(code.idx[rows, slots] + rows * code.d_sae)
                rows, slots = rows[order], slots[order]
                index = code.idx[rows, slots]
                w_dec = sae.W_dec.to(dtype)
                b_dec = sae.b_dec.to(dtype)
                recon = vals.new_zeros(z.shape[0] - self.first, z.shape[1])
                recon.index_add_(0, *_rows(code.idx, vals, w_dec))
                decs.append((w_dec[index] * vals[rows, slots, None]) @ w_o)
                errs.append((z[self.first :] - b_dec - recon) @ w_o)
                out = torch.cat([z[: self.first] @ w_o, (b_dec @ w_o).expand(len(recon), -1)])
                const[layer] = out if b_o is None else out + b_o
                feats.append(index)
                acts.append(vals[rows, slots])
                pos.append(rows + self.first)
                layers.append(torch.full_like(rows, layer))
        return decs, errs, const

    # -- the dictionaries --------------------------------------------------------------

    def _encode(self, layer: int, x: Tensor):
        """The sparse code of layer `layer`'s latents on its inputs `x [N, d]`."""
        tc = self.transcoders[layer]
        if is_clt(tc):
            return tc.encode_layer_sparse(layer, x.to(tc.b_dec.dtype))
        return tc.encode_sparse(x.to(tc.W_dec.dtype))

    def _writes_to(self, layer: int) -> list[int]:
        """The layers whose MLP output layer `layer`'s latents write to (itself, and for a CLT
        every later layer of its range)."""
        tc = self.transcoders[layer]
        return [dst for dst in tc.layers if dst >= layer] if is_clt(tc) else [layer]

    def _decoder(self, src: int, dst: int) -> Tensor:
        """`[d_sae, d]`: what source layer `src`'s latents write to layer `dst`'s MLP output."""
        tc = self.transcoders[src]
        return tc.decoder(src, dst) if is_clt(tc) else tc.W_dec

    def _bias(self, layer: int) -> Tensor:
        tc = self.transcoders[layer]
        return tc.bias(layer) if is_clt(tc) else tc.b_dec

    def encoder(self, layer: int) -> Tensor:
        """Layer `layer`'s encoder `[d, d_sae]` (column i: what latent i's pre-activation reads
        from that layer's transcoder input)."""
        tc = self.transcoders[layer]
        return tc.encoder(layer) if is_clt(tc) else tc.W_enc

    def encoder_bias(self, layer: int) -> Tensor:
        tc = self.transcoders[layer]
        return tc.b_enc[tc.position(layer)] if is_clt(tc) else tc.b_enc

    # -- pieces ------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return int(self.frozen.mlp_out.shape[0])

    def skip(self, layer: int, x_in: Tensor) -> Tensor:
        """The skip transcoder's linear output at `layer` (0 without a skip path)."""
        w = self.w_skip(layer)
        return x_in @ w.to(x_in.dtype) if w is not None else torch.zeros_like(x_in)

    def w_skip(self, layer: int) -> Tensor | None:
        """The skip transcoder's `W_skip` at `layer`, or None (no transcoder, no skip, a CLT)."""
        tc = self.transcoders.get(layer)
        return None if tc is None or is_clt(tc) else getattr(tc, "W_skip", None)

    def attention(self, layer: int, r: Tensor) -> Tensor:
        """Frozen attention output `[.., T, d]` of residual `r` `[.., T, d]` (value and output
        biases included: with rows of P summing to 1 they are constants)."""
        w = self.weights
        x = r / self.frozen.scale1[layer] * w.ln1[layer]
        v = x @ w.w_v[layer]
        if w.b_v[layer] is not None:
            v = v + w.b_v[layer]
        v = v.unflatten(-1, (w.n_kv, w.d_head)).repeat_interleave(w.n_heads // w.n_kv, dim=-2)
        z = torch.einsum("hpq,...qhe->...phe", self.frozen.pattern[layer], v)
        out = z.flatten(-2) @ w.w_o[layer]
        return out if w.b_o[layer] is None else out + w.b_o[layer]

    def attention_backward(self, layer: int, g: Tensor) -> Tensor:
        """The transpose of `attention`'s linear part: gradient at r from gradient `g` at the
        attention output `[B, T', d]` (the first T' positions: later ones cannot reach them)."""
        return self.value_backward(layer, g @ self.weights.w_o[layer].t())

    def values(self, layer: int, r: Tensor) -> Tensor:
        """Frozen attention's z (hook_z, heads concatenated) `[.., T, n_heads * d_head]` of
        residual `r` (value bias included)."""
        w = self.weights
        x = r / self.frozen.scale1[layer] * w.ln1[layer]
        v = x @ w.w_v[layer]
        if w.b_v[layer] is not None:
            v = v + w.b_v[layer]
        v = v.unflatten(-1, (w.n_kv, w.d_head)).repeat_interleave(w.n_heads // w.n_kv, dim=-2)
        return torch.einsum("hpq,...qhe->...phe", self.frozen.pattern[layer], v).flatten(-2)

    def value_backward(self, layer: int, gz: Tensor) -> Tensor:
        """The transpose of `values`' linear part: gradient at r from gradient `gz` at z
        `[B, T', n_heads * d_head]`."""
        w = self.weights
        batch, t, _ = gz.shape
        gz = gz.reshape(batch, t, w.n_heads, w.d_head)
        gz = gz.permute(2, 1, 0, 3).reshape(w.n_heads, t, batch * w.d_head)
        pattern = self.frozen.pattern[layer, :, :t, :t]
        gv = torch.bmm(pattern.transpose(1, 2), gz).view(w.n_heads, t, batch, w.d_head)
        gv = gv.view(w.n_kv, w.n_heads // w.n_kv, t, batch, w.d_head).sum(1)
        gv = gv.permute(2, 1, 0, 3).reshape(batch, t, w.n_kv * w.d_head)
        return (gv @ w.w_v[layer].t()) * (w.ln1[layer] / self.frozen.scale1[layer, :t])

    def unembed_direction(self, tokens: Tensor, demean: bool) -> Tensor:
        """Each target logit's direction on the final normalised residual `[n, d]`."""
        cols = self.weights.w_u[:, tokens].t()
        if demean:
            cols = cols - self.weights.w_u.mean(dim=1)
        return cols

    # -- the linear model --------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self, scale: Tensor | None = None, z_in: dict[int, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The replacement model with each source node's contribution multiplied by
        `scale[n_sources]` (None: ones, which reproduces the real pass). Returns every
        layer's transcoder input `[n_layers, T, d]` and the final normalised residual `[T, d]`
        (ln_final with its weight), through which logits are read. With a dict `z_in`, fills
        in each attention-SAE layer's z as recomputed from upstream (its latents' input)."""
        nodes, fp = self.nodes, self.frozen
        n_lat, n_err = nodes.n_latents, nodes.n_errors
        if scale is None:
            scale = torch.ones(nodes.n_sources, dtype=fp.embed.dtype, device=fp.embed.device)
        mlp = self.const.clone()
        n_mlp, n_grid = (
            n_lat - self.n_attn_latents,
            self.const.shape[0] * (nodes.n_pos - self.first),
        )
        mlp.index_put_(
            (nodes.layer[:n_mlp], nodes.pos[:n_mlp]),
            self.decoder[:n_mlp] * scale[:n_mlp, None],
            accumulate=True,
        )
        if len(self.cross):
            mlp.index_put_(
                (self.cross_layer, nodes.pos[self.cross_latent]),
                self.cross * scale[self.cross_latent, None],
                accumulate=True,
            )
        mlp.index_put_(
            (nodes.error_layer[:n_grid], nodes.error_pos[:n_grid]),
            self.errors[:n_grid] * scale[n_lat : n_lat + n_grid, None],
            accumulate=True,
        )
        r = fp.embed * scale[n_lat + n_err :, None]
        attn_out = self._attention_outputs(scale)
        inputs = []
        for layer in range(self.n_layers):
            if layer in attn_out:
                if z_in is not None:
                    z_in[layer] = self.values(layer, r)
                r = r + attn_out[layer]
            else:
                r = r + self.attention(layer, r)
            x_in = r / fp.scale2[layer]
            inputs.append(x_in)
            r = r + mlp[layer] + self.skip(layer, x_in)
        final = r / fp.scale_final * self.weights.ln_final
        return torch.stack(inputs), final

    def _attention_outputs(self, scale: Tensor) -> dict[int, Tensor]:
        """Per attention-SAE layer, its output `[T, d]`: constants, latents and error nodes,
        each node's write multiplied by its scale."""
        if not self.attention_saes:
            return {}
        nodes = self.nodes
        n_mlp = nodes.n_latents - self.n_attn_latents
        out = {layer: c.clone() for layer, c in self.const_attn.items()}
        err0 = nodes.n_latents + int((~nodes.is_attn_error()).sum())
        span = nodes.n_pos - self.first
        for k, layer in enumerate(sorted(self.attention_saes)):
            sel = (nodes.layer[n_mlp:] == layer).nonzero().squeeze(1) + n_mlp
            out[layer].index_add_(0, nodes.pos[sel], self.decoder[sel] * scale[sel, None])
            e = err0 + k * span
            errs = self.errors[e - nodes.n_latents : e - nodes.n_latents + span]
            out[layer][self.first :] += errs * scale[e : e + span, None]
        return out

    def logits(self, final: Tensor) -> Tensor:
        out = final @ self.weights.w_u
        return out if self.weights.b_u is None else out + self.weights.b_u

    @torch.no_grad()
    def backward(
        self, layers: Tensor, pos: Tensor, vectors: Tensor, attn: Tensor | None = None
    ) -> Tensor:
        """Direct effects of every source node on a batch of targets.

        Target b reads `vectors[b]` from the transcoder input of layer `layers[b]` at
        position `pos[b]` (layer = n_layers: from the final normalised residual, a logit).
        Returns `[B, n_sources]`: source contribution · ∂(target input)/∂(contribution),
        along paths through attention, norms and skip connections only (every MLP output is
        a sum of nodes and constants). Where `attn[b]`, target b is an attention SAE's
        latent: it reads `vectors[b]` from z (hook_z) of layer `layers[b]` instead."""
        nodes, fp = self.nodes, self.frozen
        n_layers, _, d = fp.mlp_out.shape
        batch = vectors.shape[0]
        t = int(pos.max()) + 1  # nothing after the last target position can reach a target
        rows = torch.arange(batch, device=vectors.device)
        out = vectors.new_zeros(batch, nodes.n_sources)
        g = vectors.new_zeros(batch, t, d)
        top = int(layers.max())
        at_final = layers == n_layers
        if at_final.any():
            v = vectors[at_final] * self.weights.ln_final / fp.scale_final[pos[at_final]]
            g[rows[at_final], pos[at_final]] += v
        span = nodes.n_pos - self.first  # error nodes per layer
        for layer in range(min(top, n_layers - 1), -1, -1):
            # sources written at this layer's MLP output read the gradient of r[layer + 1]
            for p, lo, hi in self._latent_blocks[layer]:
                if p < t:
                    out[:, lo:hi] += g[:, p] @ self.decoder[lo:hi].t()  # cross writes came first
            for p, lo, hi in self._cross_blocks[layer]:  # CLT latents of earlier layers
                if p < t:
                    effect = g[:, p] @ self.cross[lo:hi].t()
                    out.index_add_(1, self.cross_latent[lo:hi], effect)
            if t > self.first:
                e0 = nodes.n_latents + layer * span
                err = self.errors[e0 - nodes.n_latents : e0 - nodes.n_latents + t - self.first]
                out[:, e0 : e0 + t - self.first] = (g[:, self.first :] * err).sum(-1)
            w_skip = self.w_skip(layer)
            if w_skip is not None:
                g = g + (g @ w_skip.to(g.dtype).t()) / fp.scale2[layer, :t]
            here = layers == layer
            if attn is not None:
                here = here & ~attn
            if here.any():
                g[rows[here], pos[here]] += vectors[here] / fp.scale2[layer, pos[here]]
            if layer in self.attention_saes:  # the attention's output is nodes: cut it
                self._attention_sources(layer, g, out, t)
                reads = (layers == layer) & attn if attn is not None else None
                if reads is not None and reads.any():
                    gz = vectors.new_zeros(batch, t, vectors.shape[1])
                    gz[rows[reads], pos[reads]] = vectors[reads]
                    g = g + self.value_backward(layer, gz)
            else:
                g = g + self.attention_backward(layer, g)
        e0 = nodes.n_latents + nodes.n_errors
        out[:, e0 : e0 + t] = (g * fp.embed[:t]).sum(-1)
        return out

    def _attention_sources(self, layer: int, g: Tensor, out: Tensor, t: int) -> None:
        """Direct effects of layer `layer`'s attention latents and error nodes: `g` is the
        gradient at r_mid, where they write."""
        nodes = self.nodes
        for p, lo, hi in self._attn_blocks[layer]:
            if p < t:
                out[:, lo:hi] += g[:, p] @ self.decoder[lo:hi].t()
        if t > self.first:
            span = nodes.n_pos - self.first
            k = sorted(self.attention_saes).index(layer)
            e0 = nodes.n_latents + int((~nodes.is_attn_error()).sum()) + k * span
            err = self.errors[e0 - nodes.n_latents : e0 - nodes.n_latents + t - self.first]
            out[:, e0 : e0 + t - self.first] = (g[:, self.first :] * err).sum(-1)

    @property
    def _latent_blocks(self) -> list[list[tuple[int, int, int]]]:
        """Per layer, (position, first, end) of each run of transcoder latents at one position
        (the latents are sorted by layer, then position)."""
        if getattr(self, "_blocks", None) is None:
            n = self.nodes.n_latents - self.n_attn_latents
            self._blocks = _runs(
                self.nodes.layer[:n], self.nodes.pos[:n], self.nodes.n_pos, self.n_layers
            )
        return self._blocks

    @property
    def _attn_blocks(self) -> list[list[tuple[int, int, int]]]:
        """The same for the attention latents (indices among all latents)."""
        if getattr(self, "_ablocks", None) is None:
            n = self.nodes.n_latents - self.n_attn_latents
            runs = _runs(self.nodes.layer[n:], self.nodes.pos[n:], self.nodes.n_pos, self.n_layers)
            self._ablocks = [[(p, lo + n, hi + n) for p, lo, hi in r] for r in runs]
        return self._ablocks

    @property
    def _cross_blocks(self) -> list[list[tuple[int, int, int]]]:
        """Per layer, (position, first, end) of each run of cross-layer writes into it."""
        if getattr(self, "_xblocks", None) is None:
            pos = self.nodes.pos[self.cross_latent]
            self._xblocks = _runs(self.cross_layer, pos, self.nodes.n_pos, self.n_layers)
        return self._xblocks


def _runs(
    layer: Tensor, pos: Tensor, n_pos: int, n_layers: int
) -> list[list[tuple[int, int, int]]]:
    """Per layer, (position, first, end) of each run of equal (layer, position) in sorted rows."""
    blocks: list[list[tuple[int, int, int]]] = [[] for _ in range(n_layers)]
    key = (layer * n_pos + pos).tolist()
    lo = 0
    for i in range(1, len(key) + 1):
        if i == len(key) or key[i] != key[lo]:
            at, p = divmod(key[lo], n_pos)
            blocks[at].append((p, lo, i))
            lo = i
    return blocks


def _rows(idx: Tensor, vals: Tensor, w_dec: Tensor) -> tuple[Tensor, Tensor]:
    """(row index, a·W_dec row) pairs for `index_add_` of a sparse code's decode."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    return rows, w_dec[idx.reshape(-1)] * vals.reshape(-1, 1)


def build_replacement(
    model, tokens: list[int], transcoders: dict[int, torch.nn.Module], bos: int | None,
    dtype: torch.dtype = torch.float32,
    attention_saes: dict[int, torch.nn.Module] | None = None,
) -> ReplacementModel:  # fmt: skip
    """The replacement model of `tokens` (position 0 is BOS, without nodes, when it equals
    `bos`), with attention-output SAEs (layer → SAE on blocks.L.attn.hook_z) if given."""
    attention_saes = dict(sorted((attention_saes or {}).items()))
    for layer in [*transcoders, *attention_saes]:
        if not 0 <= layer < model.n_layers:
            raise UserError(f"a dictionary for layer {layer}: {model.name} has {model.n_layers}")
    d_z = int(model.bridge.cfg.n_heads) * int(model.bridge.cfg.d_head)
    for layer, sae in attention_saes.items():
        if sae.d_in != d_z:
            raise UserError(
                f"the attention SAE for layer {layer} reads width {sae.d_in} but hook_z of "
                f"{model.name} is {d_z} wide (heads concatenated): it was trained elsewhere"
            )
    if attention_saes and d_z != model.d_model:
        raise UserError(
            f"attention SAEs in graphs need n_heads * d_head = d_model; {model.name} has "
            f"{d_z} and {model.d_model}"
        )
    if dtype != torch.float32:  # parity tests run the whole model, transcoders too, in float64
        copies: dict[int, torch.nn.Module] = {}  # a CLT given at several layers: one copy
        for tc in transcoders.values():
            if id(tc) not in copies:
                copies[id(tc)] = copy.deepcopy(tc).to(dtype)
        transcoders = {k: copies[id(tc)] for k, tc in transcoders.items()}
        attention_saes = {k: copy.deepcopy(sae).to(dtype) for k, sae in attention_saes.items()}
    frozen = frozen_pass(model, tokens, dtype, tuple(attention_saes))
    weights = Weights.from_bridge(model.bridge, dtype)
    first = 1 if bos is not None and tokens and tokens[0] == bos else 0
    return ReplacementModel(weights, frozen, transcoders, first, attention_saes)
