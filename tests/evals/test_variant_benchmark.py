"""The variant benchmark's sweep layout and its seed-stability comparison (no training)."""

from __future__ import annotations

from benchmarks import variants
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
