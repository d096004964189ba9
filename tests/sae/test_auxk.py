"""AuxK's two implementations (the entry list on the CPU, the padded selection through the
sparse kernels elsewhere) against a dense float64 computation of the definition."""

from __future__ import annotations

import pytest
import torch

from saelab.sae import ops
from saelab.sae.registry import build_sae, make_config


def _setup(seed: int, centred: bool, d_sae: int = 96, d_in: int = 12, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    cfg = make_config("topk", d_sae=d_sae, k=4, aux_k=6, apply_b_dec_to_input=centred)
    sae = build_sae(cfg, d_in)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    dead = torch.randperm(d_sae, generator=g)[:30].sort().values
    with torch.no_grad():  # some dead latents rarely positive, some never
        sae.b_enc[dead[:10]] -= 1.0
        sae.b_enc[dead[10:13]] -= 100.0
    x = torch.randn(n, d_in, generator=g).requires_grad_(True)
    residual = torch.randn(n, d_in, generator=g)
    return sae, dead, x, residual


def _reference(sae, dead, x, residual):
    """The definition in float64: each row's top-k_aux dead pre-activations, their ReLU
    decoded, the squared error to the residual averaged over rows, scaled by
    min(1, dead / k_aux); with every parameter's and x's gradient."""
    ref = {name: p.detach().double().requires_grad_(True) for name, p in sae.named_parameters()}
    x64 = x.detach().double().requires_grad_(True)
    xc = x64 - ref["b_dec"] if sae.cfg.apply_b_dec_to_input else x64
    pre = (xc @ ref["encoder_weight"].t() + ref["b_enc"])[:, dead]
    k_aux = min(sae.cfg.aux_k, dead.numel())
    chosen = torch.zeros_like(pre).scatter(1, pre.topk(k_aux).indices, 1.0)
    e_hat = (pre.relu() * chosen) @ ref["W_dec"][dead]
    loss = (
        min(dead.numel() / sae.cfg.aux_k, 1.0) * (e_hat - residual.double()).pow(2).sum(-1).mean()
    )
    loss.backward()
    grads = {name: torch.zeros_like(t) if t.grad is None else t.grad for name, t in ref.items()}
    return loss, grads, x64.grad


@pytest.mark.parametrize("path", ["entries", "padded"])
@pytest.mark.parametrize("centred", [True, False], ids=["b_dec-centred", "uncentred"])
def test_auxk_paths_match_float64_definition(monkeypatch, path, centred):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    sae, dead, x, residual = _setup(seed, centred)
    other = "_aux_k_entries" if path == "padded" else "_aux_k_padded"
    monkeypatch.setattr(type(sae), other, getattr(type(sae), f"_aux_k_{path}"))  # forced
    pre = ops.preacts(sae.center(x), sae.W_enc, sae.b_enc)
    top = ops.positive_top(pre[:, dead], sae._k_aux(dead))
    loss = sae.aux_k_dead(x, dead, top, residual)
    loss.backward()
    loss_ref, grads_ref, x_grad_ref = _reference(sae, dead, x, residual)
    msg = f"seed {seed}"
    torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-5, atol=1e-6, msg=msg)
    for name, p in sae.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad.to_dense()
        torch.testing.assert_close(
            grad.double(), grads_ref[name], rtol=1e-4, atol=1e-6, msg=f"{name}, {msg}"
        )
    torch.testing.assert_close(x.grad.double(), x_grad_ref, rtol=1e-4, atol=1e-6, msg=msg)


@pytest.mark.parametrize("path", ["entries", "padded"])
def test_weight_gradients_are_sparse_over_the_selected_dead_latents(monkeypatch, path):
    """Both paths' weight gradients are sparse tensors over the dead latents some row
    selected (accumulating them touches nothing else; never-positive dead latents get no
    row). The entry list has exactly those rows; the padded path may add the latent its
    padded slots point at, with a zero row."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    sae, dead, x, residual = _setup(seed, True)
    other = "_aux_k_entries" if path == "padded" else "_aux_k_padded"
    monkeypatch.setattr(type(sae), other, getattr(type(sae), f"_aux_k_{path}"))
    pre = ops.preacts(sae.center(x), sae.W_enc, sae.b_enc)
    top = ops.positive_top(pre[:, dead], sae._k_aux(dead))
    sae.aux_k_dead(x.detach(), dead, top, residual).backward()
    used = dead[top.idx[top.vals > 0].unique()]
    assert not set(used.tolist()) & set(dead[10:13].tolist())  # never positive
    for p in (sae.encoder_weight, sae.b_enc, sae.W_dec):
        assert p.grad.is_sparse
        grad = p.grad.coalesce()
        rows = grad.indices()[0]
        if path == "entries":
            assert torch.equal(rows, used), f"seed {seed}"
        else:
            assert set(used.tolist()) <= set(rows.tolist()), f"seed {seed}"
            extra = ~torch.isin(rows, used)
            assert not grad.values()[extra].any(), f"seed {seed}"


def test_the_entry_list_runs_where_the_positive_entries_fill_under_half_the_slots(monkeypatch):
    """On the CPU: few positive entries in the padded selection (latents that really died)
    take the entry list; a selection at least half full (alive latents counted dead) takes
    the padded path, whose dense variant is the faster one there."""
    sae, dead, x, residual = _setup(int(torch.randint(0, 2**31 - 1, ())), True)
    taken = []
    for name in ("_aux_k_entries", "_aux_k_padded"):
        method = getattr(type(sae), name)

        def spy(self, *args, method=method, name=name):
            taken.append(name)
            return method(self, *args)

        monkeypatch.setattr(type(sae), name, spy)
    n, w = x.shape[0], 4
    idx = torch.randint(0, dead.numel(), (n, w))
    vals = torch.rand(n, w) + 0.1
    for filled, expected in ((n * w // 2 - 1, "_aux_k_entries"), (n * w // 2, "_aux_k_padded")):
        keep = torch.zeros(n * w, dtype=torch.bool)
        keep[torch.randperm(n * w)[:filled]] = True
        keep = keep.view(n, w)
        top = ops.PositiveTop(vals * keep, idx * keep)
        sae.aux_k_dead(x.detach(), dead, top, residual)
        assert taken[-1] == expected, (filled, taken)
