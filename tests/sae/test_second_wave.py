"""Mutual Choice, Feature Choice (with aux_zipf_loss) and Matching-Pursuit SAEs against
independent float64 references, hand-worked examples, training, checkpoints and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.cli import main
from saelab.sae import load_sae, save_sae
from saelab.sae.architectures.mutual_choice import aux_zipf_loss, zipf_fit, zipf_shortfall
from saelab.sae.base import StepContext
from saelab.sae.registry import build_sae, make_config
from saelab.sae.synthetic import SyntheticActivations

HOOK = "blocks.2.hook_resid_post"


def make(arch: str, d_sae: int = 32, d_in: int = 12, seed: int = 0, **kw):
    sae = build_sae(make_config(arch, d_sae=d_sae, seed=seed, **kw), d_in)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
        if arch != "mp":
            sae.encoder_weight.add_(0.3 * torch.randn(sae.encoder_weight.shape, generator=g))
            sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    return sae


@torch.no_grad()
def preacts64(sae, x):
    return (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()


def test_mutual_choice_keeps_the_batch_s_largest_k_n_entries():
    sae = make("mutual_choice", k=3)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(2))
    code = sae.training_forward(x, StepContext()).code
    pre = preacts64(sae, x)
    # Reference: a sort of the flattened batch, then keep the first k·N, ReLU'd.
    order = pre.flatten().argsort(descending=True)[: 3 * 40]
    expected = torch.zeros(40 * 32, dtype=torch.float64)
    expected[order] = pre.flatten()[order].clamp_min(0)
    torch.testing.assert_close(code.to_dense().double(), expected.view(40, 32), atol=1e-5, rtol=0)
    assert not torch.equal(code.l0(), torch.full((40,), 3.0))  # allocation varies per token


def test_feature_choice_each_latent_keeps_its_m_largest_tokens():
    sae = make("feature_choice", k=3)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3))
    code = sae.training_forward(x, StepContext()).code
    pre = preacts64(sae, x)
    m = 3 * 64 // 32
    expected = torch.zeros_like(pre)
    for j in range(32):  # per-latent loop: the latent's m best tokens
        best = sorted(range(64), key=lambda n: -float(pre[n, j]))[:m]
        for n in best:
            expected[n, j] = max(float(pre[n, j]), 0.0)
    torch.testing.assert_close(code.to_dense().double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["mutual_choice", "feature_choice"])
def test_mean_l0_over_a_batch_is_k(arch):
    sae = make(arch, k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: ReLU removes none
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    code = sae.training_forward(x, StepContext()).code
    assert float(code.l0().mean()) == 5.0


@pytest.mark.parametrize("arch", ["mutual_choice", "feature_choice"])
def test_fitted_inference_threshold_keeps_l0_near_k(arch):
    sae = make(arch, k=4, threshold_ema=0.2)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        sae.after_step_update(
            sae.training_forward(torch.randn(128, 12, generator=g), StepContext())
        )
    held_out = sae.eval().encode_sparse(torch.randn(512, 12, generator=g))
    assert 3.0 < float(held_out.l0().mean()) < 5.0


def test_zipf_fit_and_shortfall_hand_worked():
    # Latents 0, 1, 3 follow f(r) = 0.6 / r exactly (ranks 1, 2, 3); latent 2 is dead, rank 4,
    # where the law expects 0.6 / 4 = 0.15: its shortfall. The others fire as expected.
    freq = torch.tensor([0.6, 0.3, 0.0, 0.2])
    c, alpha = zipf_fit(freq)
    assert c == pytest.approx(0.6) and alpha == pytest.approx(1.0)
    torch.testing.assert_close(
        zipf_shortfall(freq), torch.tensor([0, 0, 0.15, 0], dtype=torch.float64)
    )
    assert zipf_fit(torch.tensor([0.5, 0.0, 0.0])) is None


def test_zipf_fit_matches_numpy_polyfit():
    # The fit uses the more frequent half of the latents that fire: 25 of these 50.
    rng = np.random.default_rng(6)
    freq = np.concatenate([rng.uniform(0.001, 0.5, 50), np.zeros(7)])
    head = np.sort(freq)[::-1][:25]
    slope, intercept = np.polyfit(np.log(np.arange(1, 26)), np.log(head), 1)
    c, alpha = zipf_fit(torch.tensor(rng.permutation(freq)))
    assert alpha == pytest.approx(-slope) and c == pytest.approx(np.exp(intercept))


def test_aux_zipf_loss_hand_worked():
    # 10 tokens; only latent 2 is short (0.15 of 10 tokens → a quota of 2): its two largest
    # pre-activations (tokens 7 and 4) reconstruct the residual there; elsewhere ê = 0.
    sae = make("mutual_choice", d_sae=4, d_in=3, k=1)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.zero_()
        sae.encoder_weight.zero_()
        sae.encoder_weight[2] = torch.tensor([1.0, 0.0, 0.0])
    x = torch.zeros(10, 3)
    x[:, 0] = torch.tensor([0.1, -0.5, 0.2, 0.05, 0.7, 0.3, -0.1, 0.9, 0.0, 0.4])
    pre = (x @ sae.W_enc).detach()
    residual = torch.randn(10, 3, generator=torch.Generator().manual_seed(7))
    loss = aux_zipf_loss(sae, x, pre, residual, torch.tensor([0.6, 0.3, 0.0, 0.2]))
    e_hat = torch.zeros(10, 3)
    e_hat[7] = 0.9 * sae.W_dec[2].detach()
    e_hat[4] = 0.7 * sae.W_dec[2].detach()
    expected = (e_hat - residual).pow(2).sum(1).mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert sae.encoder_weight.grad[2].abs().sum() > 0
    assert sae.encoder_weight.grad[[0, 1, 3]].abs().sum() == 0


def test_mutual_choice_trains_with_aux_zipf_term():
    sae = make("mutual_choice", k=2)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(8))
    first = sae.training_forward(x, StepContext())
    assert "aux_zipf" not in first.terms  # no frequencies yet
    sae.after_step_update(first)
    with torch.no_grad():
        sae.firing_frequency[:4] = 0  # a few latents fell silent
    out = sae.training_forward(x, StepContext())
    assert "aux_zipf" in out.terms
    torch.testing.assert_close(out.loss, out.terms["mse"] + 0.25 * out.terms["aux_zipf"])


def mp_reference(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Matching pursuit row by row in float64 with plain Python choices."""
    W, b, x = W.double(), b.double(), x.double()
    z = torch.zeros(x.shape[0], W.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        r = x[n] - b
        for _ in range(k):
            scores = [float(W[j] @ r) for j in range(W.shape[0])]
            j = max(range(len(scores)), key=scores.__getitem__)
            c = max(scores[j], 0.0)
            z[n, j] += c
            r = r - c * W[j]
    return z


def test_mp_encode_matches_a_float64_pursuit_and_is_orthogonal_to_the_last_atom():
    sae = make("mp", d_sae=24, d_in=8, k=4)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(9))
    expected = mp_reference(sae.W_dec.detach(), sae.b_dec.detach(), x, 4)
    torch.testing.assert_close(sae.encode(x).double(), expected, atol=1e-5, rtol=1e-5)
    code, residual = sae.pursuit(x)
    last = sae.W_dec[code.idx[:, -1]]
    assert (residual * last).sum(1).abs().max() < 1e-5
    torch.testing.assert_close(sae.decode_sparse(code), x - residual, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.encode_at(x, code.idx), code.vals)  # replayed choices


