"""The `examples` explainer on hand-built windows whose right answer is known, and the cleaning
of LLM explanations (no leaked markup, short enough for a label)."""

from __future__ import annotations

import re

import numpy as np

from saelab.autointerp import answers
from saelab.autointerp.config import ExplainConfig
from saelab.autointerp.explainers.examples import MAX_CHARS, explain
from saelab.autointerp.windows import Window

LEAKS = re.compile(r"<<|>>|\*\*|↵|⏎|\n")


def window(pieces: list[tuple[str, float]], rank: int = 0) -> Window:
    tokens = [t for t, _ in pieces]
    return Window(tokens, np.array([a for _, a in pieces]), "top", ("top", -1, rank))


def text_of(windows: list[Window]) -> str:
    e = explain(windows)
    assert e.status == "ok" and e.explainer == "examples"
    assert not LEAKS.search(e.text) and len(e.text) <= MAX_CHARS, e.text
    return e.text


def test_names_whole_words_ranked_by_activation():
    # fires on the second piece of " Aruba" (5 windows) and on " Cuba" (2 windows)
    aruba = [
        window([(before, 0), (" A", 0), ("ruba", 3.0), (" today", 0)], r)
        for r, before in enumerate([" in", " to", " from", " in", " visit"])
    ]
    cuba = [window([(" near", 0), (" Cuba", 2.0), (",", 0)], 5 + r) for r in range(2)]
    assert text_of(cuba + aruba) == '"Aruba", "Cuba"'


def test_a_word_seen_once_in_many_windows_is_left_out():
    # each window counts once (activations relative to its own peak): 1 of 41 < MIN_SHARE
    main = [window([(" the", 0), (" cat", 4.0), (" sat", 0)], r) for r in range(40)]
    stray = [window([(" a", 0), (" dog", 0.2), (" sat", 0)], 40)]
    assert text_of(main + stray) == '"cat" after "the"'


def test_names_the_word_before_when_one_word_precedes_most():
    # the latent fires on the full stop of "U.S." (after "U" and after "S" alike: "S" is the
    # word before both, once the first stop is read)
    ws = [
        window([(" the", 0), (" U", 0), (".", 2.0), ("S", 0), (".", 1.0), (" law", 0)], r)
        for r in range(4)
    ]
    ws += [window([(" in", 0), (" U", 0), (".", 2.0), (" courts", 0)], 4 + r) for r in range(4)]
    assert text_of(ws) == '"." after "U"'


def test_the_start_of_a_text_and_whitespace_are_spelt_out():
    starts = [window([("<|im_start|>", 0), ("The", 3.0), (" cat", 0)], r) for r in range(3)]
    assert text_of(starts) == '"The" at the start of a text'
    breaks = [window([(w, 0), ("\n", 2.0), ("Next", 0)], r) for r, w in enumerate("abc")]
    assert text_of(breaks) == '"line break"'
    across = [
        window([(w, 0), (".", 2.0), ("\n\n", 2.0), ("The", 1.0)], r) for r, w in enumerate("abc")
    ]
    assert text_of(across) == '". The"'
    quotes = [window([(w, 0), (' "', 2.0), ("Hi", 0)], r) for r, w in enumerate("abc")]
    assert text_of(quotes) == "'\"'"


def test_long_words_are_cut_to_a_label_and_a_silent_latent_is_unparsable():
    long = [window([(" x", 0), (" " + "w" * 120, 1.0)])]
    assert text_of(long).endswith("…")
    silent = explain([window([(" a", 0), (" b", 0)])])
    assert silent.status == "unparsable" and silent.text is None


def test_llm_explanations_lose_markup_preambles_and_run_on_text():
    cases = {
        "Explanation: of<< effect size>> and **bold** ↵ words": "of effect size and bold words",
        "1. The feature responds to dates in the 1990s. It also fires on years.": (
            "dates in the 1990s"
        ),
        "This neuron detects U.S. place names": "U.S. place names",
        "The feature is active and strong": "The feature is active and strong",  # no preamble
    }
    for reply, expected in cases.items():
        assert answers.explanation(reply) == expected
    assert len(answers.explanation("word " * 40).split()) == 15


def test_offline_default_explainers_leave_the_llm_out():
    offline = ExplainConfig(db="x.duckdb", sae="s")
    assert offline.explainers == ["examples", "baseline"]
    remote = ExplainConfig(db="x.duckdb", sae="s", llm={"base_url": "http://h/v1"})
    assert remote.explainers == ["llm", "examples", "baseline"]


def test_explain_only_offline_names_live_latents_without_any_endpoint(interp_db, tmp_path):
    import shutil

    from saelab import resultstore as results
    from saelab.autointerp.pipeline import explain_features

    path, sae_id = interp_db
    db = str(tmp_path / "results.duckdb")
    shutil.copy(path, db)
    cfg = ExplainConfig(
        db=db, sae=sae_id, sample=6, explainers=["examples"], scorers=[], progress=False
    )
    summary = explain_features(cfg)  # no base_url, and no local server is started
    assert summary.usage.requests == 0 and len(summary.features) == 6
    stats = results.feature_stats(results.ResultsStore(db), sae_id, summary.features)
    assert all(not s.dead and not s.too_few_examples for s in stats.values())
    store = results.ResultsStore(db)
    texts = [
        e.explanation for f in summary.features for e in results.explanations(store, sae_id, f)
    ]
    assert len(texts) == 6 and all(t and not LEAKS.search(t) for t in texts), texts
