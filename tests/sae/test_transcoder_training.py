"""Transcoders trained from a real store: the joint-hook loader, exact resume, `saelab train
--arch transcoder` (one pair, and one transcoder per layer in one pass)."""

from __future__ import annotations

import json

import pytest
import torch

from saelab import cli
from saelab.activations.loader import ActivationLoader, JointHookLoader
from saelab.cli import main
from saelab.sae import load_sae, make_config
from saelab.sae.config import TrainConfig
from saelab.sae.trainer import Trainer
from tests.conftest import SMALL_HARVEST
from tests.sae.killed import KilledAfter

LAYERS = (1, 2)
IN = "blocks.{}.ln2.hook_normalized"
OUT = "blocks.{}.hook_mlp_out"


@pytest.fixture(scope="module")
def mlp_store(model, tmp_path_factory):
    """The MLP input and output of two layers, harvested in one pass (6 chunks)."""
    from saelab.activations.harvest import HarvestConfig, harvest

    out = str(tmp_path_factory.mktemp("stores") / "mlp.zarr")
    hooks = [h.format(layer) for layer in LAYERS for h in (IN, OUT)]
    harvest(HarvestConfig(out=out, hooks=hooks, **SMALL_HARVEST), model=model)
    return out


@pytest.fixture(autouse=True)
def _train_command_registered(monkeypatch):
    if "train" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "train"])


def test_joint_rows_are_each_hooks_rows_side_by_side(mlp_store):
    """Same tokens, same shuffle: the joint loader's columns equal what a single-hook loader
    of each hook yields under the same seed."""
    hooks = [IN.format(1), OUT.format(1)]
    joint = JointHookLoader(mlp_store, hooks, batch_size=100, seed=5, shuffle_chunks=2)
    assert joint.columns == {hooks[0]: slice(0, 576), hooks[1]: slice(576, 1152)}
    singles = [
        ActivationLoader(mlp_store, h, batch_size=100, seed=5, shuffle_chunks=2) for h in hooks
    ]
    batches = list(joint)
    assert len(batches) > 3
    for i, h in enumerate(hooks):
        alone = list(singles[i])
        assert len(alone) == len(batches)
        for a, b in zip(batches, alone, strict=True):
            assert torch.equal(a[:, joint.columns[h]], b)


def _configs():
    common = dict(d_sae=96, k=6, target_hook=OUT.format(1), lr=2e-3)
    return [
        make_config("transcoder", **common, name="plain"),
        make_config("transcoder", **common, skip=True, name="skip", seed=1),
    ]


def _cfg(total, cut):
    return TrainConfig(
        tokens=64 * total, hook=IN.format(1), progress=False, log_every=2, init_tokens=256,
        dead_window_tokens=128, save_every_tokens=64 * cut,
    )  # fmt: skip


def _loader(store):
    return JointHookLoader(store, [IN.format(1), OUT.format(1)], batch_size=64, seed=0, epochs=2)


