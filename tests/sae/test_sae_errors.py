"""Bad input gives a one-line UserError that says what was wrong and how to fix it."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.base.errors import UserError
from saelab.sae import TrainConfig, Trainer, make_config
from saelab.sae.checkpoint import STATE_FILE
from saelab.sae.sweep import parse_sweep
from saelab.sae.synthetic import SyntheticActivations


def data(**kw):
    return SyntheticActivations(d_in=16, n_features=32, batch_size=64, seed=0, **kw)


def cfg(**kw):
    kw.setdefault("tokens", 64 * 6)
    return TrainConfig(progress=False, init_tokens=64, **kw)


def topk(**kw):
    kw.setdefault("k", 2)
    return make_config("topk", d_sae=32, **kw)


def test_sae_width_must_match_the_hook():
    with pytest.raises(UserError, match="expects inputs of width 20 but the hook .* has width 16"):
        Trainer(topk(d_in=20), data(), cfg()).run()


def test_hook_must_match_the_loader_and_be_in_the_store():
    with pytest.raises(UserError, match="loader reads 'synthetic.hook'"):
        Trainer(topk(), data(), cfg(hook="blocks.3.hook_resid_post")).run()

    class NoHookAttr:
        store_info = {"hooks": {"a": 16, "b": 16}}

        def __iter__(self):
            yield torch.zeros(4, 16)

    with pytest.raises(UserError, match="hook 'c' is not in the store; it has: a, b"):
        Trainer(topk(), NoHookAttr(), cfg(hook="c"))


def test_impossible_sweeps():
    with pytest.raises(UserError, match="sweep is empty"):
        Trainer([], data(), cfg())
    with pytest.raises(UserError, match="sweep is empty"):
        parse_sweep({"sae": []})
    with pytest.raises(
        UserError,
        match="unknown architecture 'sparse'; known: batchtopk, clt, feature_choice, gated",
    ):
        parse_sweep({"sae": [{"architecture": "sparse"}]})
    with pytest.raises(UserError, match="k must be between 1 and d_sae"):
        parse_sweep({"sae": [{"architecture": "topk", "d_sae": 8, "k": 9}]})
    with pytest.raises(UserError, match="unknown option"):
        parse_sweep({"sae": [{"architecture": "relu", "kk": 3}]})
    configs, _ = parse_sweep(
        {
            "defaults": {"d_sae": 32},
            "sae": [
                {"architecture": "relu", "grid": {"l1_coefficient": [0.1, 0.2]}},
                {"architecture": "topk", "k": 3},
            ],
        }
    )
    assert [c.resolved_name() for c in configs] == [
        "relu-32-l1_0.1",
        "relu-32-l1_0.2",
        "topk-32-k3",
    ]


def test_loader_must_yield_2d_tensors():
    with pytest.raises(UserError, match=r"must yield \[batch, d_in\] tensors"):
        Trainer(topk(), [torch.zeros(2, 3, 4)], cfg()).run()


class NaNAfter:
    """Synthetic batches, with NaNs from batch `n` on."""

    def __init__(self, n):
        self.inner, self.n = data(), n
        self.d_in = 16

    def __iter__(self):
        for i, b in enumerate(self.inner):
            yield b * float("nan") if i >= self.n else b

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    configs = [topk(name="fine"), make_config("relu", d_sae=32, name="also-fine")]
    with pytest.raises(
        UserError,
        match=r"SAE 'fine' stopped at step 5: NaN/infinite loss; the last good "
        r"checkpoint \(step 4\) is kept",
    ):
        Trainer(
            configs, NaNAfter(5), cfg(tokens=64 * 10, save_every_tokens=64 * 4), out=tmp_path
        ).run()
    state = torch.load(tmp_path / STATE_FILE, weights_only=False)
    assert state["step"] == 4
    for name in ("fine", "also-fine"):
        cfg_json = json.loads((tmp_path / name / "cfg.json").read_text())
        assert cfg_json["saelab"]["step"] == 4
        assert all(torch.isfinite(v).all() for v in state["members"][name]["model"].values())


def test_exploding_loss_is_reported():
    with pytest.raises(UserError, match="SAE 'topk-32-k2' stopped at step 0: exploding"):
        Trainer(topk(), data(), cfg(max_loss=1e-6)).run()


def test_output_folder_and_resume_mismatches(tmp_path):
    Trainer(topk(name="x"), data(), cfg(), out=tmp_path).run()
    with pytest.raises(UserError, match="already holds a training run; pass --resume"):
        Trainer(topk(name="x"), data(), cfg(), out=tmp_path)
    with pytest.raises(UserError, match="is a 'topk' SAE but the sweep asks for 'relu'"):
        Trainer(
            make_config("relu", d_sae=32, name="x"), data(), cfg(), out=tmp_path, resume=True
        ).run()
    with pytest.raises(UserError, match="another config"):
        Trainer(topk(name="x", k=3), data(), cfg(), out=tmp_path, resume=True).run()
    with pytest.raises(UserError, match="nothing to resume"):
        Trainer(topk(), data(), cfg(), out=tmp_path / "empty", resume=True)