def test_mp_gradient_reaches_the_decoder_through_the_pursuit():
    # Finite differences this small never change a choice: gradcheck sees the unrolled
    # pursuit's coefficients and residuals as smooth functions of the atoms and b_dec.
    sae = make("mp", d_sae=12, d_in=5, k=3).double()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10))

    def reconstruction(w, b):
        return torch.func.functional_call(sae, {"W_dec": w, "b_dec": b}, (x,))

    w, b = (p.detach().clone().requires_grad_() for p in (sae.W_dec, sae.b_dec))
    assert torch.autograd.gradcheck(reconstruction, (w, b))


@pytest.mark.parametrize("arch", ["mutual_choice", "feature_choice", "mp"])
def test_a_few_steps_reduce_the_loss(arch):
    torch.manual_seed(0)
    data = SyntheticActivations(d_in=16, n_features=32, batch_size=128, active=3, seed=1)
    sae = build_sae(make_config(arch, d_sae=64, k=3, lr=5e-3), 16)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-3)
    held = data.batch(999)
    with torch.no_grad():
        before = float(sae.mse(sae(held), held))
    for i in range(30):
        out = sae.training_forward(data.batch(i), StepContext())
        opt.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        sae.after_step_update(out)
    with torch.no_grad():
        after = float(sae.eval().mse(sae(held), held))
    assert after < 0.7 * before


