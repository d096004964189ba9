"""The attribution graph of one prompt through residual-stream SAEs (the baseline transcoder
graphs are compared with).

SAEs at `blocks.L.hook_resid_post` of some layers S_1 < … < S_k replace the residual stream
there: after block S_j the residual at every position but BOS is

    r[S_j + 1] = Σ_i a_i W_dec,i + b_dec + ε_{S_j}      (ε: real residual − reconstruction)

and BOS keeps its real residual as a constant. Nodes: the SAEs' active latents and one error
node per spliced layer and position (position 0 excepted when it holds BOS), the token
embeddings, and the target logits. Between two spliced layers the blocks stay: attention
patterns and every RMSNorm scale are frozen from the real forward (as in the transcoder graph),
and each MLP is *linearised at the clean point* (its Jacobian on the real input). The MLPs stay
nonlinear in the model, so these edges are first-order (gradient × contribution, as in
residual-SAE circuit work); the transcoder graph's edges are exact in its replacement model.

A[t, s] = contribution of s · ∂(input of t)/∂(contribution), where a latent's input is its
encoder row read on the residual it encodes (`x · W_enc[:, f]`, constants left out) and a
logit's the demeaned (or raw) logit read after ln_final. Since each spliced layer replaces the
whole residual, a latent or error node at S_j has edges only into S_{j+1}'s latents (or the
logits when S_j is the last), and the embeddings only into S_1's latents.

The adjacency has circuit-tracer's layout (latents, errors, embeddings, logits), so influence,
pruning and the two scores are `graph_prune`'s, unchanged.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.circuits.replacement import FrozenPass, ReplacementModel, Weights, frozen_pass

RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def residual_layer(hook: str | None) -> int:
    """The layer of a `blocks.L.hook_resid_post` hook; a one-line error for any other hook."""
    match = RESID_HOOK.match(hook or "")
    if not match:
        raise UserError(
            f"a residual-SAE graph needs SAEs on blocks.L.hook_resid_post; got one reading "
            f"{hook!r}: train one with saelab train --hook blocks.L.hook_resid_post"
        )
    return int(match.group(1))


def load_residual_saes(folders: list[str], device: str = "cpu") -> dict[int, torch.nn.Module]:
    """Layer → SAE for SAE folders on `blocks.L.hook_resid_post` (one per layer)."""
    from saelab.sae.checkpoint import load_sae, read_cfg

    out: dict[int, torch.nn.Module] = {}
    for folder in folders:
        cfg = read_cfg(folder)
        hook = (cfg.get("saelab") or {}).get("hook_name") or cfg.get("hook_name")
        layer = residual_layer(hook)
        if layer in out:
            raise UserError(f"two residual SAEs for layer {layer}: give one per layer")
        sae = load_sae(folder, device=device)
        if getattr(sae, "target_hook", None) not in (None, hook):
            raise UserError(f"{folder} is a transcoder, not a residual SAE")
        for p in sae.parameters():
            p.requires_grad_(False)
        out[layer] = sae.eval()
    return dict(sorted(out.items()))


@dataclass
class MlpWeights:
    """The gated MLPs' weights (x @ W layout): ln2 weight, gate, up, down per layer."""

    ln2: list[Tensor]
    gate: list[Tensor]
    up: list[Tensor]
    down: list[Tensor]

    @classmethod
    def from_bridge(cls, bridge, dtype: torch.dtype) -> MlpWeights:
        ln2, gate, up, down = [], [], [], []
        for block in bridge.blocks:
            mlp = block.mlp
            parts = [getattr(mlp, name, None) for name in ("gate", "in", "out")]
            if any(p is None for p in parts) or str(bridge.cfg.act_fn) != "silu":
                raise UserError(
                    "residual-SAE graphs support gated SiLU MLPs (llama-style); this model's "
                    f"MLP is {type(mlp).__name__} with {bridge.cfg.act_fn}"
                )
            for out, part in zip((gate, up, down), parts):
                lin = part.original_component
                if lin.bias is not None:
                    raise UserError("residual-SAE graphs support bias-free MLPs (llama-style)")
                out.append(lin.weight.detach().to(dtype).t().contiguous())
            ln2.append(block.ln2.original_component.weight.detach().to(dtype))
        return cls(ln2, gate, up, down)


