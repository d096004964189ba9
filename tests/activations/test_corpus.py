"""Corpora and their cutting into sequences."""

from __future__ import annotations

import json

import pytest

from saelab.activations.corpus import iter_sequences, load_corpus
from saelab.base.errors import UserError


def test_builtin_is_real_english_from_both_sources():
    ds = load_corpus("builtin")
    assert set(ds["source"]) == {"wikipedia", "news"}
    assert len(ds) > 300
    text = " ".join(ds["text"][:50])
    for word in (" the ", " of ", " and "):
        assert word in text
    assert "'''" not in text and "[[" not in text  # wiki markup is stripped


def test_builtin_sources_selectable_and_order_fixed():
    news = load_corpus("builtin:news")
    assert set(news["source"]) == {"news"}
    assert load_corpus("builtin")["text"][:5] == load_corpus("builtin")["text"][:5]


def test_sequences_trace_back_to_their_text(model):
    tok = model.tokenizer
    ds = load_corpus("builtin:news")
    seqs = [s for _, s in zip(range(40), iter_sequences(ds, tok, 32, "prepend"))]
    assert all(len(s.tokens) == 32 for s in seqs)
    assert all(s.tokens[0] == tok.bos_token_id for s in seqs)
    for s in seqs[::7]:
        ids = tok(ds[s.doc]["text"], add_special_tokens=False)["input_ids"]
        assert list(s.tokens[1:]) == ids[s.offset : s.offset + 31]
    # Deterministic: the same call gives the same stream.
    again = [s for _, s in zip(range(40), iter_sequences(ds, tok, 32, "prepend"))]
    assert all((a.tokens == b.tokens).all() and a.doc == b.doc for a, b in zip(seqs, again))


def test_bos_none_keeps_text_only(model):
    ds = load_corpus("builtin:news")
    seq = next(iter_sequences(ds, model.tokenizer, 16, "none"))
    ids = model.tokenizer(ds[seq.doc]["text"], add_special_tokens=False)["input_ids"]
    assert list(seq.tokens) == ids[:16]


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("First document. " * 20)
    (tmp_path / "b.txt").write_text("Second document. " * 20)
    assert len(load_corpus(str(tmp_path))) == 2
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"row {i} " * 30}) for i in range(3)))
    ds = load_corpus(str(jl), text_column="body")
    assert len(ds) == 3 and ds[0]["text"].startswith("row 0")


def test_missing_dataset_is_a_user_error():
    with pytest.raises(UserError, match="cannot load dataset"):
        load_corpus("/no/such/corpus.jsonl".replace(".jsonl", "") + "-x")


def test_unknown_builtin_and_missing_column(tmp_path):
    with pytest.raises(UserError, match="unknown builtin"):
        load_corpus("builtin:poetry")
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"body": "x"}))
    with pytest.raises(UserError, match="no column 'text'"):
        load_corpus(str(jl))
