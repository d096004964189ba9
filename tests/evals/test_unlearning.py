"""The unlearning eval: SAEBench's latent choice and score arithmetic by hand, and a hand-built
SAE on the real model whose one latent fires exactly on the token " chemical" (a word of every
forget question and of no retain question): clamping it changes forget answers as an
independent re-implementation predicts and leaves every retain answer as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.base.errors import UserError
from saelab.evaluation.unlearning.config import UnlearningSettings
from saelab.evaluation.unlearning.intervention import clamp, pick_latents
from saelab.evaluation.unlearning.score import (
    SweepOutcome,
    bootstrap,
    interval,
    unlearning_score,
)

HOOK = "hook_embed"


def test_latents_are_picked_by_forget_frequency_under_the_retain_threshold():
    forget = np.array([0.30, 0.50, 0.00, 0.20, 0.40, 0.10])
    retain = np.array([0.000, 0.020, 0.000, 0.005, 0.0009, 0.0])
    # latent 1 fires too often on the retain corpus, latent 2 never on the forget corpus
    assert pick_latents(forget, retain, 0.01).tolist() == [4, 0, 3, 5]
    assert pick_latents(forget, retain, 0.001).tolist() == [4, 0, 5]
    assert pick_latents(forget, retain, 1.0).tolist() == [1, 4, 0, 3, 5]


def test_score_is_one_minus_the_lowest_forget_accuracy_keeping_retain():
    forget = np.array([0.80, 0.30, 0.10, 0.55])
    retain = np.array([1.00, 0.995, 0.98, 0.99])
    # settings 0, 1 and 3 keep retain >= 0.99; the lowest forget among them is 0.30
    assert unlearning_score(forget, retain, 0.99) == pytest.approx((0.70, 1))
    assert unlearning_score(forget, retain, 0.999) == pytest.approx((0.20, 0))
    assert unlearning_score(forget, np.array([0.9, 0.5, 0.98, 0.2]), 0.99) == (0.0, None)


def test_bootstrap_resamples_questions_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    outcome = SweepOutcome(rng.random((3, 40)) < [[0.9], [0.4], [0.2]], np.ones((3, 60), bool))
    outcome.retain_correct[2, :6] = False  # setting 2 loses 10% of retain: never counts
    boot = bootstrap(outcome, 0.99, 500, seed=1)
    point, best = unlearning_score(
        outcome.forget_correct.mean(1), outcome.retain_correct.mean(1), 0.99
    )
    assert best == 1 and point == pytest.approx(1 - outcome.forget_correct[1].mean())
    low, high = interval(boot["score"])
    assert low < point < high and high - low < 0.5
    for score, forget, retain in zip(boot["score"], boot["forget_acc"], boot["retain_acc"]):
        ok = retain >= 0.99  # setting 2 counts only in a resample that misses its 6 errors
        assert score == (1 - forget[ok].min() if ok.any() else 0.0)
    assert (boot["retain_acc"][:, :2] == 1).all()
    again = bootstrap(outcome, 0.99, 500, seed=1)
    assert (again["score"] == boot["score"]).all()


def test_settings_refuse_bad_values():
    with pytest.raises(UserError, match="retain_dataset"):
        UnlearningSettings(dataset="wmdp.parquet").validate()
    with pytest.raises(UserError, match="multipliers"):
        UnlearningSettings(multipliers=[-25.0]).validate()


# -- the hand-built SAE on the real model ---------------------------------------------------


def tokens_read(model, store_path: str | None) -> set[int]:
    """Every token the test's eval reads: the questions, the forget corpus, the store."""
    from saelab.activations.store import ActivationStore
    from saelab.evaluation.unlearning.answering import build_sequences
    from saelab.evaluation.unlearning.questions import (
        substitute_forget_corpus,
        substitute_questions,
    )

    forget, retain = substitute_questions(2, UnlearningSettings().seed)
    seen = {
        t for seq in build_sequences(model.tokenizer, forget + retain, "cloze") for t in seq.tokens
    }
    for doc in substitute_forget_corpus():
        seen |= set(model.tokenizer(doc, add_special_tokens=False)["input_ids"])
    if store_path:
        store = ActivationStore(store_path)
        for c in store.committed_chunks():
            seen |= set(store.read_tokens(c).ravel().tolist())
    return seen