def test_kill_and_resume_is_bitwise_identical(mlp_store, tmp_path):
    total, cut = 10, 4
    straight = Trainer(_configs(), _loader(mlp_store), _cfg(total, cut), out=tmp_path / "a")
    straight.run()

    data = _loader(mlp_store)
    killed = Trainer(
        _configs(), KilledAfter(data, cut + 3), _cfg(total, cut), out=tmp_path / "b",
        state_source=data,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert killed.last_saved_step == cut
    resumed = Trainer(
        _configs(), _loader(mlp_store), _cfg(total, cut), out=tmp_path / "b", resume=True
    )
    resumed.run()
    assert resumed.step == straight.step == total
    for a, b in zip(straight.members, resumed.members, strict=True):
        for key, value in a.sae.state_dict().items():
            assert torch.equal(value, b.sae.state_dict()[key]), (a.name, key)
        assert (tmp_path / "a" / a.name / "sae_weights.safetensors").read_bytes() == (
            tmp_path / "b" / a.name / "sae_weights.safetensors"
        ).read_bytes()
    assert straight.scales[IN.format(1)] != straight.scales[OUT.format(1)]


def _train(store, out, *extra):
    return main(
        ["train", "--acts", store, "--arch", "transcoder", "--d-sae", "128", "--k", "8",
         "--batch-size", "128", "--lr", "2e-3", "--out", str(out), "--no-progress", *extra]
    )  # fmt: skip


def _raw_fvu(tc, store, source, target):
    """FVU of the saved (raw-unit) transcoder on the store's held-out rows."""
    rows = torch.cat(
        list(JointHookLoader(store, [source, target], batch_size=64, split="test", drop_last=False))
    )
    x, y = rows[:, :576], rows[:, 576:]
    with torch.no_grad():
        err = (tc(x) - y).pow(2).sum()
    return float(err / (y - y.mean(0)).pow(2).sum())


def test_cli_trains_a_skip_transcoder_that_works_on_raw_activations(mlp_store, tmp_path):
    out = tmp_path / "tc"
    src, tgt = IN.format(2), OUT.format(2)
    assert (
        _train(mlp_store, out, "--hook", src, "--target-hook", tgt, "--skip", "--tokens", "2048")
        == 0
    )
    tc = load_sae(out, architecture="transcoder")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == src and cfg["saelab"]["target_hook"] == tgt
    assert tc.input_hook == src and tc.target_hook == tgt and tc.W_skip is not None
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # The metrics' FVU is in training units; the saved transcoder, on raw activations, must
    # do about as well on held-out rows (a wrongly folded input or target scale, a factor of
    # s_in / s_out off, would give an FVU far above 1).
    fvu = _raw_fvu(tc, mlp_store, src, tgt)
    assert fvu < 1.0 and abs(fvu - rows[-1]["fvu"]) < 0.1, (fvu, rows[-1]["fvu"])


def test_cli_trains_one_transcoder_per_layer_in_one_pass(mlp_store, tmp_path):
    out = tmp_path / "per-layer"
    rc = _train(
        mlp_store, out, "--layers", "1-2", "--hook", "blocks.{layer}.ln2.hook_normalized",
        "--target-hook", "blocks.{layer}.hook_mlp_out", "--tokens", "1024",
    )  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["transcoder-128-k8-L1", "transcoder-128-k8-L2"]
    for layer in LAYERS:
        tc = load_sae(out / f"transcoder-128-k8-L{layer}")
        assert tc.input_hook == IN.format(layer) and tc.target_hook == OUT.format(layer)
    # Each per-layer transcoder is the one its layer's pair trains alone: the same rows in the
    # same order, its own input and target scales.
    alone = tmp_path / "alone"
    args = ("--hook", IN.format(2), "--target-hook", OUT.format(2), "--tokens", "1024")
    assert _train(mlp_store, alone, *args) == 0
    shared, single = load_sae(out / "transcoder-128-k8-L2"), load_sae(alone)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(shared.state_dict()[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--hook", IN.format(1)), "target_hook"),
        (
            ("--hook", IN.format(1), "--target-hook", "blocks.9.hook_mlp_out"),
            "blocks.9.hook_mlp_out",
        ),
        (("--layers", "1-2", "--hook", IN.format(1), "--target-hook", OUT.format(1)), "{layer}"),
    ],
)
def test_bad_transcoder_runs_are_one_line(mlp_store, tmp_path, capsys, extra, message):
    assert _train(mlp_store, tmp_path / "x", "--tokens", "256", *extra) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# -- evals ---------------------------------------------------------------------------------


def _tokens_and_mask(store_path, n=4):
    from saelab.activations.store import ActivationStore

    store = ActivationStore(store_path)
    tokens = torch.from_numpy(store.read_tokens(5)[:n]).long()
    return tokens, torch.from_numpy(store.token_mask(5)[:n])


def test_loss_splice_of_a_perfect_transcoder_costs_nothing(model, mlp_store):
    """A stand-in transcoder that looks up the real MLP output of each real MLP input (taken
    from a clean cached forward) must give exactly the clean loss when spliced in place of
    hook_mlp_out; one that outputs zeros, exactly the zero ablation. The lookup only finds
    its rows if the splice feeds it the real input hook of the same positions."""
    from saelab.evaluation.loss.splice import loss_stats

    tokens, mask = _tokens_and_mask(mlp_store)
    src, tgt = IN.format(1), OUT.format(1)
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=[src, tgt])
    inputs, outputs = cache[src][mask].float(), cache[tgt][mask].float()

    def perfect(x):
        dist = torch.cdist(x, inputs, compute_mode="donot_use_mm_for_euclid_dist")
        assert float(dist.min(1).values.max()) == 0.0, "not the real input of these positions"
        return outputs[dist.argmin(1)]

    m = loss_stats(model.bridge, tgt, perfect, tokens, mask, batch_size=2, source_hook=src)
    m = m.metrics()
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-6)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-7)
    assert m["ce_zero"] > m["ce_clean"] + 0.05  # zeroing the MLP output hurts
    zero = loss_stats(
        model.bridge, tgt, lambda x: torch.zeros(len(x), 576), tokens, mask, source_hook=src
    ).metrics()
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero"], abs=1e-9)


def test_eval_of_a_transcoder_measures_its_target(model, mlp_store, tmp_path, capsys):
    """`saelab eval` on a transcoder: the core FVU is the target's (checked against a dense
    computation on the held-out rows), the loss eval splices it in place of the MLP output,
    and an SAE-only eval is skipped with its reason."""
    from saelab.evaluation.runner import EvalConfig, evaluate

    out = tmp_path / "tc"
    src, tgt = IN.format(2), OUT.format(2)
    assert _train(mlp_store, out, "--hook", src, "--target-hook", tgt, "--tokens", "1024") == 0
    logged: list[str] = []
    cfg = EvalConfig(
        sae=str(out), acts=mlp_store, db=str(tmp_path / "r.duckdb"),
        evals=["core", "loss", "absorption"], settings={"loss": {"sequences": 4}},
    )  # fmt: skip
    metrics = evaluate(cfg, model=model, log=logged.append)[out.name]
    assert set(metrics) == {"core", "loss"}
    assert any("absorption: skipped: a transcoder reconstructs" in line for line in logged)
    tc = load_sae(out)
    assert metrics["core"]["fvu"] == pytest.approx(_raw_fvu(tc, mlp_store, src, tgt), abs=1e-4)
    loss = metrics["loss"]
    assert loss["kl_sae"] > 0 and loss["ce_zero"] > loss["ce_clean"]
