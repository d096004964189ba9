"""The Feature page's "by head" panel: drawn from an SAE's `feature_heads` rows (the heads
eval) with both shares per head, and absent for a latent without rows."""

from __future__ import annotations

import json

import pytest

from saelab.app import db as appdb

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

SCRIPT = "from saelab.app.main import run_page\nrun_page('feature')\n"


def feature_page(monkeypatch, path: str, sae_id: str, feature: int) -> AppTest:
    monkeypatch.setenv(appdb.DB_ENV, path)
    at = AppTest.from_string(SCRIPT, default_timeout=60)
    at.query_params["sae"] = sae_id
    at.query_params["feature"] = str(feature)
    return at.run()


def head_charts(at: AppTest) -> list[dict]:
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    return [
        s for s in specs if s.get("layout", {}).get("title", {}).get("text") == "Share per head"
    ]


def test_by_head_panel_shows_both_shares_per_head(app_db, db_copy, monkeypatch):
    from saelab import resultstore as results

    _, ids = app_db
    store = results.ResultsStore(db_copy, "update")
    with store.reading() as con:
        (feature,) = con.execute(
            "SELECT min(feature) FROM features WHERE sae_id = ? AND NOT dead", [ids[0]]
        ).fetchone()
    norm = [0.05, 0.6, 0.05, 0.3]  # 4 heads; head 1 holds most of the decoder norm
    dfa = [0.1, 0.5, None, 0.4]
    rows = [
        results.FeatureHeadRow(ids[0], feature, h, norm[h], dfa[h], 7) for h in range(len(norm))
    ]
    results.write_feature_heads(store, ids[0], rows)

    at = feature_page(monkeypatch, db_copy, ids[0], feature)
    assert not at.exception, at.exception
    assert "By head" in [s.value for s in at.subheader]
    (chart,) = head_charts(at)
    bars = {t["name"]: t for t in chart["data"]}
    assert bars["decoder norm"]["y"] == norm
    assert bars["decoder norm"]["x"] == ["L2.H0", "L2.H1", "L2.H2", "L2.H3"]
    assert bars["DFA, top 7 examples"]["y"] == [0.1, 0.5, 0.0, 0.4]
    assert any("Head 1 holds 60%" in c.value for c in at.caption)

    # another latent of the same SAE has no rows: no panel
    other = feature + 1
    at = feature_page(monkeypatch, db_copy, ids[0], other)
    assert not at.exception, at.exception
    assert "By head" not in [s.value for s in at.subheader] and not head_charts(at)
