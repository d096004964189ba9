"""Cross-layer transcoders trained from a real store of four consecutive layers: `saelab train
--arch clt --layers`, the saved CLT on raw held-out activations, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from saelab import cli
from saelab.activations.loader import JointHookLoader
from saelab.cli import main
from saelab.evaluation.runner import EvalConfig, evaluate
from saelab.sae import load_sae, make_config
from saelab.sae.config import TrainConfig
from saelab.sae.trainer import Trainer
from tests.conftest import SMALL_HARVEST
from tests.sae.killed import KilledAfter

LAYERS = (0, 1, 2, 3)
IN = "blocks.{}.ln2.hook_normalized"
OUT = "blocks.{}.hook_mlp_out"
INPUTS = [IN.format(layer) for layer in LAYERS]
TARGETS = [OUT.format(layer) for layer in LAYERS]


@pytest.fixture(scope="module")
def mlp4_store(model, tmp_path_factory):
    """The MLP input and output of layers 0-3, harvested in one pass (6 chunks)."""
    from saelab.activations.harvest import HarvestConfig, harvest

    out = str(tmp_path_factory.mktemp("stores") / "mlp4.zarr")
    hooks = [h.format(layer) for layer in LAYERS for h in (IN, OUT)]
    harvest(HarvestConfig(out=out, hooks=hooks, **SMALL_HARVEST), model=model)
    return out


@pytest.fixture(autouse=True)
def _train_command_registered(monkeypatch):
    missing = [c for c in ("train", "eval") if c not in cli.COMMANDS]
    if missing:
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, *missing])


def _train(store, out, *extra):
    return main(
        ["train", "--acts", store, "--arch", "clt", "--d-sae", "64", "--k", "4",
         "--batch-size", "128", "--lr", "1e-2", "--out", str(out), "--no-progress", *extra]
    )  # fmt: skip


def _held_out(store):
    rows = torch.cat(
        list(JointHookLoader(store, INPUTS + TARGETS, batch_size=64, split="test", drop_last=False))
    )
    n = len(LAYERS)
    return rows[:, : n * 576].view(-1, n, 576), rows[:, n * 576 :].view(-1, n, 576)


def test_cli_trains_a_clt_that_works_on_raw_activations(model, mlp4_store, tmp_path):
    out = tmp_path / "clt"
    assert _train(mlp4_store, out, "--layers", "0-3", "--tokens", "4096", "--log-every", "8") == 0
    clt = load_sae(out, architecture="clt")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == INPUTS[0] and cfg["saelab"]["target_hooks"] == TARGETS
    assert clt.layers == list(LAYERS) and clt.input_hooks == INPUTS and clt.d_sae == 4 * 64
    scales = cfg["saelab"]["folded_target_scale"]
    assert len(scales) == 4 and len(set(scales)) == 4  # one training scale per target hook

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    assert 4 <= rows[-1]["l0"] <= 4 * 4  # at most k per layer (ReLU may zero some)

    # The saved CLT on raw held-out rows, composed from the graph-facing API (each layer's
    # latents decoded to every later layer, plus that layer's bias): its per-layer FVU must be
    # below 1 (a wrongly folded per-layer scale would send one far above), and its pooled FVU
    # near the metrics' (training units).
    x, y = _held_out(mlp4_store)
    with torch.no_grad():
        f = {layer: clt.encode_layer(layer, x[:, p]) for p, layer in enumerate(LAYERS)}
        y_hat = torch.stack(
            [clt.bias(dst) + sum(clt.decode_to(src, dst, f[src]) for src in LAYERS if src <= dst)
             for dst in LAYERS], 1,
        )  # fmt: skip
        torch.testing.assert_close(y_hat, clt(x), rtol=1e-4, atol=1e-4)
    y, y_hat = y.double(), y_hat.double()
    err = (y_hat - y).pow(2).sum((0, 2))
    var = (y - y.mean(0)).pow(2).sum((0, 2))
    fvu = err / var
    assert (fvu < 1.0).all(), fvu
    in_training_units = (err * torch.tensor(scales) ** 2).sum() / (
        var * torch.tensor(scales) ** 2
    ).sum()
    assert abs(float(in_training_units) - rows[-1]["fvu"]) < 0.15, (in_training_units, rows[-1])

    # saelab eval: each layer's FVU and the pooled one against the direct float64 computation
    # above; an SAE-only eval is skipped with its reason.
    logged: list[str] = []
    cfg = EvalConfig(
        sae=str(out), acts=mlp4_store, db=str(tmp_path / "r.duckdb"),
        evals=["core", "loss", "absorption"], settings={"loss": {"sequences": 2}},
    )  # fmt: skip
    core = evaluate(cfg, model=model, log=logged.append)[out.name]
    assert set(core) == {"core", "loss"}
    loss = core["loss"]
    assert loss["ce_zero"] > loss["ce_clean"] and 0 < loss["kl_sae"]
    assert any("absorption: skipped: a cross-layer transcoder" in line for line in logged)
    core = core["core"]
    for p, layer in enumerate(LAYERS):
        assert core[f"fvu_L{layer}"] == pytest.approx(float(fvu[p]), abs=1e-4)
        assert 0 < core[f"l0_L{layer}"] <= 4
    assert core["fvu"] == pytest.approx(float(err.sum() / var.sum()), abs=1e-4)
    assert core["l0"] == pytest.approx(sum(core[f"l0_L{layer}"] for layer in LAYERS))
    assert core["n_tokens"] == len(x)


def _cfg(total, cut):
    return TrainConfig(
        tokens=64 * total, hook=INPUTS[0], progress=False, log_every=2, init_tokens=256,
        dead_window_tokens=128, save_every_tokens=64 * cut,
    )  # fmt: skip


def _configs():
    return [
        make_config("clt", d_sae=32, k=3, lr=3e-3, input_hooks=INPUTS, target_hooks=TARGETS),
        make_config("transcoder", d_sae=32, k=3, lr=3e-3, input_hook=INPUTS[1],
                    target_hook=TARGETS[1]),
    ]  # fmt: skip


def _loader(store):
    return JointHookLoader(store, INPUTS + TARGETS, batch_size=64, seed=0, epochs=2)


def test_kill_and_resume_is_bitwise_identical(mlp4_store, tmp_path):
    """A CLT beside a per-layer transcoder in one sweep over one joint loader."""
    total, cut = 8, 3
    straight = Trainer(_configs(), _loader(mlp4_store), _cfg(total, cut), out=tmp_path / "a")
    straight.run()
    data = _loader(mlp4_store)
    killed = Trainer(
        _configs(), KilledAfter(data, cut + 2), _cfg(total, cut), out=tmp_path / "b",
        state_source=data,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    resumed = Trainer(
        _configs(), _loader(mlp4_store), _cfg(total, cut), out=tmp_path / "b", resume=True
    )
    resumed.run()
    assert resumed.step == straight.step == total
    for a, b in zip(straight.members, resumed.members, strict=True):
        for key, value in a.sae.state_dict().items():
            assert torch.equal(value, b.sae.state_dict()[key]), (a.name, key)
        assert (tmp_path / "a" / a.name / "sae_weights.safetensors").read_bytes() == (
            tmp_path / "b" / a.name / "sae_weights.safetensors"
        ).read_bytes()
    assert straight.members[0].dead.since_fired.shape == (4 * 32,)


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "--layers"),
        (("--layers", "0-3", "--target-hook", "blocks.3.hook_mlp_out"), "{layer}"),
        (("--layers", "2-5"), "blocks.4.ln2.hook_normalized"),
    ],
)
def test_bad_clt_runs_are_one_line(mlp4_store, tmp_path, capsys, extra, message):
    assert _train(mlp4_store, tmp_path / "x", "--tokens", "256", *extra) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# -- the loss eval: every MLP output of the range replaced at once ---------------------------


def _lookup_clt(inputs, outputs, share=0.25):
    """A CLT that reproduces the real MLP outputs of the given tokens exactly: latent i of
    each layer reads token i's input direction (k = 1: by Cauchy-Schwarz the token's own
    latent wins, with activation |x_i|), each earlier layer writes `share` of the target and
    the layer itself the rest. `inputs`, `outputs` `[N, L, d]`."""
    from saelab.sae import build_sae

    n = len(inputs)
    clt = build_sae(
        make_config("clt", d_sae=n, d_in=576, d_out=576, k=1, input_hooks=INPUTS,
                    target_hooks=TARGETS)
    ).eval()  # fmt: skip
    norm = inputs.norm(dim=-1, keepdim=True)  # [N, L, 1]
    with torch.no_grad():
        clt.encoder_weight.copy_((inputs / norm).transpose(0, 1))
        clt.b_enc.zero_()
        clt.b_dec.zero_()
        for p in range(len(LAYERS)):
            for q in range(p, len(LAYERS)):
                part = share if q > p else 1 - share * q
                clt.W_dec[p][:, q - p] = part * outputs[:, q] / norm[:, p]
    return clt


def test_loss_splice_of_a_perfect_clt_costs_nothing(model, mlp4_store):
    """A CLT that reproduces every real MLP output of layers 0-3 (through its cross-layer
    decoders too) gives the clean loss with all four replaced at once: its inputs are read in
    the spliced pass, so this holds only if every layer is replaced by the right sum. A CLT of
    zeros gives exactly the zero ablation of all four."""
    from saelab.activations.store import ActivationStore
    from saelab.evaluation.loss.splice import clt_loss_stats

    store = ActivationStore(mlp4_store)
    tokens = torch.from_numpy(store.read_tokens(5)[:2, :16]).long()
    mask = torch.from_numpy(store.token_mask(5)[:2, :16])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=INPUTS + TARGETS)
    x = torch.stack([cache[h][mask].float() for h in INPUTS], 1)
    y = torch.stack([cache[h][mask].float() for h in TARGETS], 1)
    m = clt_loss_stats(model.bridge, _lookup_clt(x, y), tokens, mask).metrics()
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=2e-4)
    assert m["kl_sae"] == pytest.approx(0.0, abs=2e-5)
    assert m["ce_zero"] > m["ce_clean"] + 0.05
    zero = _lookup_clt(x, torch.zeros_like(y))
    z = clt_loss_stats(model.bridge, zero, tokens, mask).metrics()
    assert z["ce_sae"] == pytest.approx(z["ce_zero"], abs=1e-9)
    assert z["kl_sae"] == pytest.approx(z["kl_zero"], abs=1e-9)
    # one layer off: the splice must use every layer's own reconstruction
    wrong = y.clone()
    wrong[:, 2] = y[:, 1]
    off = clt_loss_stats(model.bridge, _lookup_clt(x, wrong), tokens, mask).metrics()
    assert off["kl_sae"] > 1e-3