@dataclass
class ResidualNodes:
    """Source nodes: latents (sorted by layer, position, feature), errors, embeddings."""

    layer: Tensor
    pos: Tensor
    feature: Tensor
    activation: Tensor
    error_layer: Tensor
    error_pos: Tensor
    n_pos: int

    @property
    def n_latents(self) -> int:
        return int(self.layer.numel())

    @property
    def n_errors(self) -> int:
        return int(self.error_layer.numel())

    @property
    def n_sources(self) -> int:
        return self.n_latents + self.n_errors + self.n_pos


class ResidualGraphModel:
    """A prompt's residual-SAE graph model: frozen attention and norms, MLPs linearised at the
    clean point for edges (`backward`), or kept nonlinear (`forward`, the reference)."""

    def __init__(self, model_weights: Weights, mlp: MlpWeights, frozen: FrozenPass,
                 saes: dict[int, torch.nn.Module], first: int) -> None:  # fmt: skip
        self.frozen, self.mlp_w, self.first = frozen, mlp, first
        self.saes = dict(sorted(saes.items()))
        self.layers = list(self.saes)
        # attention forward/backward of the frozen pass (no transcoders: MLPs are constants)
        self.attn = ReplacementModel(model_weights, frozen, {}, first)
        dtype = frozen.embed.dtype
        # the real residual after each block, and each MLP's gate/up pre-activations
        self.resid = frozen.mlp_in * frozen.scale2 + frozen.mlp_out
        x = torch.stack([frozen.mlp_in[i] * mlp.ln2[i] for i in range(len(mlp.ln2))])
        self.gate = torch.stack([x[i] @ mlp.gate[i] for i in range(len(mlp.gate))])
        self.up = torch.stack([x[i] @ mlp.up[i] for i in range(len(mlp.up))])
        layers, pos, feats, acts, decs, errs, b_dec, enc = [], [], [], [], [], [], {}, {}
        with torch.no_grad():
            for layer, sae in self.saes.items():
                x = self.resid[layer, first:]
                code = sae.encode_sparse(x.to(sae.W_dec.dtype))
                w_dec = sae.W_dec.detach().to(dtype)
                vals = code.vals.to(dtype)
                rows, slots = (code.vals != 0).nonzero(as_tuple=True)
                order = torch.argsort(code.idx[rows, slots] + rows * sae.d_sae)
                rows, slots = rows[order], slots[order]
                idx = code.idx[rows, slots]
                contrib = w_dec[idx] * vals[rows, slots, None]
                recon = torch.zeros_like(x).index_add_(0, rows, contrib)
                b_dec[layer] = sae.b_dec.detach().to(dtype)
                errs.append(x - recon - b_dec[layer])
                enc[layer] = sae.W_enc.detach().to(dtype)
                layers.append(torch.full_like(rows, layer))
                pos.append(rows + first)
                feats.append(idx)
                acts.append(vals[rows, slots])
                decs.append(contrib)
        n_pos = frozen.embed.shape[0]
        per = n_pos - first
        self.nodes = ResidualNodes(
            layer=torch.cat(layers), pos=torch.cat(pos), feature=torch.cat(feats),
            activation=torch.cat(acts),
            error_layer=torch.tensor(self.layers).repeat_interleave(per),
            error_pos=torch.arange(first, n_pos).repeat(len(self.layers)), n_pos=n_pos,
        )  # fmt: skip
        self.decoder = torch.cat(decs)
        self.errors = torch.cat(errs)
        self.b_dec, self.w_enc = b_dec, enc

    @property
    def n_layers(self) -> int:
        return int(self.frozen.mlp_out.shape[0])

    # -- the model with nonlinear MLPs: the reference ---------------------------------------

    def mlp(self, layer: int, r_mid: Tensor) -> Tensor:
        """The real gated MLP on a residual (its ln2 scale frozen)."""
        w = self.mlp_w
        x = r_mid / self.frozen.scale2[layer] * w.ln2[layer]
        return (torch.nn.functional.silu(x @ w.gate[layer]) * (x @ w.up[layer])) @ w.down[layer]

    @torch.no_grad()
    def forward(self, scale: Tensor | None = None) -> tuple[dict[int, Tensor], Tensor]:
        """Every source's contribution multiplied by `scale[n_sources]` (None: ones, which
        reproduces the real pass), attention and norms frozen, MLPs nonlinear. Returns each
        spliced layer's residual as its SAE reads it `{layer: [T, d]}` and the final
        normalised residual `[T, d]`."""
        nodes, fp = self.nodes, self.frozen
        n_lat, n_err = nodes.n_latents, nodes.n_errors
        if scale is None:
            scale = torch.ones(nodes.n_sources, dtype=fp.embed.dtype)
        r = fp.embed * scale[n_lat + n_err :, None]
        read: dict[int, Tensor] = {}
        for layer in range(self.n_layers):
            r = r + self.attn.attention(layer, r)
            r = r + self.mlp(layer, r)
            if layer in self.saes:
                read[layer] = r
                new = self.resid[layer].clone()
                new[self.first :] = self.b_dec[layer]
                sel = nodes.layer == layer
                new.index_put_(
                    (nodes.pos[sel],), self.decoder[sel] * scale[:n_lat][sel, None], accumulate=True
                )
                esel = (nodes.error_layer == layer).nonzero().squeeze(1)
                new[self.first :] += self.errors[esel] * scale[n_lat + esel, None]
                r = new
        return read, r / fp.scale_final * self.attn.weights.ln_final

    # -- the linearised backward: edges -----------------------------------------------------

    def mlp_backward(self, layer: int, g: Tensor) -> Tensor:
        """J_MLP(clean)^T g at residual r_mid, for `g` `[B, t, d]` at the MLP's output."""
        w = self.mlp_w
        t = g.shape[1]
        gate, up = self.gate[layer, :t], self.up[layer, :t]
        sig = torch.sigmoid(gate)
        h = g @ w.down[layer].t()
        dgate = h * up * (sig * (1 + gate * (1 - sig)))
        dup = h * (gate * sig)
        gx = dgate @ w.gate[layer].t() + dup @ w.up[layer].t()
        return gx * (w.ln2[layer] / self.frozen.scale2[layer, :t])

    @torch.no_grad()
    def backward(self, layer: int, pos: Tensor, vectors: Tensor) -> Tensor:
        """Direct effects of every source on targets reading `vectors[b]` at position `pos[b]`
        of spliced layer `layer`'s residual (`layer` = n_layers: the final normalised residual,
        a logit). Returns `[B, n_sources]`."""
        nodes, fp = self.nodes, self.frozen
        batch = vectors.shape[0]
        t = int(pos.max()) + 1
        rows = torch.arange(batch)
        out = vectors.new_zeros(batch, nodes.n_sources)
        g = vectors.new_zeros(batch, t, vectors.shape[1])
        if layer == self.n_layers:
            g[rows, pos] = vectors * self.attn.weights.ln_final / fp.scale_final[pos]
        else:
            g[rows, pos] = vectors
        below = [s for s in self.layers if s < layer]
        stop = below[-1] if below else -1
        for block in range(min(layer, self.n_layers - 1), stop, -1):
            g = g + self.mlp_backward(block, g)
            g = g + self.attn.attention_backward(block, g)
        if stop < 0:
            e0 = nodes.n_latents + nodes.n_errors
            out[:, e0 : e0 + t] = (g * fp.embed[:t]).sum(-1)
            return out
        sel = (nodes.layer == stop).nonzero().squeeze(1)
        sel = sel[nodes.pos[sel] < t]
        out[:, sel] = (g[:, nodes.pos[sel]] * self.decoder[sel]).sum(-1)
        esel = ((nodes.error_layer == stop) & (nodes.error_pos < t)).nonzero().squeeze(1)
        out[:, nodes.n_latents + esel] = (g[:, nodes.error_pos[esel]] * self.errors[esel]).sum(-1)
        return out

    def encoder_rows(self) -> Tensor:
        """Each latent's encoder row `[n_latents, d]`."""
        nodes = self.nodes
        out = self.decoder.new_zeros(nodes.n_latents, self.decoder.shape[1])
        for layer in self.layers:
            sel = (nodes.layer == layer).nonzero().squeeze(1)
            out[sel] = self.w_enc[layer][:, nodes.feature[sel]].t()
        return out

    def unembed_direction(self, tokens: Tensor, demean: bool) -> Tensor:
        return self.attn.unembed_direction(tokens, demean)


