"""The offline Bias in Bios and Amazon reviews data (stand-ins and local copies) and the pooled
text activations the disentanglement evals probe."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from saelab.base.errors import UserError
from saelab.evaluation.datasets.bios import (
    PROFESSIONS,
    STAND_IN_PROFESSIONS,
    bios_dataset,
    bios_texts,
)
from saelab.evaluation.datasets.reviews import CATEGORIES, review_texts, reviews_dataset


def test_biased_split_correlates_the_labels_perfectly_and_balanced_split_does_not():
    biased = bios_dataset("biased", ("surgeon", "teacher"), n=40, seed=3)
    pairs = set(zip(biased.labels["profession"], biased.labels["gender"], strict=True))
    assert pairs == {("surgeon", "male"), ("teacher", "female")}
    assert len(biased) == 40 and (biased.labels["profession"] == "surgeon").sum() == 20
    balanced = reviews_dataset("balanced", ("Software", "Electronics"), n=42, seed=3)
    cells = pd.Series(
        list(zip(balanced.labels["category"], balanced.labels["rating"], strict=True))
    )
    assert sorted(cells.value_counts().tolist()) == [10, 10, 11, 11]
    assert set(balanced.labels["rating"]) == {"1.0", "5.0"}


def test_stand_in_is_deterministic_prefix_stable_and_train_test_disjoint():
    a = bios_texts("nurse", "female", 30, seed=1)
    assert a == bios_texts("nurse", "female", 30, seed=1)
    assert bios_texts("nurse", "female", 10, seed=1) == a[:10]
    assert a != bios_texts("nurse", "female", 30, seed=2)
    test = bios_texts("nurse", "female", 200, part="test", seed=1)
    assert not set(bios_texts("nurse", "female", 200, seed=1)) & set(test)
    r = review_texts("Books", "5.0", 100, seed=0)
    assert not set(r) & set(review_texts("Books", "5.0", 100, part="test", seed=0))


def test_stand_in_bios_never_name_a_profession():
    # As Bias in Bios's hard_text: the first sentence, which names the profession, is gone.
    title = re.compile(r"\b(" + "|".join(p.replace("_", " ") for p in PROFESSIONS) + r")s?\b", re.I)
    for profession in STAND_IN_PROFESSIONS:
        for text in bios_texts(profession, "male", 30) + bios_texts(profession, "female", 30):
            assert not title.search(text), text


def test_local_copies_are_read_with_the_originals_columns(tmp_path):
    rows = [
        ("Bio of a male professor.", PROFESSIONS["professor"], 0),
        ("Bio of a female professor.", PROFESSIONS["professor"], 1),
        ("Bio of a female nurse.", PROFESSIONS["nurse"], 1),
        ("Another female nurse.", "nurse", "female"),
    ] * 5
    folder = tmp_path / "bios"
    folder.mkdir()
    frame = pd.DataFrame(rows, columns=["hard_text", "profession", "gender"]).astype(str)
    frame["profession"] = [r[1] for r in rows]
    frame["gender"] = [r[2] for r in rows]
    frame.iloc[:12].to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.iloc[12:].to_json(folder / "test.jsonl", orient="records", lines=True)
    got = bios_texts("nurse", "female", 6, path=str(folder))
    assert sorted(set(got)) == ["Another female nurse.", "Bio of a female nurse."]
    assert (
        bios_texts("professor", "male", 2, part="test", path=str(folder))
        == ["Bio of a male professor."] * 2
    )
    with pytest.raises(UserError, match="only 3 texts of professor/male"):
        bios_texts("professor", "male", 4, path=str(folder))
    reviews = pd.DataFrame(
        {"text": [f"review {i}" for i in range(50)], "category": [CATEGORIES["Books"]] * 50,
         "rating": [1.0, 5.0, 3.0, 5.0, 1.0] * 10}
    )  # fmt: skip
    reviews.to_parquet(tmp_path / "reviews.parquet")
    got = review_texts("Books", "5.0", 8, path=str(tmp_path / "reviews.parquet"))
    assert all(int(t.split()[1]) % 5 in (1, 3) for t in got) and len(set(got)) == 8
    with pytest.raises(UserError, match="lacks the column"):
        review_texts("Books", "5.0", 1, path=str(folder / "train.jsonl"))
    with pytest.raises(UserError, match="does not exist"):
        bios_texts("nurse", "male", 1, path=str(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match="no profession 'poet'"):
        bios_texts("poet", "male", 1)


def test_pooled_activations_match_one_text_at_a_time(model):
    from saelab.activations.corpus import bos_token_id
    from saelab.evaluation.datasets.text_acts import pooled_activations, token_activations

    hook = "blocks.3.hook_resid_post"
    texts = ["A short one.", bios_texts("dentist", "male", 1)[0], "Two words"]
    acts = token_activations(model, texts, hook, batch_size=2)
    for i, text in enumerate(texts):
        ids = [
            bos_token_id(model.tokenizer),
            *model.tokenizer(text, add_special_tokens=False)["input_ids"],
        ]
        _, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=[hook])
        reference = cache[hook][0, 1:].float()  # BOS left out
        rows = acts.acts[acts.offsets[i] : acts.offsets[i + 1]]
        assert rows.shape == reference.shape
        torch.testing.assert_close(rows, reference, atol=2e-4, rtol=1e-4)
    pooled = pooled_activations(model, texts, hook, batch_size=3)
    torch.testing.assert_close(pooled[1], acts.select([1]).pooled()[0], atol=2e-4, rtol=1e-4)
    short = token_activations(model, texts[1:2], hook, max_length=5)
    assert np.diff(short.offsets).tolist() == [4]
