"""The variant benchmark's sweep layout and its seed-stability comparison (no training)."""

from __future__ import annotations

import pytest

from benchmarks import variants
from saelab import resultstore as results
from saelab.base.errors import UserError
from saelab.sae import build_sae, make_config, save_sae


def test_sweep_has_every_arch_at_every_l0_and_seed_twins_at_the_middle_one():
    cfg = variants.VariantsConfig(
        out="unused", archs=("topk", "jumprelu"), l0s=(8, 16, 32), seed_archs=("relu", "topk")
    )
    configs = variants.sweep_configs(cfg)
    names = [c.resolved_name() for c in configs]
    assert names[:6] == [f"{a}-L0_{l0}" for l0 in (8, 16, 32) for a in ("topk", "jumprelu")]
    assert names[6:] == ["relu-L0_16-seed1", "topk-L0_16-seed1"]
    twin = configs[6]
    assert twin.seed == 1 and twin.target_l0 == 16.0  # relu is steered to its L0, not given k
    assert variants.parse_name("relu-L0_16-seed1") == ("relu", 16, "seed1")
    assert variants.parse_name("mutual_choice-L0_32") == ("mutual_choice", 32, "")
    (named,) = variants.sweep_configs(
        variants.VariantsConfig(out="unused", archs=("jumprelu_preact",), l0s=(32,))
    )
    assert named.architecture == "jumprelu" and named.resolved_name() == "jumprelu_preact-L0_32"
    assert named.pre_act_coefficient > 0 and named.target_l0 == 32.0


def test_seed_stability_pairs_each_twin_with_its_seed_0_sae(tmp_path):
    sweep = tmp_path / "sweep"
    a = build_sae(make_config("topk", d_sae=16, k=2, seed=0), d_in=8)
    b = build_sae(make_config("topk", d_sae=16, k=2, seed=1), d_in=8)
    save_sae(a, sweep / "topk-L0_2")
    save_sae(a, sweep / "relu-L0_2")  # an identical twin: every latent shared
    save_sae(a, sweep / "relu-L0_2-seed1")
    save_sae(b, sweep / "topk-L0_2-seed1")  # random 8-d directions: few pairs at cosine 0.7
    out = variants.seed_stability(sweep)
    assert out["relu"]["shared_fraction"] == 1.0
    assert out["topk"]["shared_fraction"] < 1.0
    assert out["relu_more_stable_than_topk"] is True


def test_extra_evals_are_run_when_registered_and_shown_with_their_intervals(tmp_path):
    cfg = variants.VariantsConfig(
        out="unused", extra_evals=("stability", "nosuch", "core"), seed_archs=("topk",)
    )
    run, notes = variants.extra_evals(cfg)
    assert run == ["stability"] and list(notes) == ["nosuch"]  # core runs anyway
    with pytest.raises(UserError, match="--seed-archs"):
        variants.extra_evals(variants.VariantsConfig(out="unused", extra_evals=("stability",)))
    db = str(tmp_path / "r.duckdb")
    store = results.ResultsStore(db, mode="write")
    sae = build_sae(make_config("topk", d_sae=16, k=2), d_in=8)
    save_sae(sae, tmp_path / "topk-L0_2")
    row = results.record_for_folder(
        tmp_path / "topk-L0_2", "sae_weights.safetensors", {}, architecture="topk", d_in=8,
        d_sae=16, hook="h", model="m", model_sha256=None,
    )  # fmt: skip
    results.write_eval_run(store, row, results.EvalRun(
        row.sae_id, "stability", {}, "", 0, 0.0,
        metrics={"shared_fraction": 0.5, "n_twins": 1.0},
        intervals={"shared_fraction": (0.4, 0.6)},
    ))  # fmt: skip
    got = variants.extra_metrics(db, ["stability"])["topk-L0_2"]
    assert got["shared_fraction"]["ci"] == [0.4, 0.6] and got["n_twins"]["ci"] is None
    rows = [{"name": "topk-L0_2", "shared_fraction": 0.5, "shared_fraction_ci": [0.4, 0.6],
             "n_twins": 1.0, "n_twins_ci": None, "probe_acc_k1": 0.7,
             "lopsided": 0.5, "lopsided_ci": [0.45, 0.7]}]  # fmt: skip
    table = variants.format_table(rows).splitlines()
    head = table[0].split(" | ")
    cells = dict(zip(head, table[2].split(" | "), strict=True))
    assert cells["shared_fraction"] == "0.5 ± 0.1" and cells["n_twins"] == "1"
    assert cells["lopsided"] == "0.5 [0.45, 0.7]" and cells["probe_acc_k1"] == "0.7"