def chemical_sae(model, store_path: str | None = None):
    """A ReLU SAE on the token embeddings: latent 0 fires exactly on " chemical" among every
    token the eval reads (checked), latent 1 on every token (so it is never picked), latent 2
    never. Returns the SAE, the token and latent 0's threshold."""
    from saelab.sae import build_sae, make_config

    emb = model.bridge.original_model.get_input_embeddings().weight.detach().float()
    chem = model.tokenizer(" chemical", add_special_tokens=False)["input_ids"]
    assert len(chem) == 1
    u = emb[chem[0]]
    others = sorted(tokens_read(model, store_path) - {chem[0]})
    read = emb[others] @ (u / u.dot(u))  # 1 on " chemical"
    assert read.max() < 0.9  # nothing else the eval reads looks like " chemical"
    threshold = (1 + float(read.max())) / 2
    sae = build_sae(make_config("relu", d_sae=3), d_in=emb.shape[1]).eval()
    with torch.no_grad():
        sae.encoder_weight.zero_()
        sae.encoder_weight[0] = u / u.dot(u)
        sae.b_enc.copy_(torch.tensor([-threshold, 1.0, -1.0]))
        sae.W_dec.zero_()
        sae.W_dec[0] = u / u.norm()
        sae.b_dec.zero_()
    return sae, chem[0], threshold


@pytest.fixture(scope="module")
def embed_store(model, tmp_path_factory):
    from saelab.activations.harvest import HarvestConfig, harvest

    out = str(tmp_path_factory.mktemp("unlearning") / "acts.zarr")
    harvest(
        HarvestConfig(
            out=out, hooks=[HOOK], tokens=16 * 32, seq_len=32, batch_size=8, chunk_seqs=8,
            progress=False,
        ),
        model=model,
    )  # fmt: skip
    return out


def reference_answers(model, questions, chem: int, sae, multiplier: float | None) -> np.ndarray:
    """Whether each question is answered right, by cloze scoring with the clamp written out
    directly: at each " chemical" position the embedding moves by (−multiplier − f0) along
    latent 0's decoder row (f0 its activation there); None: the unmodified model."""
    from saelab.evaluation.unlearning.answering import chat_prompt

    tok = model.tokenizer
    d, e = sae.W_dec[0].detach(), sae.encoder_weight[0].detach()
    b = float(sae.b_enc[0].detach())
    rows, starts = [], []
    for q in questions:
        prompt = tok(chat_prompt(tok, q.question), add_special_tokens=False)["input_ids"]
        for choice in q.choices:
            rows.append(prompt + tok(choice, add_special_tokens=False)["input_ids"])
            starts.append(len(prompt))
    width = max(map(len, rows))
    x = torch.tensor([r + [0] * (width - len(r)) for r in rows])

    def edit(act, hook=None):
        if multiplier is None:
            return act
        act = act.clone()
        at = x == chem
        f0 = (act[at].float() @ e + b).relu()
        act[at] += ((-multiplier - f0)[:, None] * d).to(act.dtype)
        return act

    with torch.no_grad():
        logp = model.bridge.run_with_hooks(x, fwd_hooks=[(HOOK, edit)]).double().log_softmax(-1)
    scores = [
        float(logp[i, s - 1 : len(r) - 1].gather(-1, torch.tensor(r[s:])[:, None]).sum())
        for i, (r, s) in enumerate(zip(rows, starts))
    ]
    chosen = np.array(scores).reshape(len(questions), -1).argmax(1)
    return chosen == np.array([q.answer for q in questions])


