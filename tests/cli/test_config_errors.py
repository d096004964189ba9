"""Bad input caught where the configs and the store live: each typed config checks its own
fields (the command line and `import saelab` give the same one-line error), options are never
silently ignored, no failed read leaves a file behind, and an interruption says truly what was
kept."""

from __future__ import annotations

import time

import pytest

import saelab
from saelab.base.errors import UserError
from saelab.cli import main
from saelab.sae.checkpoint import save_sae
from saelab.sae.registry import build_sae, make_config

HOOK = "blocks.2.hook_resid_post"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def sae_folder(tmp_path):
    folder = tmp_path / "sae"
    save_sae(
        build_sae(make_config("topk", d_sae=16, k=2, d_in=576)), folder, meta={"hook_name": HOOK}
    )
    return folder


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda s: saelab.train("topk", acts=s, hook=HOOK), "`saes` must be an SAE config"),
        (
            lambda s: saelab.train(make_config("topk", d_sae=16), acts=123, hook=HOOK),
            "`acts` must be a string, got 123",
        ),
        (
            lambda s: saelab.train(
                make_config("topk", d_sae=16), acts=s, hook=HOOK, batch_size="256"
            ),
            "`batch_size` must be a whole number, got '256'",
        ),
        (
            lambda s: saelab.train(
                make_config("topk", d_sae=16), acts=s, hook=HOOK, cfg={"tokens": 5}
            ),
            "`cfg` must be a TrainConfig",
        ),
        (lambda s: saelab.make_config("topk", k=16.5), "`k` must be a whole number, got 16.5"),
        (lambda s: saelab.make_config("topk", d_sae="big"), "`d_sae` must be a whole number"),
        (
            lambda s: saelab.EvalConfig(sae=None, acts=s, db="r.duckdb"),
            "`sae` must be a string, got None",
        ),
        (
            lambda s: saelab.EvalConfig(sae="x", acts=s, db="r.duckdb", evals="core"),
            "`evals` must be a list of strings",
        ),
        (
            lambda s: saelab.SteerConfig(db="r.duckdb", sae="x", features="983"),
            "`features` must be a list of whole numbers, got '983'",
        ),
        (
            lambda s: saelab.SteerConfig(db="r.duckdb", sae="x", features=[1], prompts="I think"),
            "`prompts` must be a list of strings, got 'I think'",
        ),
        (
            lambda s: saelab.HarvestConfig(out="x", hooks="blocks.2.hook_resid_post"),
            "`hooks` must be a list of strings",
        ),
        (
            lambda s: saelab.ExplainConfig(db="r.duckdb", sae="x", llm={"timeout_s": "fast"}),
            "`timeout_s` must be a number",
        ),
        (lambda s: saelab.evaluate({"sae": "x"}), "saelab.evaluate takes an EvalConfig, got dict"),
        (lambda s: saelab.harvest("acts.zarr"), "saelab.harvest takes a HarvestConfig, got str"),
        (lambda s: saelab.steer({"db": "r.duckdb"}), "steer takes a SteerConfig, got dict"),
        (lambda s: saelab.circuit(["sae"]), "saelab.circuit takes a CircuitConfig, got list"),
        (lambda s: saelab.run_training("topk"), "run_training takes a TrainRunConfig, got str"),
    ],
)
def test_the_python_api_gives_one_line_errors_for_wrong_types(small_store, build, message):
    with pytest.raises(UserError) as err:
        build(small_store)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_whole_number_floats_and_paths_are_accepted_as_given(tmp_path):
    cfg = saelab.make_config("topk", d_sae=32.0, k=4.0)
    assert (cfg.d_sae, cfg.k) == (32, 4) and cfg.resolved_name() == "topk-32-k4"
    assert saelab.HarvestConfig(out=tmp_path / "acts.zarr").out == str(tmp_path / "acts.zarr")