def test_all_archs_are_the_sae_variants_and_each_config_validates():
    """`--archs all` once took the transcoders, and the paper-grade sweep died on their
    missing target hook after an hour of harvest: every config of the full sweep must pass
    the validation `saelab.train` runs first."""
    archs = variants.store_archs()
    assert {"relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"} <= set(archs)
    assert {"mutual_choice", "feature_choice", "mp"} <= set(archs)
    assert not {"transcoder", "clt", "gsae"} & set(archs)
    cfg = variants.VariantsConfig(out="unused", archs=archs, d_sae=256)
    for c in variants.sweep_configs(cfg):
        c.validate()


def _row(arch: str, l0: int, delta: float, dead: float, absorption: float, seed: str = "") -> dict:
    name = f"{arch}-L0_{l0}" + (f"-{seed}" if seed else "")
    return {"name": name, "seed_copy": bool(seed), "architecture": arch, "target_l0": l0,
            "l0": l0 * 1.05, "fvu": delta / 2, "delta_loss": delta, "dead_fraction": dead,
            "absorption_mean": absorption}  # fmt: skip


def test_merged_pieces_compare_across_every_l0_and_refuse_a_sae_twice():
    """Pieces (one L0 each) run on different days; the merge recomputes each claim over the
    rows of all of them, as one run over every L0 would have."""
    piece16 = {"config": {"archs": ["relu", "topk", "matryoshka"], "seed_archs": []},
               "rows": [_row("topk", 16, 0.5, 0.1, 0.02), _row("relu", 16, 0.7, 0.0, 0.01),
                        _row("matryoshka", 16, 0.6, 0.1, 0.001)],
               "comparisons": {"seed_stability": {}}, "command": "a", "label": "l16"}  # fmt: skip
    piece32 = {"config": {"archs": ["relu", "topk", "matryoshka"], "seed_archs": ["relu"]},
               "rows": [_row("relu", 32, 0.3, 0.0, 0.03), _row("topk", 32, 0.4, 0.2, 0.04),
                        _row("matryoshka", 32, 0.35, 0.1, 0.003),
                        _row("relu", 32, 0.31, 0.0, 0.03, seed="seed1")],
               "comparisons": {"seed_stability": {"relu": {"shared_fraction": 0.6}}},
               "command": "b", "label": "l32"}  # fmt: skip
    stuck = _row("jumprelu", 32, 0.2, 0.3, 0.02)
    stuck["l0"] = 13.8  # a target-L0 run that never reached its target
    piece32["rows"].append(stuck)
    piece32["rows"].append(_row("jumprelu_revival", 32, 0.35, 0.05, 0.02))  # a named setting
    merged = variants.merge_parts([piece32, piece16])
    names = [r["name"] for r in merged["rows"]]
    assert names == ["relu-L0_16", "topk-L0_16", "matryoshka-L0_16", "relu-L0_32", "topk-L0_32",
                     "matryoshka-L0_32", "jumprelu-L0_32", "jumprelu_revival-L0_32",
                     "relu-L0_32-seed1"]  # fmt: skip
    beat = {(c["target_l0"], c["arch"]): c["better_delta_loss"]
            for c in merged["comparisons"]["jumprelu_topk_beat_relu"]}  # fmt: skip
    assert beat == {(16, "topk"): True, (32, "jumprelu"): True, (32, "jumprelu_revival"): False,
                    (32, "topk"): False}  # fmt: skip
    matched = {(c["target_l0"], c["arch"]): c["l0_matched"]
               for c in merged["comparisons"]["jumprelu_topk_beat_relu"]}  # fmt: skip
    assert matched == {(16, "topk"): True, (32, "jumprelu"): False,
                       (32, "jumprelu_revival"): True, (32, "topk"): True}  # fmt: skip
    # JumpReLU >= TopK: each JumpReLU row (defaults and settings) against TopK at its level
    vs_topk = {(c["target_l0"], c["arch"]): (c["at_least_as_good"], c["l0_matched"])
               for c in merged["comparisons"]["jumprelu_at_least_topk"]}  # fmt: skip
    assert vs_topk == {(32, "jumprelu"): (True, False), (32, "jumprelu_revival"): (True, True)}
    within = merged["comparisons"]["l0_matched_within_15pct"]
    assert [n for n, ok in within.items() if not ok] == ["jumprelu-L0_32"]
    means = merged["comparisons"]["absorption_mean_by_arch"]
    assert means["relu"] == pytest.approx(0.02) and means["topk"] == pytest.approx(0.03)
    assert merged["comparisons"]["matryoshka_lowest_absorption"] is True
    assert merged["comparisons"]["seed_stability"] == {"relu": {"shared_fraction": 0.6}}
    assert [p["label"] for p in merged["parts"]] == ["l32", "l16"]
    with pytest.raises(UserError, match="topk-L0_16 is in piece 0 and piece 1"):
        variants.merge_parts([piece16, piece16])
    # a retrained architecture: with supersede the later piece's row wins, the earlier is kept
    retrained = {"config": {"archs": ["topk"], "seed_archs": []},
                 "rows": [_row("topk", 16, 0.05, 0.1, 0.03)],
                 "comparisons": {"seed_stability": {}}, "command": "c", "label": "again"}  # fmt: skip
    merged = variants.merge_parts([piece32, piece16, retrained], supersede=True)
    topk16 = [r for r in merged["rows"] if r["name"] == "topk-L0_16"]
    assert [r["delta_loss"] for r in topk16] == [0.05]
    assert len(merged["rows"]) == 9
    (old,) = merged["superseded"]
    assert (old["piece"], old["by_piece"], old["row"]["delta_loss"]) == (1, 2, 0.5)
    means = merged["comparisons"]["absorption_mean_by_arch"]
    assert means["topk"] == pytest.approx(0.035)  # the retrained row's 0.03 with 32's 0.04
    assert "superseded" not in variants.merge_parts([piece32, piece16])