@dataclass
class ResidualGraph:
    """The unpruned adjacency (latents, errors, embeddings, logits) and its node sets."""

    adjacency: Tensor
    nodes: ResidualNodes
    logit_tokens: Tensor
    logit_probs: Tensor

    @property
    def n_latents(self) -> int:
        return self.nodes.n_latents

    @property
    def n_errors(self) -> int:
        return self.nodes.n_errors

    @property
    def size(self) -> int:
        return int(self.adjacency.shape[0])

    def masks(self) -> tuple[Tensor, Tensor]:
        """(error mask, embedding mask) over the nodes."""
        n, lat, err = self.size, self.n_latents, self.n_errors
        error = torch.zeros(n, dtype=torch.bool)
        error[lat : lat + err] = True
        embedding = torch.zeros(n, dtype=torch.bool)
        embedding[lat + err : lat + err + self.nodes.n_pos] = True
        return error, embedding

    def logit_weights(self) -> Tensor:
        w = torch.zeros(self.size, dtype=self.adjacency.dtype)
        w[self.size - self.logit_tokens.numel() :] = self.logit_probs.to(w.dtype)
        return w

    def latent_errors(self) -> Tensor:
        """Each latent's error node (same layer and position) as a node index."""
        per = self.nodes.n_pos - int(self.nodes.error_pos.min())
        rank = {layer: i for i, layer in enumerate(sorted(set(self.nodes.error_layer.tolist())))}
        slot = torch.tensor([rank[x] for x in self.nodes.layer.tolist()], dtype=torch.long)
        first = int(self.nodes.error_pos.min())
        return self.n_latents + slot * per + (self.nodes.pos - first)


