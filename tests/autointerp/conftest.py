"""A results database with feature examples of a small real SAE (trained on the shared store)."""

from __future__ import annotations

import pytest

from saelab.cli import main

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="session")
def interp_db(small_store, tmp_path_factory):
    """(db path, sae id): a TopK SAE (128 latents, k 2) with its feature statistics stored."""
    from saelab import resultstore as results

    folder = tmp_path_factory.mktemp("interp")
    sae, db = folder / "sae", folder / "results.duckdb"
    train = ["train", "--acts", small_store, "--hook", HOOK, "--arch", "topk", "--d-sae", "128"]
    # The pre-issue-17 default LR at 128 latents, explicit: these tests need the latents this
    # SAE had (their examples, and timings of the killed-run test), not the current defaults.
    train += ["--lr", "1.77e-3"]
    assert (
        main(train + ["--k", "2", "--batch-size", "128", "--out", str(sae), "--no-progress"]) == 0
    )
    evaluate = ["eval", "--sae", str(sae), "--acts", small_store, "--db", str(db)]
    assert main(evaluate + ["--evals", "features"]) == 0
    (row,) = results.list_saes(results.ResultsStore(db))
    return str(db), row.sae_id