def test_clamping_the_chemical_latent_unlearns_chemistry_only(model, embed_store, tmp_path):
    """Through `saelab eval`'s runner into a results file, on the real model."""
    import json

    from saelab import resultstore as results
    from saelab.evaluation.runner import EvalConfig, evaluate
    from saelab.evaluation.unlearning.questions import substitute_questions
    from saelab.sae.checkpoint import save_sae

    sae, chem, _ = chemical_sae(model, embed_store)
    save_sae(sae, tmp_path / "sae", meta={"hook_name": HOOK})
    settings = dict(
        max_questions=2, retain_thresholds=[0.01], n_features=[1, 2], multipliers=[2.0, 400.0],
        bootstrap=200, corpus_tokens=1500,
    )  # fmt: skip
    cfg = EvalConfig(
        sae=str(tmp_path / "sae"), acts=embed_store, db=str(tmp_path / "r.duckdb"),
        evals=["unlearning"], settings={"unlearning": settings},
    )  # fmt: skip
    evaluate(cfg, model=model, log=lambda *_: None)
    db = results.ResultsStore(tmp_path / "r.duckdb")
    rows = results.metrics_long(db)
    m = {r["metric"]: r["value"] for r in rows}
    ci = {r["metric"]: (r["ci_low"], r["ci_high"]) for r in rows}
    (run,) = results.eval_runs(db)
    conventions = json.loads(run.config_json)
    assert not any(name.startswith("unlearning_score") for name in m)  # the substitute's names
    forget, retain = substitute_questions(2, UnlearningSettings().seed)
    assert m["unlearning_substitute_forget_questions_asked"] == len(forget) == 4
    assert m["unlearning_substitute_retain_questions_asked"] == len(retain) == 6
    assert m["unlearning_substitute_candidates_r0.01"] == 1  # latent 0 alone
    assert conventions["best_latents"] == [0]
    kept_f = int(m["unlearning_substitute_forget_questions"])
    assert kept_f >= 3 and m["unlearning_substitute_retain_questions"] >= 5
    keys = [f"r0.01-n{n}-m{x:g}" for n in (1, 2) for x in (2.0, 400.0)]
    for key in keys:  # retain questions hold no " chemical": every retain answer stands
        assert m[f"unlearning_substitute_retain_acc_{key}"] == 1.0
    # the forget accuracy is what the written-out clamp gives on the kept questions
    kept = [q for q, ok in zip(forget, reference_answers(model, forget, chem, sae, None)) if ok]
    assert len(kept) == kept_f
    for mult in (2.0, 400.0):
        expected = reference_answers(model, kept, chem, sae, mult).mean()
        assert m[f"unlearning_substitute_forget_acc_r0.01-n1-m{mult:g}"] == expected
        assert m[f"unlearning_substitute_forget_acc_r0.01-n2-m{mult:g}"] == expected
    assert m["unlearning_substitute_forget_acc_r0.01-n1-m400"] < 1.0  # answers removed
    # every setting keeps retain, so the score is 1 - the lowest forget accuracy (hand)
    lowest = min(m[f"unlearning_substitute_forget_acc_{k}"] for k in keys)
    assert m["unlearning_substitute_score"] == pytest.approx(1 - lowest)
    low, high = ci["unlearning_substitute_score"]
    assert low <= m["unlearning_substitute_score"] <= high
    assert "bootstrap over questions" in conventions["interval"]


def test_letter_answers_map_back_through_the_option_orderings():
    from saelab.evaluation.unlearning.answering import PERMUTATIONS, Sequence, predictions

    # question 0 under orderings 0 (identity) and 1; the model picks letter B, then letter C
    seqs = [Sequence((1,), 0, 0, 0), Sequence((1,), 0, 1, 0)]
    values = [np.array([0.1, 0.6, 0.2, 0.1]), np.array([0.1, 0.1, 0.7, 0.1])]
    assert PERMUTATIONS[0] == (0, 1, 2, 3) and PERMUTATIONS[1] == (0, 1, 3, 2)
    pred = predictions(seqs, values, "letter", 1)
    assert pred.tolist() == [[1, 3]]  # B is choice 1; C under ordering 1 shows choice 3


def test_a_clamp_where_no_picked_latent_fires_leaves_the_activation_exactly(model):
    sae, chem, threshold = chemical_sae(model)
    emb = model.bridge.original_model.get_input_embeddings().weight.detach()
    x = emb[torch.tensor([5, 100, 2000, chem])]
    out = clamp(sae, x, torch.tensor([0, 2]), 50.0)
    assert torch.equal(out[:3], x[:3])
    with torch.no_grad():
        f0 = float(sae.encode(x[3:])[0, 0])
    assert f0 == pytest.approx(1 - threshold, abs=1e-5)
    moved = (out[3] - x[3]) @ sae.W_dec[0].detach()
    assert float(moved) == pytest.approx(-50.0 - f0, rel=1e-4)


def test_local_copies_in_the_original_columns_load_alike(tmp_path):
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from saelab.evaluation.unlearning.questions import load_corpus, load_questions

    rows = [
        {"question": "Which virus?", "choices": ["a", "b", "c", "d"], "answer": 2},
        {"question": "Which toxin?", "choices": ["e", "f", "g", "h"], "answer": 0},
    ]
    (tmp_path / "wmdp.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "wmdp.parquet")
    with (tmp_path / "wmdp.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["question", "choices", "answer"])
        writer.writeheader()
        writer.writerows([{**r, "choices": json.dumps(r["choices"])} for r in rows])
    loaded = [
        load_questions(str(tmp_path / f"wmdp.{x}"), "bio", 10) for x in ("jsonl", "parquet", "csv")
    ]
    assert loaded[0] == loaded[1] == loaded[2]
    assert [(q.choices[q.answer], q.subject) for q in loaded[0]] == [("c", "bio"), ("e", "bio")]
    assert len(load_questions(str(tmp_path / "wmdp.jsonl"), "bio", 1)) == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "choices": ["a"]}))
    with pytest.raises(UserError, match="lacks the column"):
        load_questions(str(tmp_path / "bad.jsonl"), "bio", 10)
    with pytest.raises(UserError, match="does not exist"):
        load_questions(str(tmp_path / "missing.parquet"), "bio", 10)
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"text": "anthrax spores"}) + "\n\n")
    assert load_corpus(str(tmp_path / "corpus.jsonl")) == ["anthrax spores"]
