"""Values of the right type that would still fail later (deep in torch, after minutes of model
loading, or silently doing something else): each config refuses them in `validate`, before any
work, with one line saying what was wrong and how to fix it."""

from __future__ import annotations

import math
import socket

import pytest
import torch

import saelab
from saelab import resultstore as results
from saelab.activations.corpus import load_corpus
from saelab.app.server import AppConfig, prepare
from saelab.autointerp.client import LLMConfig
from saelab.autointerp.config import ExplainConfig
from saelab.autointerp.server import ServeConfig
from saelab.base.config import check_device
from saelab.base.errors import UserError
from saelab.circuits.run import CircuitConfig
from saelab.cli import main
from saelab.sae.checkpoint import save_sae
from saelab.sae.config import TrainConfig
from saelab.sae.registry import build_sae, make_config
from saelab.steering.run import SteerConfig

HOOK = "blocks.2.hook_resid_post"
NO_CUDA = not torch.cuda.is_available()


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def steer_cfg(**kw) -> SteerConfig:
    return SteerConfig(**{"db": "r.duckdb", "sae": "x", "features": [3], "strength": 1.0, **kw})


@pytest.mark.parametrize(
    "check, message",
    [
        (lambda: check_device("bogus"), "'bogus' is not a torch device"),
        (lambda: check_device("gpu:0"), "is not a torch device"),
        pytest.param(
            lambda: check_device("cuda"),
            "asks for a GPU",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
        ),
        (lambda: TrainConfig(device="bogus").validate(), "is not a torch device"),
        (lambda: TrainConfig(adam_betas=(2.0, 0.999)).validate(), "adam_betas must both lie"),
        (lambda: TrainConfig(adam_betas=(0.9, 1.0)).validate(), "adam_betas must both lie"),
        (lambda: TrainConfig(adam_eps=-1.0).validate(), "adam_eps must be positive"),
        (lambda: TrainConfig(adam_eps=0.0).validate(), "adam_eps must be positive"),
        (lambda: TrainConfig(init_tokens=0).validate(), "init_tokens must be at least 1"),
        (lambda: TrainConfig(dead_window_tokens=0).validate(), "dead_window_tokens must be"),
        (lambda: TrainConfig(lr_warmup_steps=-3).validate(), "lr_warmup_steps must be >= 0"),
        (lambda: TrainConfig(sparsity_warmup_fraction=1.5).validate(), "between 0 and 1"),
        (lambda: TrainConfig(max_loss=0.0).validate(), "max_loss must be positive"),
        pytest.param(
            lambda: TrainConfig(autocast_bf16=True).validate(),
            "on CUDA only",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
        ),
        (lambda: saelab.HarvestConfig(out="a.zarr", device="bogus").validate(), "torch device"),
        (lambda: saelab.HarvestConfig(out=" ").validate(), "--out is empty"),
        (lambda: saelab.HarvestConfig(out="a.zarr", model="").validate(), "--model is empty"),
        (
            lambda: saelab.EvalConfig(sae="s", acts="a", db="r.duckdb", device="bogus").validate(),
            "torch device",
        ),
        (
            lambda: saelab.EvalConfig(
                sae="s",
                acts="a",
                db="r.duckdb",
                evals=["core"],
                settings={"loss": {"sequences": 3}},
            ).validate(),
            "settings are given for the loss eval, which this run does not include",
        ),
        (
            lambda: CircuitConfig(sae=["s"], acts="a", device="bogus").validate(),
            "torch device",
        ),
        (
            lambda: CircuitConfig(
                sae=["s"], acts="a", method="atp", edge_method="atp", steps=5
            ).validate(),
            "integrated gradients only",
        ),
        (lambda: LLMConfig(timeout_s=math.inf).validate(), "positive finite number"),
        (lambda: LLMConfig(backoff_s=math.nan).validate(), "`backoff_s` must be >= 0"),
        (
            lambda: ExplainConfig(db="r.duckdb", sae="s", bootstrap=10**9).validate(),
            "use at most 100,000",
        ),
        (lambda: steer_cfg(ablation="mean").validate(), "applies to ablate mode only"),
        (lambda: steer_cfg(strength=None, target_kl=0.0).validate(), "positive number of nats"),
        (
            lambda: steer_cfg(strength=None, target_kl=math.inf).validate(),
            "positive number of nats",
        ),
        (
            lambda: steer_cfg(baseline=False, positive=["a b"], negative=["c d"]).validate(),
            "which is switched off",
        ),
        (lambda: ServeConfig(host="").validate(), "--host is empty"),
        (lambda: prepare(AppConfig(db="r.duckdb", host=" ")), "--host is empty"),
        (lambda: load_corpus("builtin", split="validation"), "is a built-in corpus"),
    ],
)
def test_values_that_would_fail_later_are_refused_up_front(check, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        check()
    assert "\n" not in str(err.value)


def test_a_local_corpus_has_no_split_to_pick(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("A few words of text.\n")
    with pytest.raises(UserError, match="local file or folder with one split"):
        load_corpus(str(text), split="test")
    assert len(load_corpus(str(text))) == 1  # the default split is no choice


def test_a_device_this_machine_has_passes():
    check_device("cpu")
    check_device("cpu:0")
    TrainConfig(device="cpu").validate()


def test_a_taken_port_and_a_foreign_address_name_their_own_fix(tmp_path):
    db = tmp_path / "r.duckdb"  # the address is checked before the file
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match="choose another --port"):
            prepare(AppConfig(db=str(db), port=port))
    # TEST-NET-3 (RFC 5737) is never an address of this machine
    with pytest.raises(UserError, match="give --host an address of this machine"):
        prepare(AppConfig(db=str(db), host="203.0.113.7", port=port))


def test_a_bad_address_never_migrates_the_file(tmp_path, monkeypatch):
    migrated = []
    monkeypatch.setattr("saelab.app.db.migrate", lambda path: migrated.append(path))
    db = tmp_path / "r.duckdb"
    db.write_bytes(b"")
    with pytest.raises(UserError, match="--host is empty"):
        prepare(AppConfig(db=str(db), host="", migrate=True))
    assert migrated == []


def test_train_refuses_a_hook_that_disagrees_with_cfg_hook():
    with pytest.raises(UserError, match="disagree"):
        saelab.train(
            make_config("topk", d_sae=16), acts="a.zarr", hook=HOOK,
            cfg=TrainConfig(tokens=1, hook="blocks.4.hook_resid_post"),
        )  # fmt: skip


@pytest.mark.parametrize("tokens", [0, -5, 2.5, True])
def test_training_loader_refuses_a_token_count_that_is_no_count(small_store, tokens):
    with pytest.raises(UserError, match="`tokens` must be a positive whole number"):
        saelab.training_loader(small_store, HOOK, tokens=tokens)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["circuit", "--sae", "s", "--show", "-1"], "--show must be >= 0"),
        (["circuit", "--sae", "s", "--edge-method", "atp", "--steps", "5"], "integrated gradients only"),
        (["circuit", "--sae", "s", "--acts", "a", "--html", ""], "is empty"),
        (["circuit", "--sae", "s", "--acts", "a", "--device", "bogus"], "not a torch device"),
        (
            ["steer", "--db", "r.duckdb", "--sae", "s", "--feature", "3", "--strength", "1",
             "--html", "f.html"],
            "--html writes a sweep's frontier",
        ),
        (
            ["steer", "--db", "r.duckdb", "--sae", "s", "--feature", "3", "--strength", "1",
             "--ablation", "mean"],
            "applies to ablate mode only",
        ),
        (
            ["eval", "--sae", "s", "--acts", "a", "--db", "r.duckdb", "--evals", "features",
             "--probe-column", "source"],
            "--probe-column sets the probing eval(s), none of which runs here",
        ),
        (
            ["eval", "--sae", "s", "--acts", "a", "--db", "r.duckdb", "--evals", "core",
             "--loss-sequences", "4"],
            "settings are given for the loss eval",
        ),
        (["llm-serve", "--host", ""], "--host is empty"),
        (["app", "--db", "r.duckdb", "--host", ""], "--host is empty"),
    ],
)  # fmt: skip
def test_the_command_line_refuses_them_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) != 0
    assert message in one_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_train_refuses_a_field_set_by_its_flag_and_by_set(small_store, tmp_path, capsys):
    out = tmp_path / "sae"
    argv = ["train", "--acts", small_store, "--hook", HOOK, "--out", str(out), "--arch", "topk",
            "--d-sae", "16", "--k", "4", "--set", "k=8"]  # fmt: skip
    assert main(argv) != 0
    assert "k is set twice, by --k and by --set k=" in one_line(capsys)
    assert not out.exists()


