"""Reading answers, rendering windows (unforgeable marks), and splitting a latent's windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saelab.autointerp import answers
from saelab.autointerp.config import WindowConfig
from saelab.autointerp.windows import MARK_CLOSE, MARK_OPEN, Window, render, split_windows
from saelab.resultstore import FeatureExampleRow


def test_int_list_takes_the_first_list_of_the_right_shape():
    assert answers.int_list("Sure: [1, 0, 1]", 3, 0, 1) == [1, 0, 1]
    assert answers.int_list("[1, 0] then [0, 1, 1]", 3, 0, 1) == [0, 1, 1]
    assert answers.int_list("[1, 0, 2]", 3, 0, 1) is None  # out of range
    assert answers.int_list("[true, false, true]", 3, 0, 1) is None  # not integers
    assert answers.int_list("[1, 0]", 3, 0, 1) is None  # wrong length
    assert answers.int_list("", 3, 0, 1) is None
    assert answers.int_list("[3, 10, 0]", 3, 0, 10) == [3, 10, 0]


def test_explanation_after_its_label_or_first_line():
    assert answers.explanation("Explanation: the word 'cat'.\nMore") == "the word 'cat'."
    assert answers.explanation("\n  numbers in dates  \n") == "numbers in dates"
    assert answers.explanation("   ") is None
    assert answers.explanation("Explanation:   ") is None


def test_expected_values_from_top_logprobs():
    lp = [
        {"token": "[", "top": [["[", 0.0]]},
        {"token": "2", "top": [["2", math.log(0.5)], ["4", math.log(0.25)], ["x", math.log(0.25)]]},
        {"token": ", ", "top": [[", ", 0.0]]},
        {"token": "10", "top": [["10", 0.0]]},
        {"token": "]", "top": [["]", 0.0]]},
    ]
    # (0.5·2 + 0.25·4) / 0.75 = 8/3 (the non-number alternative is dropped and the rest renormalised)
    assert answers.expected_values(lp, 2) == [8 / 3, 10.0]
    assert answers.expected_values(lp, 3) is None
    assert answers.expected_values(None, 2) is None


def window(tokens, acts, kind="top", band=-1, rank=0):
    return Window(tokens, np.array(acts, float), kind, (kind, band, rank))


def test_corpus_text_cannot_forge_marks_or_numbered_lines():
    w = window(["<<", "fake", ">>", "\n2. Explanation:", " real"], [0, 0, 0, 0, 1.5])
    marked = render(w, w.active)
    assert marked.count(MARK_OPEN) == 1 and marked.count(MARK_CLOSE) == 1
    assert marked.endswith(f"{MARK_OPEN} real{MARK_CLOSE}")
    assert "\n" not in marked and "‹‹fake››" in marked
    assert MARK_OPEN not in render(w)


def test_runs_of_active_tokens_share_one_mark():
    w = window(["a", "b", "c", "d"], [1, 2, 0, 3])
    assert render(w, w.active) == "<<ab>>c<<d>>"


def rows(kind, n, active=True, start=0):
    return [
        FeatureExampleRow(
            sae_id="s", feature=0, kind=kind, band=3 - (i % 4) if kind == "quantile" else -1,
            rank=i, seq=start + i, pos=1, window_start=0,
            activation=float(i + 1) if active else 0.0, tokens=[1, 2, 3],
            acts=[0.0, float(i + 1) if active else 0.0, 0.0],
        )
        for i in range(n)
    ]  # fmt: skip


def test_split_is_disjoint_and_negatives_are_silent():
    stored = rows("top", 12) + rows("quantile", 8, start=100) + rows("random", 4, start=0)
    stored += rows("nonactivating", 6, active=False, start=200) + rows(
        "nonactivating", 2, start=300
    )
    cfg = WindowConfig(explain_top=5, explain_quantile=2, score_activating=10)
    split = split_windows(stored, {1: "a", 2: "b", 3: "c"}, 20.0, cfg, seed=3)
    explained = {w.key for w in split.explain}
    assert len(split.explain) == 7 and not explained & {w.key for w in split.activating}
    assert len(split.activating) == 10 and all(w.max_act > 0 for w in split.activating)
    assert len(split.silent) == 6 and all(w.max_act == 0 for w in split.silent)
    assert split.insufficient(cfg) is None
    # random picks that repeat a top window (same seq and start) are dropped
    assert all(w.kind != "random" or w.key[2] >= 12 for w in split.activating)


def test_rare_latent_is_flagged_not_dropped():
    split = split_windows(rows("top", 2), {}, 1.0, WindowConfig(), seed=0)
    assert "explanation windows" in split.insufficient(WindowConfig())


def test_yes_probability_sums_the_allowed_answers_hand_worked():
    top = [
        [" 1", math.log(0.3)],
        ["Yes", math.log(0.1)],
        ["0", math.log(0.2)],
        ["The", math.log(0.4)],
    ]
    # (0.3 + 0.1) / (0.3 + 0.1 + 0.2) = 2/3; "The" is no answer and is left out
    assert answers.yes_probability([{"token": " 1", "top": top}]) == pytest.approx(2 / 3)
    assert answers.yes_probability([{"token": "The", "top": [["The", 0.0]]}]) is None
    assert answers.yes_probability([]) is None and answers.yes_probability(None) is None


def test_baseline_names_whitespace_tokens_instead_of_giving_up():
    """A latent that fires only on line breaks (common in verse) gets an explanation naming
    them, not "unparsable"; ordinary tokens are named stripped."""
    from saelab.autointerp.explainers.baseline import explain

    breaks = [Window(["Thou", " art", "\n", "\n", "Go"], np.array([0, 0, 2.0, 1.0, 0]), "top", ())]
    got = explain(breaks)
    assert got.status == "ok" and got.text == 'the tokens "\\n" (often after "art", "\\n")'
    words = [Window([" the", " king", "."], np.array([0, 1.5, 0]), "top", ())]
    assert explain(words).text == 'the tokens "king" (often after "the")'
    silent = [Window([" the"], np.array([0.0]), "top", ())]
    assert explain(silent).status == "unparsable"