def test_e2e_benchmark_reads_the_local_l0_for_a_delta_loss_off_a_log_log_curve():
    """Hand-worked: between (16, 0.2) and (64, 0.05) Δloss halves per doubling of L0 (a straight
    line in log-log), so Δloss 0.1 sits at L0 32 and 0.0707 (= 0.1/√2) at L0 45.25."""
    from benchmarks.e2e_fewer_latents import claim, local_l0_for

    curve = [(64.0, 0.05), (16.0, 0.2)]
    assert local_l0_for(0.1, curve) == pytest.approx(32.0, rel=1e-12)
    assert local_l0_for(0.1 / 2**0.5, curve) == pytest.approx(32 * 2**0.5, rel=1e-12)
    # a kinked curve uses the segment the value falls in; outside the curve there is no answer
    kinked = [(16.0, 0.2), (32.0, 0.05), (64.0, 0.04)]
    assert local_l0_for(0.1, kinked) == pytest.approx(16 * 2**0.5, rel=1e-12)
    assert local_l0_for(0.3, kinked) is None and local_l0_for(0.01, kinked) is None
    # the claim: e2e at k 16 with the Δloss local SAEs reach at L0 32 saves half the latents
    rows = {"local-topk-L0_16": {"l0": 16.0, "delta_loss": 0.2},
            "local-topk-L0_64": {"l0": 64.0, "delta_loss": 0.05},
            "e2e-topk-L0_16": {"l0": 16.0, "delta_loss": 0.1}}  # fmt: skip
    got = claim(rows, 16)
    assert got["reproduces"] and got["latents_saved"] == pytest.approx(2.0, rel=1e-12)
    rows["e2e-topk-L0_16"]["delta_loss"] = 0.25  # worse than local at the same k: off the curve
    got = claim(rows, 16)
    assert not got["reproduces"] and got["latents_saved"] is None
