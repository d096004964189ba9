"""A small results file made by the real pipeline (two tiny SAEs on the shared store, core,
loss and feature evals, explanations and scores from the fake endpoint, a steering run) for
the app tests."""

from __future__ import annotations

import pytest

from saelab.cli import main

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="session")
def app_db(small_store, model, tmp_path_factory):
    """(db path, [sae ids]): two TopK SAEs (k 2 and 4, 64 latents) with everything stored,
    and one steering run."""
    from saelab import resultstore as results
    from saelab.autointerp.fake_endpoint import FakeEndpoint
    from saelab.evaluation.runner import EvalConfig, evaluate
    from saelab.steering.generate import Sampling
    from saelab.steering.run import SteerConfig, steer

    folder = tmp_path_factory.mktemp("app")
    db = folder / "results.duckdb"
    for k in (2, 4):
        sae = folder / f"sae-k{k}"
        train = ["train", "--acts", small_store, "--hook", HOOK, "--arch", "topk"]
        train += ["--d-sae", "64", "--k", str(k), "--batch-size", "128", "--out", str(sae)]
        # The pre-issue-17 default LR at 64 latents, explicit: at today's TopK default (the
        # 2048-latent floor of the rule, 9e-3) a dozen steps of 128 tokens leave most of these
        # 64 latents dead, and the pages need live latents with examples and explanations.
        train += ["--lr", "3.2e-3"]
        assert main([*train, "--no-progress"]) == 0
        cfg = EvalConfig(
            str(sae), small_store, str(db), evals=["core", "loss", "features"],
            settings={"loss": {"sequences": 2}},
        )  # fmt: skip
        evaluate(cfg, model=model, log=lambda *a: None)
    saes = results.list_saes(results.ResultsStore(db))
    with FakeEndpoint() as fake:
        for row in saes:
            explain = ["explain", "--db", str(db), "--sae", row.sae_id, "--features", "0:4"]
            explain += ["--base-url", fake.base_url, "--no-progress", "--timeout", "5"]
            assert main(explain) == 0
    with results.ResultsStore(db).reading() as con:
        (alive,) = con.execute(
            "SELECT min(feature) FROM features WHERE sae_id = ? AND NOT dead", [saes[-1].sae_id]
        ).fetchone()
    steer(
        SteerConfig(
            db=str(db), sae=saes[-1].path, features=[alive], strength=4.0,
            prompts=["The city of"], sampling=Sampling(max_new_tokens=6), n_samples=1,
            baseline=False,
        ),
        model=model,
    )  # fmt: skip
    return str(db), [r.sae_id for r in saes]


@pytest.fixture
def db_copy(app_db, request):
    """A writable copy of `app_db`'s results file, beside it: its SAE paths, stored relative to
    the file's folder, still find the checkpoints (a copy elsewhere would not)."""
    import re
    import shutil
    from pathlib import Path

    src = Path(app_db[0])
    copy = src.with_name(re.sub(r"\W", "_", request.node.name)[:80] + ".duckdb")
    shutil.copy(src, copy)
    yield str(copy)
    copy.unlink(missing_ok=True)
    copy.with_name(copy.name + ".wal").unlink(missing_ok=True)