def test_eval_shared_flags_set_only_the_evals_that_run():
    """`--split` belongs to the core and loss evals; with only core running, loss gets no
    settings (it would be refused as settings for an eval that does not run)."""
    from saelab.cli import build_parser
    from saelab.commands.eval import settings_from

    args = build_parser().parse_args(
        ["eval", "--sae", "s", "--acts", "a", "--db", "d", "--evals", "core", "--split", "train"]
    )
    assert settings_from(args, ["core"]) == {"core": {"split": "train"}}
    assert settings_from(args, ["core", "loss"]) == {
        "core": {"split": "train"},
        "loss": {"split": "train"},
    }


def test_a_demo_that_fails_before_writing_leaves_no_folder(tmp_path, monkeypatch):
    from saelab.commands import demo

    def fail(_demo):
        raise UserError("the harvest failed")

    monkeypatch.setattr(demo, "STEPS", [demo.Step("harvest", lambda d: "harvest", fail)])
    out = tmp_path / "demo"
    with pytest.raises(UserError, match="the harvest failed"):
        demo.run_demo(demo.DemoConfig(out=str(out), progress=False))
    assert not out.exists()
    out.mkdir()  # an empty folder the user made stays, empty
    with pytest.raises(UserError):
        demo.run_demo(demo.DemoConfig(out=str(out), progress=False))
    assert out.is_dir() and list(out.iterdir()) == []


