"""`steer` end to end on a small real SAE: runs and samples stored, bisection, DiffMean at matched
KL, the unsteered row, and the command line's one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from saelab import resultstore as results
from saelab.cli import main
from saelab.steering.generate import Sampling
from saelab.steering.run import SteerConfig, steer

TINY = dict(
    prompts=["The city"], neutral=["The river runs past the old mill.", "We met at noon."],
    sampling=Sampling(max_new_tokens=6, temperature=1.0, seed=3), n_samples=2,
)  # fmt: skip


def test_target_kl_run_is_stored_beside_diffmean_at_matched_kl(steer_db, live_features, model):
    db, sae, sae_id = steer_db
    cfg = SteerConfig(db=db, sae=sae, features=[live_features[0]], target_kl=0.5, **TINY)
    report = steer(cfg, model=model)
    by_method = {r.method: r for r in report.runs}
    assert set(by_method) == {"none", "sae", "diffmean"}
    assert by_method["none"].kl == 0
    assert abs(by_method["sae"].kl - 0.5) <= 0.05 * 0.5
    assert abs(by_method["diffmean"].kl - by_method["sae"].kl) <= 0.05 * by_method["sae"].kl
    stored = results.steering_runs(results.ResultsStore(db), sae_id=sae_id)
    assert {r.run_id for r in stored} == {r.run_id for r in report.runs}
    sae_row = next(r for r in stored if r.method == "sae")
    assert sae_row.features == [live_features[0]] and sae_row.model_sha256 == model.weights_sha256
    assert json.loads(sae_row.sampling_json)["seed"] == 3 and sae_row.concept_kind == "logit_lift"
    samples = results.steering_samples(results.ResultsStore(db), sae_row.run_id)
    assert len(samples) == 2 and all(s.steered_text is not None for s in samples)
    assert all(len(s.steered_tokens) == 6 for s in samples)
    # the clean samples are the unsteered run's texts, with the same seeds
    none_samples = results.steering_samples(results.ResultsStore(db), by_method["none"].run_id)
    assert [s.clean_text for s in samples] == [s.steered_text for s in none_samples]


def test_a_zero_strength_changes_nothing_and_a_large_one_moves_the_output(
    steer_db, live_features, model
):
    db, sae, _ = steer_db
    cfg = SteerConfig(db=db, sae=sae, features=[live_features[1]], sweep=[0.0, 4.0],
                      baseline=False, store=False, **TINY)  # fmt: skip
    runs = [r for r in steer(cfg, model=model).runs if r.method == "sae"]
    assert runs[0].kl == pytest.approx(0.0, abs=1e-9)
    assert runs[0].concept == pytest.approx(0.0, abs=1e-9)
    assert runs[1].kl > 0 and runs[1].concept != 0  # the top logit tokens move
    assert runs[1].feature_act >= 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--feature", "64", "--strength", "1"], "latent 64 is out of range"),
        (["--feature", "0", "--mode", "boost", "--strength", "1"], "invalid choice: 'boost'"),
        (["--feature", "0", "--strength", "1", "--temperature", "-1"], "--temperature must be 0"),
        (["--feature", "0", "--strength", "1", "--prompt", " "], "--prompts holds an empty text"),
        (["--feature", "0", "--feature", "0", "--strength", "1"], "distinct latents"),
        (["--feature", "0", "--strength", "nan"], "--strength nan is not usable"),
        (["--feature", "0", "--strength", "1e6"], "not usable"),
        (["--feature", "0", "--sweep", "1,x"], "--sweep"),
    ],
)
def test_bad_input_is_one_line(steer_db, capsys, extra, message):
    db, sae, _ = steer_db
    assert main(["steer", "--db", db, "--sae", sae, "--max-new-tokens", "2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_moved_checkpoint_is_a_clear_error(steer_db, tmp_path, capsys):
    db, sae, sae_id = steer_db
    with results.ResultsStore(db, "write").transaction() as con:
        con.execute("UPDATE saes SET path = ? WHERE sae_id = ?", [str(tmp_path / "gone"), sae_id])
    assert main(["steer", "--db", db, "--sae", sae_id, "--feature", "0", "--strength", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no longer holds it" in err and "\n" not in err


def test_replaced_weights_are_refused_and_nothing_is_stored(steer_db, tmp_path, capsys):
    """The checkpoint at the registered path was retrained: its weights differ from the ones the
    results file registered, so steering with them under the registered SAE is refused."""
    import shutil

    from saelab.sae.checkpoint import WEIGHTS_FILE

    db, sae, sae_id = steer_db
    other = tmp_path / "other"
    shutil.copytree(sae, other)
    weights = other / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with results.ResultsStore(db, "write").transaction() as con:
        con.execute("UPDATE saes SET path = ? WHERE sae_id = ?", [str(other), sae_id])
    assert main(["steer", "--db", db, "--sae", sae_id, "--feature", "0", "--strength", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the ones registered" in err and "\n" not in err
    assert results.steering_runs(results.ResultsStore(db)) == []


def test_a_missing_results_file_is_not_created(tmp_path, capsys):
    db = tmp_path / "none.duckdb"
    assert main(["steer", "--db", str(db), "--sae", "x", "--feature", "0", "--strength", "1"]) == 2
    assert "no results database" in capsys.readouterr().err and not db.exists()


def test_mismatched_model_or_width_is_refused(steer_db_master, model):
    from saelab.base.errors import UserError
    from saelab.sae.checkpoint import load_sae
    from saelab.steering.target import check_compatible

    db, sae_dir, _ = steer_db_master
    (row,) = results.list_saes(results.ResultsStore(db))
    sae = load_sae(sae_dir)
    with pytest.raises(UserError, match="trained on model weights"):
        check_compatible(dataclasses.replace(row, model_sha256="0" * 64), sae, model)

    class Narrow:
        d_in = 100

    with pytest.raises(UserError, match="wide"):
        check_compatible(row, Narrow(), model)


def test_cli_sweep_prints_side_by_side_and_writes_the_frontier(
    steer_db, live_features, tmp_path, capsys
):
    db, sae, _ = steer_db
    html = tmp_path / "frontier.html"
    args = ["steer", "--db", db, "--sae", sae, "--feature", str(live_features[0]),
            "--sweep", "1,3", "--prompt", "The city", "--max-new-tokens", "4", "--samples", "1",
            "--no-baseline", "--html", str(html)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "steered" in out and "KL" in out
    assert html.is_file() and "concept vs KL" in html.read_text()
    stored = results.steering_runs(results.ResultsStore(db))
    assert sorted(r.strength for r in stored if r.method == "sae") == [1.0, 3.0]
    assert json.loads(stored[0].prompts_json) == ["The city"]
