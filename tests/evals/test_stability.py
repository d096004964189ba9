"""The stability eval: seed twins found by config, the shared fraction on hand-built twins
(a permuted, noised copy shares every latent, a random SAE none), the runner's skip of an SAE
without twins, and the sweep option that trains seed twins in one pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saelab import resultstore as results
from saelab.activations.store import create, to_storage
from saelab.base.errors import UserError
from saelab.evaluation.runner import EvalConfig, evaluate
from saelab.evaluation.stability.twins import find_twins
from saelab.sae import build_sae, load_sae, make_config, save_sae
from saelab.sae.sweep import parse_sweep

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 64, 128


def saved(folder, seed: int, w_dec: torch.Tensor | None = None, k: int = 8):
    """A TopK SAE folder (seed `seed`), its decoder replaced by `w_dec` when given."""
    sae = build_sae(make_config("topk", d_sae=D_SAE, k=k, seed=seed), d_in=D_IN)
    if w_dec is not None:
        with torch.no_grad():
            sae.W_dec.copy_(w_dec)
    save_sae(sae, folder, meta={"hook_name": HOOK, "model_name": "synthetic"})
    return sae


def twin_sweep(root):
    """a (seed 0); b (seed 1): a's decoder rows permuted, signs kept, slightly noised (cosine
    ~0.995 with their originals); c (seed 2): fresh random rows; lone: another k, no twin."""
    a = saved(root / "a", 0)
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(D_SAE, generator=g)
    w = a.W_dec.detach()[perm]
    noise = torch.randn(w.shape, generator=g) * w.norm(dim=1, keepdim=True) / math.sqrt(D_IN)
    saved(root / "b", 1, w + 0.1 * noise)
    saved(root / "c", 2, torch.randn(D_SAE, D_IN, generator=g))
    saved(root / "lone", 0, k=4)
    return perm


def tiny_store(path, n_seq: int = 32, seq_len: int = 8) -> str:
    """A float32 store of one hook: 16 sparse random directions per token, plus noise."""
    g = torch.Generator().manual_seed(0)
    attrs = {"seq_len": seq_len, "dtype": "float32", "bos": "none", "bos_token_id": None,
             "special_token_ids": [], "model": "synthetic", "requested_sequences": n_seq}  # fmt: skip
    group = create(str(path), attrs, {HOOK: D_IN}, n_seq, 8, 1)
    group["tokens"][:] = torch.randint(5, 100, (n_seq, seq_len), generator=g).int().numpy()
    group["valid"][:] = np.ones(n_seq, dtype=bool)
    atoms = torch.nn.functional.normalize(torch.randn(48, D_IN, generator=g), dim=1)
    coef = torch.rand(n_seq * seq_len, 48, generator=g) * (torch.rand(n_seq * seq_len, 48) < 0.1)
    acts = (coef @ atoms + 0.05 * torch.randn(n_seq * seq_len, D_IN, generator=g)).reshape(
        n_seq, seq_len, D_IN
    )
    group[f"hooks/{HOOK}"][:] = to_storage(acts, "float32")
    group["progress"][:] = np.array([n_seq // 8])
    group.attrs.update({"committed_sequences": n_seq, "complete": True})
    return str(path)


def test_twins_are_the_same_config_under_another_seed(tmp_path):
    twin_sweep(tmp_path)
    saved(tmp_path / "a-again", 0)  # same config, same seed: a copy, not a seed twin
    found = find_twins(tmp_path / "a")
    assert [p.name for p in found.twins] == ["b", "c"] and found.twin_seeds == [1, 2]
    lone = find_twins(tmp_path / "lone")
    assert lone.twins == [] and lone.sweep_has_twins  # k differs from a, b, c


def test_shared_fraction_of_hand_built_twins(tmp_path):
    """a's twins: b shares all 128 latents (each with its own permuted copy), c none (random
    directions in 64 dimensions stay far below cosine 0.7): 0.5 on average."""
    twin_sweep(tmp_path)
    db = str(tmp_path / "r.duckdb")
    acts = tiny_store(tmp_path / "acts.zarr")
    logged: list[str] = []
    out = evaluate(EvalConfig(sae=str(tmp_path), acts=acts, db=db, evals=["stability"]), log=logged.append)  # fmt: skip
    m = out["a"]["stability"]
    assert m["n_twins"] == 2
    assert m["shared_fraction_max"] == 1.0 and m["shared_fraction_min"] == 0.0
    assert m["shared_fraction"] == 0.5
    assert 0.45 < m["mean_matched_cosine"] < 0.75  # (~0.995 + ~0.3) / 2
    assert out["b"]["stability"]["shared_fraction_max"] == 1.0  # b shares a's latents, c's none
    # the SAE without a twin in a sweep that has twins is skipped, with the reason logged
    assert "lone" not in out or "stability" not in out["lone"]
    assert any("lone stability: skipped" in line and "--seeds" in line for line in logged)
    rows = {(r["name"], r["metric"]): r for r in results.metrics_long(results.ResultsStore(db))}
    shared = rows[("a", "shared_fraction")]
    assert shared["ci_low"] == shared["ci_high"] == 0.5  # every latent: shared with 1 of 2
    cos = rows[("a", "mean_matched_cosine")]
    assert cos["ci_low"] < cos["value"] < cos["ci_high"] < cos["value"] + 0.05
    assert rows[("a", "n_twins")]["ci_low"] is None


def test_matched_partners_are_the_permuted_copies(tmp_path):
    from types import SimpleNamespace

    from saelab.evaluation.stability.measure import seed_stability

    perm = twin_sweep(tmp_path)
    a, b = load_sae(tmp_path / "a"), load_sae(tmp_path / "b")
    result = seed_stability(SimpleNamespace(W_dec=a.W_dec.detach()), [b])
    assert result.shared.all() and result.cosines.min() > 0.98
    from saelab.evaluation.seeds import match_latents

    rows, cols, _ = match_latents(a.W_dec, b.W_dec)
    assert (perm[torch.as_tensor(cols)].numpy() == rows).all()


def test_an_sae_without_any_twin_is_refused_with_how_to_train_twins(tmp_path):
    saved(tmp_path / "sweep" / "x", 0)
    saved(tmp_path / "sweep" / "y", 0, k=4)
    acts = tiny_store(tmp_path / "acts.zarr")
    for target in ("sweep/x", "sweep"):
        with pytest.raises(UserError, match=r"no seed twin.*seeds = \[0, 1\]"):
            evaluate(
                EvalConfig(sae=str(tmp_path / target), acts=acts, db=str(tmp_path / "r.duckdb"),
                           evals=["stability"]),
                log=lambda *_: None,
            )  # fmt: skip


def test_sweep_seeds_name_and_seed_each_copy():
    configs, _ = parse_sweep(
        {
            "defaults": {"d_sae": 32, "seeds": [0, 3]},
            "sae": [
                {"architecture": "topk", "k": 4},
                {"architecture": "topk", "k": 8, "seeds": [5]},
            ],
        },
        seed=9,
    )
    assert [(c.resolved_name(), c.seed) for c in configs] == [
        ("topk-32-k4-seed0", 0), ("topk-32-k4-seed3", 3), ("topk-32-k8-seed5", 5),
    ]  # fmt: skip
    with pytest.raises(UserError, match="both `seed`"):
        parse_sweep({"sae": [{"architecture": "topk", "seed": 1, "seeds": [0, 1]}]})
    with pytest.raises(UserError, match="a seed twice"):
        parse_sweep({"sae": [{"architecture": "topk", "seeds": [1, 1]}]})
    with pytest.raises(UserError, match="so does the run"):
        parse_sweep({"sae": [{"architecture": "topk", "seeds": [0, 1]}]}, seeds=[2, 3])
    (plain,) = parse_sweep({"sae": [{"architecture": "topk"}]}, seed=9)[0]
    assert plain.seed == 9 and plain.name is None  # the run's seed where the file sets none


def test_training_two_seeds_in_one_pass_gives_distinct_twins(tmp_path):
    """`saelab train --seeds 0 1`: two SAEs of one config, different initialisations, trained
    on the same batches; the stability eval pairs them as twins."""
    from saelab.cli import main

    acts = tiny_store(tmp_path / "acts.zarr")
    out = tmp_path / "sweep"
    code = main([
        "train", "--acts", acts, "--hook", HOOK, "--out", str(out), "--arch", "topk",
        "--d-sae", "32", "--k", "4", "--tokens", "512", "--batch-size", "64", "--seeds", "0", "1",
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in out.iterdir() if (p / "cfg.json").is_file())
    assert names == ["topk-32-k4-seed0", "topk-32-k4-seed1"]
    a, b = (load_sae(out / n) for n in names)
    assert (a.cfg.seed, b.cfg.seed) == (0, 1)
    assert not torch.allclose(a.W_dec, b.W_dec)
    res = evaluate(
        EvalConfig(sae=str(out), acts=acts, db=str(tmp_path / "r.duckdb"), evals=["stability"]),
        log=lambda *_: None,
    )
    for name in names:
        m = res[name]["stability"]
        assert m["n_twins"] == 1 and 0 <= m["shared_fraction"] <= 1
    assert res[names[0]]["stability"]["mean_matched_cosine"] == pytest.approx(
        res[names[1]]["stability"]["mean_matched_cosine"]
    )  # one matching, seen from either side