def sae_row(d_sae: int = 8) -> results.SAERow:
    return results.SAERow(
        sae_id="s1", name="sae-s1", path="/nowhere", architecture="topk", d_in=4, d_sae=d_sae,
        hook=HOOK, model="m", model_sha256="abc", cfg_json="{}", cfg_hash="h", weights_sha256="w",
    )  # fmt: skip


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.feature("sae-s1", 8), "latent 8 is out of range for SAE sae-s1 (0 … 7)"),
        (lambda r: r.feature("sae-s1", -1), "latent -1 is out of range"),
        (lambda r: r.feature("sae-s1", "3"), "a latent is a whole number, got '3'"),
        (lambda r: r.feature("sae-s1", 2.0), "a latent is a whole number, got 2.0"),
        (lambda r: r.nearest("sae-s1", 9), "latent 9 is out of range"),
        (lambda r: r.nearest("sae-s1", 1, k=0), "`k` is how many neighbours"),
        (lambda r: r.frontier(["fvu"]), "`frontiers` is a list of (x metric, y metric, title)"),
        (lambda r: saelab.FeatureView(None).examples_html("best"), "unknown example kind"),
        (lambda r: saelab.FeatureView(None).examples_html(n=-1), "`n` is how many windows"),
    ],
)
def test_the_results_api_refuses_latents_and_options_it_cannot_show(tmp_path, call, message):
    store = results.ResultsStore(tmp_path / "r.duckdb", "write")
    with store.transaction() as con:
        results.saes.register_sae(con, sae_row(), store)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(saelab.open_results(tmp_path / "r.duckdb"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: saelab.load_sae(123), "give the SAE folder as a path"),
        (lambda f: saelab.load_sae(f, device=0), "`device` is a torch device name"),
        (lambda f: saelab.load_sae(f, device="bogus"), "'bogus' is not a torch device"),
        (lambda f: saelab.open_results(None), "give the results file as a path"),
    ],
)
def test_load_sae_and_open_results_check_their_arguments(tmp_path, call, message):
    folder = tmp_path / "sae"
    save_sae(build_sae(make_config("topk", d_sae=16, k=2, d_in=8)), folder)
    with pytest.raises(UserError, match=message):
        call(folder)
