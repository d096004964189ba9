"""The trainer's optimiser choices: schedule-free AdamW's evaluation weights, its exact resume,
and the LR warm-up length."""

from __future__ import annotations

import copy

import pytest
import torch
from killed import KilledAfter
from schedulefree import AdamWScheduleFree

from saelab.base.errors import UserError
from saelab.sae import TrainConfig, Trainer, make_config
from saelab.sae.checkpoint import load_sae
from saelab.sae.optim import build_optimizer, eval_state, warmup_steps
from saelab.sae.synthetic import SyntheticActivations


def _data(seed: int = 3) -> SyntheticActivations:
    return SyntheticActivations(
        d_in=32, n_features=96, batch_size=256, active=3, noise=0.01, seed=seed, offset=0.5
    )


def test_eval_state_is_what_the_packages_eval_writes():
    """Our out-of-place `x` equals the parameters after `schedulefree`'s own in-place eval(),
    bit for bit, and computing it leaves the training parameters untouched."""
    torch.manual_seed(11)
    module = torch.nn.Linear(7, 5)
    opt = build_optimizer(module, 1e-2, (0.9, 0.999), 1e-8, "schedule_free_adam")
    assert isinstance(opt, AdamWScheduleFree)
    for _ in range(4):
        module(torch.randn(16, 7)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ours = eval_state(module, opt)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert not torch.equal(ours["weight"], before["weight"])  # x differs from y
    reference = copy.deepcopy((module, opt))
    reference[1].eval()
    for key, value in reference[0].state_dict().items():
        assert torch.equal(ours[key], value), key


def test_adam_has_no_separate_eval_weights():
    module = torch.nn.Linear(3, 2)
    opt = build_optimizer(module, 1e-3, (0.9, 0.999), 1e-8, "adam")
    module(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert eval_state(module, opt) is None


def _cfg(total: int, cut: int) -> TrainConfig:
    return TrainConfig(
        tokens=256 * total,
        progress=False,
        optimizer="schedule_free_adam",
        lr_decay_fraction=0.0,
        dead_window_tokens=512,
        init_tokens=512,
        save_every_tokens=256 * cut,
        log_every=2,
    )


def test_schedule_free_run_resumes_bit_for_bit_and_saves_its_average(tmp_path):
    total, cut = 8, 4
    sae = [make_config("topk", d_sae=64, k=3, seed=5)]
    straight = Trainer(sae, _data(), _cfg(total, cut), out=tmp_path / "a")
    saved = straight.run()

    data = _data()
    killed = Trainer(
        sae, KilledAfter(data, cut + 1), _cfg(total, cut), out=tmp_path / "b", state_source=data
    )
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert killed.last_saved_step == cut
    resumed = Trainer(sae, _data(), _cfg(total, cut), out=tmp_path / "b", resume=True)
    resumed.run()

    a, b = straight.members[0], resumed.members[0]
    for key, value in a.sae.state_dict().items():
        assert torch.equal(value, b.sae.state_dict()[key]), key
    za = [s["z"] for s in a.optimizer.state.values()]
    zb = [s["z"] for s in b.optimizer.state.values()]
    assert len(za) == 4 and all(torch.equal(x, y) for x, y in zip(za, zb, strict=True))
    assert a.optimizer.param_groups[0]["k"] == b.optimizer.param_groups[0]["k"] == total
    assert (a.folder / "sae_weights.safetensors").read_bytes() == (
        b.folder / "sae_weights.safetensors"
    ).read_bytes()

    # The folder holds the averaged x (scale folded in), not the y the gradients were taken at.
    x = eval_state(a.sae, a.optimizer)
    loaded = load_sae(a.folder)
    torch.testing.assert_close(loaded.W_dec, x["W_dec"] / straight.scale, rtol=1e-6, atol=0)
    assert not torch.allclose(loaded.W_dec, a.sae.W_dec / straight.scale)
    torch.testing.assert_close(saved[a.name].W_dec, loaded.W_dec, rtol=0, atol=0)


def test_warmup_length_follows_the_fraction():
    assert warmup_steps(200, None, 0.05) == 10
    assert warmup_steps(200, None, 0.25) == 50
    assert warmup_steps(100_000, None, 0.25) == 1000  # capped
    assert warmup_steps(200, 7, 0.25) == 7  # an explicit count wins


def test_unknown_optimizer_is_refused():
    with pytest.raises(UserError, match="`optimizer` must be one of .adam., .schedule_free_adam."):
        TrainConfig(optimizer="sgd").validate()


def test_default_lr_rule_scales_with_width_above_the_floor():
    """lr_base / sqrt(d_sae / 2**14), with d_sae floored at lr_min_width (TopK family)."""
    topk = make_config("topk", d_sae=4 * 2**14, k=8)
    assert topk.resolved_lr() == pytest.approx(topk.lr_base / 2)
    narrow, floor = make_config("topk", d_sae=64, k=8), make_config("topk", d_sae=2048, k=8)
    assert narrow.resolved_lr() == floor.resolved_lr() < 2 * topk.resolved_lr() * 4
    relu = make_config("relu", d_sae=64)  # no floor for the threshold architectures
    assert relu.resolved_lr() == pytest.approx(relu.lr_base * 16)
    assert make_config("topk", d_sae=64, k=8, lr=1e-3).resolved_lr() == 1e-3


def _strip_to_pre_issue_17(state_file) -> None:
    """Make a training state look written before the LR-rule and warm-up fields existed."""
    from saelab.sae.checkpoint import load_training_state, save_training_state

    state = load_training_state(state_file)
    for name in ("lr_warmup_fraction", "optimizer"):
        del state["identity"]["train"][name]
    for member in state["members"].values():
        del member["config"]["lr_base"], member["config"]["lr_min_width"]
    del state["legacy_fields"]
    save_training_state(state_file, {k: v for k, v in state.items() if k != "format_version"})


def test_a_run_saved_before_the_new_defaults_resumes_as_it_was_started(tmp_path):
    """A run started with the old defaults (LR rule 2e-4, 5% warm-up) and killed, resumed with
    the same command under today's defaults, ends bit for bit where the old run ends; so
    does a second kill and resume (the adopted values are remembered)."""
    total, cut = 12, 4
    old = dict(lr_base=2e-4, lr_min_width=1)
    legacy = dict(lr_warmup_fraction=0.05, lr_decay_fraction=0.2, dead_window_tokens=512)

    def cfg(**kw) -> TrainConfig:
        return TrainConfig(tokens=256 * total, progress=False, init_tokens=512,
                           save_every_tokens=256 * cut, log_every=2, **kw)  # fmt: skip

    straight = Trainer(
        [make_config("topk", d_sae=64, k=3, seed=5, **old)], _data(), cfg(**legacy),
        out=tmp_path / "a",
    )  # fmt: skip
    straight.run()

    data = _data()
    killed = Trainer(
        [make_config("topk", d_sae=64, k=3, seed=5, **old)], KilledAfter(data, cut + 1),
        cfg(**legacy), out=tmp_path / "b", state_source=data,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    _strip_to_pre_issue_17(tmp_path / "b" / "training_state.pt")

    # Today's command: no LR, warm-up or optimizer given.
    data = _data()
    today = [make_config("topk", d_sae=64, k=3, seed=5)]
    again = Trainer(
        today, KilledAfter(data, cut + 1), cfg(dead_window_tokens=512),
        out=tmp_path / "b", resume=True, state_source=data,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        again.run()
    assert again.members[0].sae.cfg.lr == straight.members[0].sae.cfg.lr
    assert again.cfg.lr_warmup_fraction == 0.05
    assert sorted(again.legacy_fields) == ["lr_base", "lr_min_width", "lr_warmup_fraction", "optimizer"]  # fmt: skip

    resumed = Trainer(
        [make_config("topk", d_sae=64, k=3, seed=5)], _data(), cfg(dead_window_tokens=512),
        out=tmp_path / "b", resume=True,
    )  # fmt: skip
    resumed.run()
    a, b = straight.members[0].sae.state_dict(), resumed.members[0].sae.state_dict()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_a_pre_issue_17_run_resumed_with_another_lr_base_is_refused(tmp_path):
    data = _data()
    sae = [make_config("topk", d_sae=64, k=3, seed=5, lr_base=2e-4, lr_min_width=1)]
    cfg = TrainConfig(tokens=256 * 8, progress=False, init_tokens=512, save_every_tokens=512,
                      lr_warmup_fraction=0.05, dead_window_tokens=512)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        Trainer(sae, KilledAfter(data, 3), cfg, out=tmp_path, state_source=data).run()
    _strip_to_pre_issue_17(tmp_path / "training_state.pt")
    other = [make_config("topk", d_sae=64, k=3, seed=5, lr_base=1e-3)]
    with pytest.raises(UserError, match="lr_base"):
        Trainer(other, _data(), cfg, out=tmp_path, resume=True).run()
