"""The intervention scorer through `saelab explain` against the fake endpoint: a perfect judge
scores 1 at the target KL, and a detection run's rows survive a later intervention run."""

from __future__ import annotations

import json
import re

import pytest

from saelab import resultstore as results
from saelab.autointerp.fake_endpoint import FakeEndpoint, shaped_answer
from saelab.autointerp.scorers import intervention as scorer
from saelab.autointerp.windows import escape
from saelab.cli import main
from saelab.steering.backend import InterventionBackend


@pytest.fixture
def recorded(model):
    """Steered texts the backend produced (the judge's answer key); the session model reused."""
    steered: set[str] = set()

    class Recording(InterventionBackend):
        def texts(self, feature, settings, seed):
            made = super().texts(feature, settings, seed)
            steered.update(escape(t) for t in made["steered"])
            return made

    scorer.set_backend_factory(lambda store, sae_id: Recording(store, sae_id, model=model))
    yield steered
    scorer.set_backend_factory(None)


def test_perfect_judge_scores_one_and_detection_rows_remain(steer_db, scorable_feature, recorded):
    db, _, sae_id = steer_db

    def judge(messages):
        text = messages[-1]["content"]
        if "steered towards this concept" not in text:
            return shaped_answer(messages)
        lines = re.findall(r"^\d+\. (.*)$", text, re.M)
        return json.dumps([int(line in recorded) for line in lines])

    feature = str(scorable_feature)
    base = ["explain", "--db", db, "--sae", sae_id, "--features", feature, "--no-progress",
            "--explainers", "baseline", "--timeout", "5"]  # fmt: skip
    with FakeEndpoint(responder=judge) as fake:
        assert main(base + ["--base-url", fake.base_url, "--scorers", "detection"]) == 0
        assert main(base + ["--base-url", fake.base_url, "--scorers", "intervention"]) == 0
    rows = {r["scorer"]: r for r in results.interp_scores(results.ResultsStore(db))}
    assert set(rows) == {"detection", "intervention"}  # the second run kept the first's row
    row = rows["intervention"]
    assert row["status"] == "ok" and row["value"] == pytest.approx(1.0)
    assert row["n_failures"] == 0 and row["n_positive"] == row["n_negative"] == 8
    steering = json.loads(row["provenance_json"])["scorer"]["steering"]
    assert abs(steering["kl"] - 1.0) <= 0.05 and steering["strength"] > 0
