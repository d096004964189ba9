"""The heads eval: decoder-norm shares on a hand-built attention SAE, DFA shares against a direct
float64 computation on the stored rows of a real `attn.hook_z` store, the rows it writes, and
the skip of an SAE on another hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab import resultstore as results
from saelab.evaluation.heads import SPEC, HeadsSettings
from saelab.evaluation.heads.attribution import TopExamples, norm_shares
from saelab.evaluation.runner import EvalConfig, evaluate
from saelab.evaluation.spec import EvalContext, EvalSkipped
from saelab.sae import build_sae, make_config, save_sae

HOOK = "blocks.1.attn.hook_z"
N_HEADS, D_HEAD = 9, 64
D_IN, D_SAE, K = N_HEADS * D_HEAD, 64, 4


@pytest.fixture(scope="module")
def z_store(model, tmp_path_factory):
    """A real store of blocks.1.attn.hook_z: 16 sequences of 32 tokens in 2 chunks."""
    from saelab.activations.harvest import HarvestConfig, harvest

    out = str(tmp_path_factory.mktemp("zstore") / "z.zarr")
    cfg = HarvestConfig(
        out=out, hooks=[HOOK], tokens=16 * 32, seq_len=32, batch_size=4, chunk_seqs=8,
        progress=False,
    )  # fmt: skip
    harvest(cfg, model=model)
    return out


def seeded_sae(seed: int = 0):
    """A TopK SAE with seeded random encoder, biases and decoder (a non-zero pre-bias, so the
    centring is part of what is checked)."""
    sae = build_sae(make_config("topk", d_sae=D_SAE, k=K, seed=seed), D_IN)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        sae.encoder_weight.add_(0.5 * torch.randn(sae.encoder_weight.shape, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(0.05 * torch.randn(D_IN, generator=g))
    return sae.eval()


def test_norm_share_of_a_latent_inside_one_head():
    sae = seeded_sae()
    with torch.no_grad():
        sae.W_dec[0].zero_()
        sae.W_dec[0, 3 * D_HEAD : 4 * D_HEAD] = torch.randn(D_HEAD)  # head 3 only
        sae.W_dec[1].zero_()
        sae.W_dec[1, 0:D_HEAD] = 1.0  # heads 0 and 8 equally
        sae.W_dec[1, 8 * D_HEAD :] = -1.0
    shares = norm_shares(sae.W_dec, N_HEADS)
    expect0 = torch.zeros(N_HEADS, dtype=torch.float64)
    expect0[3] = 1
    torch.testing.assert_close(shares[0], expect0)
    assert shares[1, 0] == pytest.approx(0.5) and shares[1, 8] == pytest.approx(0.5)
    # any latent: a direct numpy computation, and the shares sum to one
    w = sae.W_dec.detach().double().numpy()
    direct = np.stack([(w[:, h * D_HEAD : (h + 1) * D_HEAD] ** 2).sum(1) for h in range(9)], 1)
    direct /= (w**2).sum(1, keepdims=True)
    np.testing.assert_allclose(shares.numpy(), direct, rtol=1e-12)


def test_top_examples_keep_each_latents_largest():
    top = TopExamples.empty(3, 2, 1)
    idx = torch.tensor([[0, 1], [0, 2], [0, 1]])
    vals = torch.tensor([[1.0, 5.0], [3.0, 0.0], [2.0, 4.0]])  # latent 2's 0.0 is no firing
    top.add(idx, vals, vals[..., None].double() * 10)
    top.add(torch.tensor([[0]]), torch.tensor([[2.5]]), torch.tensor([[[25.0]]]).double())
    assert top.acts[0].tolist() == [3.0, 2.5] and top.acts[1].tolist() == [5.0, 4.0]
    assert top.contrib[0, :, 0].tolist() == [30.0, 25.0]
    assert torch.isinf(top.acts[2]).all()
    _, counts = top.dfa_shares()
    assert counts.tolist() == [2, 2, 0]


def test_dfa_shares_equal_a_direct_float64_computation(z_store, tmp_path):
    sae = seeded_sae(1)
    folder = save_sae(
        sae, tmp_path / "zsae", meta={"hook_name": HOOK, "model_name": "smollm2-135m"}
    )
    db = str(tmp_path / "r.duckdb")
    n_ex = 5
    cfg = EvalConfig(
        sae=str(folder), acts=z_store, db=db, evals=["heads"],
        settings={"heads": HeadsSettings(examples=n_ex)},
    )  # fmt: skip
    out = evaluate(cfg, log=lambda *_: None)
    metrics = out[folder.name]["heads"]
    assert metrics["n_heads"] == N_HEADS

    # the reference: every stored row (BOS masked) in float64, dense pre-activations through
    # W_enc [d_in, d_sae], each latent's top rows by its TopK activation
    from saelab.activations.store import ActivationStore

    store = ActivationStore(z_store)
    xs = []
    for c in store.committed_chunks():
        mask = np.asarray(store.token_mask(c)).reshape(-1)
        xs.append(store.read_acts(HOOK, c).double().reshape(mask.size, -1)[torch.from_numpy(mask)])
    x = torch.cat(xs)
    assert metrics and x.shape[0] == 16 * 31
    loaded = sae.double()
    acts = loaded.encode(x)  # [N, d_sae], TopK
    centred = x - loaded.b_dec
    W = loaded.W_enc  # [d_in, d_sae]
    store_db = results.ResultsStore(db, "read")
    sae_id = store_db.query("SELECT sae_id FROM saes")[0]["sae_id"]
    checked = 0
    for f in range(D_SAE):
        rows = results.feature_heads(store_db, sae_id, f)
        assert [r.head for r in rows] == list(range(N_HEADS))
        fired = torch.nonzero(acts[:, f] > 0).flatten()
        assert rows[0].n_examples == min(n_ex, len(fired))
        if len(fired) == 0:
            assert all(r.dfa_share is None for r in rows)
            continue
        top = fired[acts[fired, f].argsort(descending=True)[:n_ex]]
        c = torch.stack(
            [centred[top, h * D_HEAD : (h + 1) * D_HEAD] @ W[h * D_HEAD : (h + 1) * D_HEAD, f]
             for h in range(N_HEADS)], 1,
        )  # fmt: skip
        # the heads' contributions add up to the pre-activation minus b_enc
        pre = centred[top] @ W[:, f] + loaded.b_enc[f]
        torch.testing.assert_close(c.sum(1) + loaded.b_enc[f], pre)
        share = (c.abs() / c.abs().sum(1, keepdim=True)).mean(0)
        got = torch.tensor([r.dfa_share for r in rows], dtype=torch.float64)
        torch.testing.assert_close(got, share, rtol=1e-9, atol=1e-12)
        checked += 1
    assert checked > D_SAE // 2
    # the headline: the mean over latents of the largest head's norm share
    norm = norm_shares(sae.W_dec, N_HEADS)
    assert metrics["mean_max_head_norm_share"] == pytest.approx(float(norm.max(1).values.mean()))


def test_an_sae_on_another_hook_is_skipped():
    sae = seeded_sae()
    ctx = EvalContext(sae, None, "blocks.1.hook_resid_post", HeadsSettings(), None, "x", 0.1)
    with pytest.raises(EvalSkipped, match="attn.hook_z"):
        SPEC.run(ctx)


def test_loss_eval_splices_an_attention_sae_at_hook_z(z_store, model, tmp_path):
    """The loss eval on a per-head hook: its CE with the SAE spliced equals a direct run of the
    model with hook_z replaced, head shape restored, at the non-BOS positions."""
    from saelab.activations.store import ActivationStore

    sae = seeded_sae(2)
    folder = save_sae(
        sae, tmp_path / "zsae", meta={"hook_name": HOOK, "model_name": "smollm2-135m"}
    )
    cfg = EvalConfig(
        sae=str(folder), acts=z_store, db=str(tmp_path / "r.duckdb"), evals=["loss"],
        settings={"loss": {"sequences": 2, "split": "all"}},
    )  # fmt: skip
    got = evaluate(cfg, model=model, log=lambda *_: None)[folder.name]["loss"]

    store = ActivationStore(z_store)
    chunk = store.committed_chunks()[0]
    tokens = torch.from_numpy(store.read_tokens(chunk)[:2]).long()
    mask = torch.from_numpy(store.token_mask(chunk)[:2])

    def replace(act, hook=None):
        out = act.clone()
        flat = act.reshape(*act.shape[:2], -1)
        recon = sae(flat).reshape(act.shape)
        out[mask] = recon[mask]
        return out

    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, replace)])
    logp = logits.double().log_softmax(-1)[:, :-1]
    ce = float(-logp.gather(-1, tokens[:, 1:, None]).mean())
    assert got["ce_sae"] == pytest.approx(ce, rel=1e-4)
    assert abs(got["ce_sae"] - got["ce_clean"]) > 1e-3  # the splice changed the model
