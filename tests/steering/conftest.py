"""A results file with a small real SAE (trained on the shared store) and its feature statistics."""

from __future__ import annotations

import shutil

import pytest

from saelab.cli import main

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="session")
def steer_db_master(small_store, tmp_path_factory):
    """(db path, sae folder, sae id): a TopK SAE (64 latents, k 4) with its features eval."""
    from saelab import resultstore as results

    folder = tmp_path_factory.mktemp("steer")
    sae, db = folder / "sae", folder / "results.duckdb"
    train = ["train", "--acts", small_store, "--hook", HOOK, "--arch", "topk", "--d-sae", "64"]
    assert (
        main(train + ["--k", "4", "--batch-size", "128", "--out", str(sae), "--no-progress"]) == 0
    )
    evaluate = ["eval", "--sae", str(sae), "--acts", small_store, "--db", str(db)]
    assert main(evaluate + ["--evals", "features"]) == 0
    (row,) = results.list_saes(results.ResultsStore(db))
    return str(db), str(sae), row.sae_id


@pytest.fixture
def steer_db(steer_db_master, tmp_path):
    """A private copy of the results file."""
    db, sae, sae_id = steer_db_master
    copy = tmp_path / "results.duckdb"
    shutil.copy(db, copy)
    return str(copy), sae, sae_id


@pytest.fixture(scope="session")
def live_features(steer_db_master):
    """Latents that fired in the features eval but not everywhere (so they have silent windows),
    largest max activation first."""
    from saelab import resultstore as results

    db, _, sae_id = steer_db_master
    with results.ResultsStore(db).reading() as con:
        rows = con.execute(
            "SELECT feature FROM features WHERE sae_id = ? AND max_act > 0 AND density < 0.5 "
            "ORDER BY max_act DESC",
            [sae_id],
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="session")
def scorable_feature(steer_db_master):
    """A rare latent with enough stored windows to be explained and scored."""
    from saelab import resultstore as results

    db, _, sae_id = steer_db_master
    with results.ResultsStore(db).reading() as con:
        (feature,) = con.execute(
            "SELECT feature FROM features WHERE sae_id = ? AND max_act > 0 AND density < 0.05 "
            "AND NOT too_few_examples ORDER BY max_act DESC LIMIT 1",
            [sae_id],
        ).fetchone()
    return feature
