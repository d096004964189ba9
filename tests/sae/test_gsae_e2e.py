"""g-SAE (gradient-informed TopK), the live gradient source, and end-to-end KL fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.base.errors import UserError
from saelab.sae.base import StepContext
from saelab.sae.registry import build_sae, make_config

HOOK = "blocks.2.hook_resid_post"


def _random_gsae(normalization: str, beta: float = 1.5, d_in: int = 24, d_sae: int = 96):
    cfg = make_config(
        "gsae", d_sae=d_sae, d_in=d_in, k=5, grad_beta=beta, grad_normalization=normalization
    )
    sae = build_sae(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.encoder_weight.copy_(torch.randn(d_sae, d_in, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
    return sae


def _dense_reference(sae, x, grad, normalization, beta):
    """Float64 dense: the k largest z·(1 + β·a) with a = |∇L · d_i| scaled as the config says."""
    W_enc = sae.encoder_weight.detach().double()  # [d_sae, d_in]
    W_dec = sae.W_dec.detach().double()
    z = torch.clamp(torch.einsum("si,ni->ns", W_enc, x.double() - sae.b_dec.double()), min=0)
    z = torch.clamp(z + sae.b_enc.detach().double(), min=0)
    a = torch.einsum("si,ni->ns", W_dec, grad.double()).abs()
    if normalization == "batch":
        a = a / np.sqrt(float((a**2).sum()) / a.numel())
    elif normalization == "token":
        a = a / ((a**2).sum(1, keepdim=True) / a.shape[1]).sqrt()
    score = z * (1 + beta * a)
    order = torch.argsort(score, dim=1, descending=True)[:, : sae.cfg.k]
    return order, z


@pytest.mark.parametrize("normalization", ["batch", "token", "none"])
def test_gsae_selection_matches_dense_reference(normalization):
    sae = _random_gsae(normalization)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 24, generator=g)
    # per-token gradient scales spread over two orders of magnitude: normalisations differ
    grad = torch.randn(40, 24, generator=g) * torch.logspace(-1, 1, 40).unsqueeze(1)
    ref_idx, z = _dense_reference(sae, x, grad, normalization, 1.5)
    out = sae.training_forward(x, StepContext(grad=grad))
    got = out.code.idx.sort(1).values
    assert torch.equal(got, ref_idx.sort(1).values)
    # the kept values are z itself, and the reconstruction decodes them
    vals = torch.gather(z, 1, out.code.idx).float()
    torch.testing.assert_close(out.code.vals.detach(), vals, atol=1e-5, rtol=1e-5)
    dense = torch.zeros(40, 96, dtype=torch.float64).scatter(1, ref_idx, z.gather(1, ref_idx))
    x_hat = dense @ sae.W_dec.detach().double() + sae.b_dec.detach().double()
    torch.testing.assert_close(out.x_hat.detach().double(), x_hat, atol=1e-5, rtol=1e-5)
    # the gradient changes the choice on some rows (the test would not see a no-op)
    plain = torch.argsort(z, dim=1, descending=True)[:, :5].sort(1).values
    assert not torch.equal(plain, got)


def test_gsae_beta_zero_is_topk_and_inference_ignores_gradients():
    sae = _random_gsae("batch", beta=0.0)
    g = torch.Generator().manual_seed(11)
    x, grad = torch.randn(30, 24, generator=g), torch.randn(30, 24, generator=g)
    out = sae.training_forward(x, StepContext(grad=grad))
    assert torch.equal(out.code.idx.sort(1).values, sae.encode_sparse(x).idx.sort(1).values)


def test_gsae_refuses_without_gradients(small_store):
    sae = _random_gsae("batch")
    with pytest.raises(UserError, match="LM loss gradient") as err:
        sae.training_forward(torch.randn(4, 24), StepContext())
    assert "\n" not in str(err.value)
    from saelab.sae.run import TrainRunConfig, run_training

    cfg = TrainRunConfig(
        acts=small_store, hook=HOOK, saes=[make_config("gsae", d_sae=64, k=4)], live=False
    )
    with pytest.raises(UserError, match="only the live loader") as err:
        run_training(cfg)
    assert "\n" not in str(err.value)


class _PairSource:
    """A tiny gradient source: fixed (x, grad) pairs."""

    gives_grad = True

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.batches = [
            (torch.randn(64, 16, generator=g) * 3, torch.randn(64, 16, generator=g))
            for _ in range(3)
        ]

    def __iter__(self):
        return iter(self.batches)


def test_trainer_hands_the_gradient_in_training_units(monkeypatch):
    from saelab.sae.architectures.gsae import GSAE
    from saelab.sae.config import TrainConfig
    from saelab.sae.trainer import Trainer

    seen = []
    original = GSAE.select_with_grad

    def spy(self, pre, grad):
        seen.append(grad.clone())
        return original(self, pre, grad)

    monkeypatch.setattr(GSAE, "select_with_grad", spy)
    source = _PairSource()
    cfg = make_config("gsae", d_sae=32, k=3, lr=1e-3)
    trainer = Trainer(cfg, source, TrainConfig(tokens=192, progress=False, log_every=1))
    trainer.run()
    assert len(seen) == 3
    for (_, grad), got in zip(source.batches, seen, strict=True):
        # d loss / d (x * scale) = grad / scale
        torch.testing.assert_close(got, grad / trainer.scale)


def test_hook_gradients_match_autograd_reference(model, small_store):
    from saelab.activations.live import hook_gradients
    from saelab.activations.store import ActivationStore

    store = ActivationStore(small_store)
    tokens = torch.from_numpy(store.read_tokens(0)[:2, :8]).long()
    acts, grads = hook_gradients(model.bridge, HOOK, tokens, batch_size=1)

    saved = {}

    def keep(act, hook=None):
        saved["a"] = act

    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, keep)], return_type="logits")
        assert saved["a"].requires_grad
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
            tokens[:, 1:].reshape(-1),
            reduction="sum",
        )
        (ref,) = torch.autograd.grad(loss, saved["a"])
    # float32 forwards through the model on both sides: agreement to 1e-3 of the largest entry
    scale = float(ref.abs().max())
    torch.testing.assert_close(grads, ref.float(), atol=1e-3 * scale, rtol=1e-3)
    assert float(grads[:, :-1].norm(dim=-1).min()) > 0 and float(grads[:, -1].abs().max()) == 0
    # the live activations are the stored ones (float16 in the store)
    stored = store.read_acts(HOOK, 0)[:2, :8].float()
    torch.testing.assert_close(acts, stored, atol=0.05, rtol=2e-3)


def _identity_topk(d_in: int):
    """TopK with d_sae = 2·d_in, W_dec = [I; −I], k = d_in: x̂ = relu(x) − relu(−x) = x."""
    sae = build_sae(make_config("topk", d_sae=2 * d_in, d_in=d_in, k=d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.encoder_weight.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _sequences(store_path: str, n: int):
    from saelab.activations.store import ActivationStore

    store = ActivationStore(store_path)
    return (
        torch.from_numpy(store.read_tokens(0)[:n]).long(),
        torch.from_numpy(store.token_mask(0)[:n]),
    )


def test_e2e_loss_of_identity_splice_is_zero(model, small_store):
    from saelab.sae.e2e import E2EConfig, downstream_hooks, splice_loss

    toks, mask = _sequences(small_store, 1)
    sae = _identity_topk(model.d_model)
    cfg = E2EConfig(sae="unused: the loss alone reads no folder", mode="kl+ds")
    ds = downstream_hooks(HOOK, model.n_layers)
    assert ds[0] == "blocks.3.hook_resid_post" and len(ds) == model.n_layers - 3
    terms = splice_loss(model.bridge, HOOK, sae, 1.0, toks[:, :16], mask[:, :16], cfg, ds)
    assert float(terms.kl) < 1e-6 and float(terms.ds_mse) < 1e-8
    assert float(terms.sparsity) == 0  # TopK keeps its k: no sparsity term
    # a reconstruction off by a little is seen by both terms
    with torch.no_grad():
        sae.W_dec.mul_(0.9)
    off = splice_loss(model.bridge, HOOK, sae, 1.0, toks[:, :16], mask[:, :16], cfg, ds)
    assert float(off.kl) > 1e-4 and float(off.ds_mse) > 1e-4


def test_e2e_finetuning_lowers_spliced_kl_and_saves_a_checkpoint(model, small_store, tmp_path):
    import saelab
    from saelab.sae.checkpoint import load_sae
    from saelab.sae.config import TrainConfig
    from saelab.sae.e2e import E2EConfig, E2ETrainer, splice_loss

    torch.manual_seed(0)
    base = tmp_path / "topk"
    saelab.train(
        make_config("topk", d_sae=256, k=4, lr=4e-3), small_store, HOOK,
        TrainConfig(tokens=1024, progress=False), out=str(base), batch_size=256,
    )  # fmt: skip
    out = tmp_path / "e2e"
    e2e = E2EConfig(sae=str(base), mode="kl", lr=3e-3)
    train = TrainConfig(tokens=1, progress=False, lr_warmup_steps=0, lr_decay_fraction=0.0)
    trainer = E2ETrainer(
        e2e, small_store, train, str(out), tokens=2 * 32, batch_size=32, seed=1, model=model
    )
    seqs = torch.cat([trainer.step_sequences(s) for s in range(2)])  # its 2 training sequences
    toks, mask = trainer.tokens_all[seqs, :16], trainer.mask_all[seqs, :16]  # their first halves

    def spliced_kl(sae) -> float:  # raw-unit SAE
        with torch.no_grad():
            return float(splice_loss(model.bridge, HOOK, sae, 1.0, toks, mask, e2e, []).kl)

    kl_before = spliced_kl(load_sae(base))
    trainer.run()
    after = load_sae(out)  # a normal checkpoint folder
    assert after.architecture == "topk" and after.cfg.k == 4
    kl_after = spliced_kl(after)
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)
    # the folder's weights are the trainer's SAE in raw units
    x = torch.randn(8, model.d_model, generator=torch.Generator().manual_seed(2)) * 5
    torch.testing.assert_close(after(x), trainer.raw_sae()(x), atol=1e-4, rtol=1e-4)


def test_live_loader_resumes_exactly(model, small_store):
    """A resumed live loader recomputes the carried rows and yields the same pairs."""
    from saelab.activations.live import LiveGradientLoader

    def loader():
        return LiveGradientLoader(
            small_store, HOOK, batch_size=64, seed=3, shuffle_chunks=1, model=model
        )

    first = loader()
    it = iter(first)
    next(it)
    state = first.state_dict()
    x_next, g_next = next(it)
    resumed = loader()
    resumed.load_state_dict(state)
    x_res, g_res = next(iter(resumed))
    assert torch.equal(x_next, x_res) and torch.equal(g_next, g_res)


def test_hook_gradients_from_two_threads_on_one_model_match_one_thread(model, small_store):
    """Two threads taking hook gradients on one model at once (two live loaders' prefetch
    threads) each get what a lone call gets: hooks live on the shared model, so without turn
    taking one thread's hook fires inside the other's pass (CI caught this in the resume test)."""
    import threading

    from saelab.activations.live import hook_gradients
    from saelab.activations.store import ActivationStore

    store = ActivationStore(small_store)
    tokens = [torch.from_numpy(store.read_tokens(c)[:6, :16]).long() for c in (0, 1)]
    alone = [hook_gradients(model.bridge, HOOK, t, batch_size=1) for t in tokens]
    together: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            together[i] = hook_gradients(model.bridge, HOOK, tokens[i], batch_size=1)
        except BaseException as err:  # re-raised below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (xa, ga), (xt, gt) in zip(alone, together):
        assert torch.equal(xa, xt) and torch.equal(ga, gt)


def test_e2e_resume_is_exact(model, small_store, tmp_path):
    """Interrupted after its first checkpoint and resumed, an e2e run ends bit for bit where an
    uninterrupted one does (four e2e steps of the live model, ~10 s)."""
    import saelab
    from saelab.sae.checkpoint import load_sae
    from saelab.sae.config import TrainConfig
    from saelab.sae.e2e import E2EConfig, E2ETrainer

    saelab.train(
        make_config("topk", d_sae=128, k=4, lr=4e-3), small_store, HOOK,
        TrainConfig(tokens=512, progress=False), out=str(tmp_path / "topk"), batch_size=256,
    )  # fmt: skip
    e2e = E2EConfig(sae=str(tmp_path / "topk"), lr=1e-3)

    def trainer(out, resume=False):
        train = TrainConfig(tokens=1, progress=False, save_every_tokens=32, lr_warmup_steps=0)
        return E2ETrainer(
            e2e, small_store, train, str(tmp_path / out), tokens=64, batch_size=32, model=model,
            resume=resume,
        )  # fmt: skip

    trainer("straight").run()
    interrupted = trainer("resumed")
    first_save = interrupted.save

    def save_then_stop():
        first_save()
        raise KeyboardInterrupt

    interrupted.save = save_then_stop
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = trainer("resumed", resume=True)
    assert resumed.step == 1
    resumed.run()
    a, b = load_sae(tmp_path / "straight"), load_sae(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