def attribute_residual(
    rgm: ResidualGraphModel, targets: Tensor, probs: Tensor, demean: bool = True,
    batch_size: int = 128,
) -> ResidualGraph:  # fmt: skip
    """Every latent's and every target logit's row of direct effects."""
    nodes = rgm.nodes
    n_src, n_logit = nodes.n_sources, int(targets.numel())
    size = n_src + n_logit
    adjacency = rgm.decoder.new_zeros(size, size)
    dirs = rgm.unembed_direction(targets, demean)
    last = torch.full((n_logit,), nodes.n_pos - 1, dtype=torch.long)
    adjacency[n_src:, :n_src] = rgm.backward(rgm.n_layers, last, dirs)
    enc = rgm.encoder_rows()
    for layer in rgm.layers:
        sel = (nodes.layer == layer).nonzero().squeeze(1)
        for chunk in sel.split(batch_size):
            adjacency[chunk, :n_src] = rgm.backward(layer, nodes.pos[chunk], enc[chunk])
    return ResidualGraph(adjacency, nodes, targets, probs)


def build_residual_graph_model(
    model, tokens: list[int], saes: dict[int, torch.nn.Module], bos: int | None,
    dtype: torch.dtype = torch.float32,
) -> ResidualGraphModel:  # fmt: skip
    """The residual-SAE graph model of `tokens` (position 0 has no nodes when it is BOS)."""
    if not saes:
        raise UserError("give at least one residual SAE (blocks.L.hook_resid_post)")
    for layer in saes:
        if not 0 <= layer < model.n_layers:
            raise UserError(f"a residual SAE for layer {layer}: {model.name} has {model.n_layers}")
    if dtype != torch.float32:
        saes = {k: copy.deepcopy(sae).to(dtype) for k, sae in saes.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = frozen_pass(model, tokens, dtype)
    first = 1 if bos is not None and tokens and tokens[0] == bos else 0
    if first >= len(tokens):
        raise UserError("the prompt is empty: give at least one token after BOS")
    return ResidualGraphModel(
        Weights.from_bridge(model.bridge, dtype), MlpWeights.from_bridge(model.bridge, dtype),
        frozen, saes, first,
    )  # fmt: skip
