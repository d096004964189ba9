"""`saelab train` end to end on a small real activation store."""

from __future__ import annotations

import json

import pytest

from saelab import cli
from saelab.cli import main
from saelab.sae import load_sae

HOOK = "blocks.2.hook_resid_post"
TINY_LR = ("--lr", "2e-3")
"""An explicit LR for the 8-step, 128-latent run: this test is about training and resuming
through the command line, not about the default LR of a 128-latent SAE."""


@pytest.fixture(autouse=True)
def _train_command_registered(monkeypatch):
    # saelab/cli.py lists its subcommands; make sure `train` is among them here.
    if "train" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "train"])


def _train(store, out, *extra):
    return main(
        [
            "train",
            "--acts",
            store,
            "--hook",
            HOOK,
            "--batch-size",
            "128",
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_train_one_sae_and_resume(small_store, tmp_path):
    out = tmp_path / "topk"
    rc = _train(
        small_store,
        out,
        "--arch",
        "topk",
        "--d-sae",
        "128",
        "--k",
        "8",
        "--tokens",
        "1024",
        "--save-every",
        "512",
        *TINY_LR,
    )
    assert rc == 0
    sae = load_sae(out, architecture="topk")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == HOOK and cfg["k"] == 8 and sae.d_sae == 128
    assert cfg["saelab"]["trained_tokens"] == 1024
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and rows[-1]["fvu"] < 1.5
    assert (
        _train(
            small_store,
            out,
            "--arch",
            "topk",
            "--d-sae",
            "128",
            "--k",
            "8",
            "--tokens",
            "1024",
            "--resume",
            *TINY_LR,
        )
        == 0
    )


def test_train_a_sweep_file(small_store, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        "[train]\ntokens = 640\n\n[defaults]\nd_sae = 96\n\n"
        '[[sae]]\narchitecture = "batchtopk"\nk = 4\n\n'
        '[[sae]]\narchitecture = "jumprelu"\ninit_l0 = 6.0\n'
        "grid = { l0_coefficient = [0.001, 0.01] }\n"
    )
    out = tmp_path / "sweep"
    assert _train(small_store, out, "--sweep", str(sweep)) == 0
    names = sorted(p.name for p in out.iterdir() if (p / "cfg.json").is_file())
    assert names == ["batchtopk-96-k4", "jumprelu-96-l0_0.001", "jumprelu-96-l0_0.01"]
    assert load_sae(out / "batchtopk-96-k4").running_threshold > 0
    assert load_sae(out / "jumprelu-96-l0_0.01").cfg.init_l0 == 6.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hook", "blocks.9.hook_nothing", "--arch", "topk"], "blocks.9.hook_nothing"),
        (["--arch", "relu", "--k", "4"], "--k does not apply to a 'relu' SAE"),
        (["--arch", "topk", "--init-l0", "8"], "--init-l0 does not apply to a 'topk' SAE"),
        (["--arch", "topk", "--d-sae", "8", "--k", "16"], "k must be between 1 and d_sae"),
        (["--arch", "topk", "--resume"], "nothing to resume"),
        (["--e2e", "kl"], "--e2e kl|kl+ds and --from CHECKPOINT_FOLDER together"),
        (["--e2e", "kl", "--from", "nowhere"], "nowhere is not an SAE checkpoint folder"),
        (["--e2e", "kl", "--from", "nowhere", "--arch", "topk"], "drop --arch"),
    ],
)
def test_bad_input_is_one_line(small_store, tmp_path, capsys, args, message):
    rc = main(
        [
            "train",
            "--acts",
            small_store,
            "--hook",
            HOOK,
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--tokens",
            "256",
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