def test_circuit_refuses_a_folder_for_html_and_a_foreign_db_before_any_compute(
    sae_folder, tmp_path, capsys
):
    base = ["circuit", "--sae", str(sae_folder), "--ablation", "zero", "--no-progress"]
    started = time.monotonic()
    assert main([*base, "--html", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in one_line(capsys)
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database")
    assert main([*base, "--db", str(junk)]) == 2
    assert "junk.duckdb" in one_line(capsys)
    assert main([*base, "--curve-sizes", "-3"]) == 2
    assert "--curve-sizes must be circuit sizes >= 0" in one_line(capsys)
    assert time.monotonic() - started < 30  # no model was loaded, nothing computed
    assert junk.read_text() == "not a database"


def test_explain_and_steer_never_create_a_missing_results_file(tmp_path, capsys):
    db = tmp_path / "missing.duckdb"
    assert main(["explain", "--db", str(db), "--sae", "x", "--explainers", "baseline",
                 "--scorers", "embedding"]) == 2  # fmt: skip
    assert "no results database" in one_line(capsys) and not db.exists()
    assert main(["steer", "--db", str(db), "--sae", "x", "--feature", "1", "--strength", "1"]) == 2
    assert "no results database" in one_line(capsys) and not db.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "-2"], "--threads must be at least 1, got -2"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
    ],
)
def test_llm_serve_refuses_bad_settings_before_loading_the_model(capsys, args, message):
    assert main(["llm-serve", *args]) == 2
    assert message in one_line(capsys)


def test_a_model_file_that_is_not_gguf_is_one_line(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is a text file\n")
    assert main(["llm-serve", "--model", str(fake), "--port", "0"]) == 2
    assert "is not a GGUF file" in one_line(capsys)


def test_an_interruption_says_what_was_kept(sae_folder, small_store, tmp_path, capsys, monkeypatch):
    import saelab.circuits.run
    import saelab.sae.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(saelab.circuits.run, "run_circuit", interrupted)
    assert main(["circuit", "--sae", str(sae_folder), "--ablation", "zero"]) == 130
    err = one_line(capsys)
    assert "interrupted" in err and "nothing of this one is stored" in err
    assert "finished work is kept" not in err
    monkeypatch.setattr(saelab.sae.run, "run_training", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--acts", small_store, "--hook", HOOK, "--out", str(out)]) == 130
    assert "no checkpoint was written yet" in one_line(capsys)


def test_explain_refuses_a_model_name_the_local_server_does_not_serve(tmp_path, capsys):
    """Without --base-url the embedded model answers; naming another (--llm gpt-4o) would have
    stored its name on scores the embedded model wrote."""
    from saelab import resultstore as results

    db = tmp_path / "r.duckdb"
    store = results.ResultsStore(db, "write")
    row = results.SAERow("s1", "s", "/x", "topk", 4, 8, "h", "m", "abc", "{}", "h", "w")
    with store.transaction() as con:
        results.saes.register_sae(con, row, store)
        con.execute(
            "INSERT INTO features (sae_id, feature, dead) VALUES ('s1', 0, false)"
        )  # one latent's statistics: the SAE was evaluated
    started = time.monotonic()
    assert (
        main(["explain", "--db", str(db), "--sae", "s1", "--features", "0:2", "--llm", "gpt-4o"])
        == 2
    )
    assert "serves 'smollm2-135m', not 'gpt-4o'" in one_line(capsys)
    assert time.monotonic() - started < 20  # refused before the model loads


def test_flags_keep_their_old_forms():
    """The generated flags parse what the hand-written ones did: a fractional BatchTopK k,
    comma-separated Matryoshka prefixes, TopK's k whole."""
    from saelab.cli import command_parser

    parser = command_parser("train")
    args = parser.parse_args(
        ["--acts", "a", "--out", "o", "--prefix-sizes", "64,256", "1024", "--k", "12.5"]
    )
    assert args.prefix_sizes == [64, 256, 1024] and args.k == 12.5
    assert make_config("batchtopk", k=12.5).resolved_name() == "batchtopk-4096-k12.5"
    assert make_config("matryoshka", k=12.5, prefix_sizes=[64, 256]).k == 12.5
    with pytest.raises(UserError, match="`k` must be a whole number, got 12.5"):
        make_config("topk", k=12.5)


def test_an_earlier_demo_folder_is_reused_and_a_users_is_refused(tmp_path):
    from saelab.commands.demo import check_demo_folder

    old = tmp_path / "demo"
    (old / "acts.zarr").mkdir(parents=True)
    (old / "sweep.toml").write_text("")
    check_demo_folder(old)  # made by a demo from before demo.json: reused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "acts.zarr").mkdir()
    with pytest.raises(UserError, match="holds no earlier demo"):
        check_demo_folder(mine)