@pytest.mark.parametrize("arch", ["mutual_choice", "feature_choice", "mp"])
def test_checkpoint_round_trip_gives_identical_encodings(tmp_path, arch):
    sae = make(arch, k=3)
    g = torch.Generator().manual_seed(11)
    for _ in range(3):  # fit the inference thresholds
        sae.after_step_update(sae.training_forward(torch.randn(64, 12, generator=g), StepContext()))
    save_sae(sae, tmp_path, scale=0.5)
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae)
    raw = torch.randn(30, 12, generator=g) * 2
    with torch.no_grad():
        mine, theirs = sae.eval().encode_sparse(raw * 0.5), loaded.encode_sparse(raw)
        assert torch.equal(mine.to_dense() != 0, theirs.to_dense() != 0)
        torch.testing.assert_close(theirs.to_dense(), mine.to_dense(), rtol=1e-5, atol=1e-6)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"mp": "matching_pursuit"}.get(arch, "jumprelu")


@pytest.mark.parametrize("arch", ["mutual_choice", "feature_choice", "mp"])
def test_train_from_the_command_line(small_store, tmp_path, arch):
    out = tmp_path / arch
    argv = ["train", "--acts", small_store, "--hook", HOOK, "--batch-size", "128"]
    argv += ["--out", str(out), "--no-progress", "--arch", arch, "--d-sae", "64", "--k", "4"]
    assert main([*argv, "--tokens", "512", "--lr", "2e-3"]) == 0
    sae = load_sae(out, architecture=arch)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["fvu"] < 1.5
    assert sae.d_sae == 64 and sae.cfg.k == 4


def test_train_from_python(small_store, tmp_path):
    import saelab

    cfg = saelab.sae.TrainConfig(tokens=256, progress=False)
    saes = saelab.train(
        [make_config(a, d_sae=64, k=4, lr=2e-3) for a in ("mutual_choice", "feature_choice", "mp")],
        small_store, HOOK, cfg, out=tmp_path / "sweep", batch_size=128,
    )  # fmt: skip
    assert sorted(saes) == ["feature_choice-64-k4", "mp-64-k4", "mutual_choice-64-k4"]
    assert float(load_sae(tmp_path / "sweep" / "mutual_choice-64-k4").running_threshold) > 0
    assert float(load_sae(tmp_path / "sweep" / "feature_choice-64-k4").latent_threshold.max()) > 0


def test_feature_choice_calibration_fires_each_latent_on_its_share_of_the_sample():
    """After `calibrate_inference` on n rows, each latent fires on exactly its capacity m of them
    (counted against float64 pre-activations), so the mean L0 on the sample is m·d_sae/n ≈ k."""
    sae = make("feature_choice", k=3, d_sae=32)
    with torch.no_grad():
        sae.b_enc.add_(2.0)  # enough positive pre-activations for every latent's m-th value
    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(int(torch.seed()) % 2**31))
    sae.calibrate_inference(x)
    m = sae.capacity(200)
    fires = preacts64(sae, x) > sae.latent_threshold
    assert fires.sum(0).tolist() == [m] * 32
    assert float(sae.eval().encode_sparse(x).l0().mean()) == pytest.approx(m * 32 / 200)
