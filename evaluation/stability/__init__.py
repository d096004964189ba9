"""The stability eval: the share of an SAE's latents that its seed twins learn too (Paulo &
Belrose 2025, "Sparse Autoencoders Trained on the Same Data Learn Different Features").

Seed twins are the other SAEs of the same sweep folder whose config differs only in its seed
(`twins.py`; train them with `seeds = [0, 1, 2]` in a sweep file or `saelab train --seeds`).
Each twin's decoder is matched one to one with the SAE's by the Hungarian algorithm on decoder
cosine (`saelab.evaluation.seeds`); a latent is shared with a twin when its matched cosine is at
least the threshold (0.7, the paper's). The eval reads no activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSkipped, EvalSpec, Metric

__all__ = ["METRICS", "SPEC", "StabilitySettings", "run"]


@dataclass(frozen=True)
class StabilitySettings:
    """How latents are matched across seeds and how the interval is drawn."""

    threshold: float = 0.7
    """Decoder cosine at or above which a matched pair of latents counts as shared (0.7, as
    Paulo & Belrose 2025)."""
    bootstrap: int = 1000
    """Bootstrap resamples of the SAE's latents for the 95% intervals."""
    seed: int = 0
    """Seed of the bootstrap."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if not -1 <= self.threshold <= 1:
            raise UserError(f"`threshold` is a cosine, in [-1, 1]; got {self.threshold}")
        if self.bootstrap < 100:
            raise UserError(
                f"`bootstrap` must be at least 100 resamples for a 95% interval, got "
                f"{self.bootstrap}"
            )


def run(ctx: EvalContext) -> EvalResult:
    from types import SimpleNamespace

    from saelab.evaluation.stability.measure import seed_stability
    from saelab.evaluation.stability.twins import find_twins
    from saelab.sae.checkpoint import load_sae

    s: StabilitySettings = ctx.settings
    folder = ctx.sae_folder
    if folder is None:
        raise UserError(
            "the stability eval compares an SAE with its seed twins in its sweep folder; "
            "evaluate an SAE folder or a sweep folder (saelab eval --sae FOLDER)"
        )
    found = find_twins(folder)
    if not found.twins:
        if found.sweep_has_twins:  # a sweep with seed twins for other configs: skip this one
            raise EvalSkipped(found.missing())
        raise UserError(found.missing())
    mine = SimpleNamespace(W_dec=ctx.sae.W_dec.detach().float().cpu())
    twins = [SimpleNamespace(W_dec=load_sae(t).W_dec.detach().float()) for t in found.twins]
    stability = seed_stability(mine, twins, s.threshold)
    conventions = {
        "threshold": s.threshold,
        "seed": found.seed,
        "twins": [t.name for t in found.twins],
        "twin_seeds": found.twin_seeds,
        "matching": "one-to-one Hungarian matching of decoder rows on cosine similarity "
        "(scipy linear_sum_assignment), per twin",
        "interval": f"95% percentile bootstrap over this SAE's latents ({s.bootstrap} "
        f"resamples, seed {s.seed}; a latent's matches with every twin resampled together): "
        "it covers which latents were drawn, not the seed-to-seed spread, which "
        "shared_fraction_min/max show",
        "bootstrap": s.bootstrap,
    }
    return EvalResult(
        stability.metrics(),
        0,
        conventions,
        latent_metrics={"matched_cosine": stability.cosines.mean(axis=0)},
        intervals=stability.intervals(s.bootstrap, s.seed),
    )


_H = "higher"
METRICS = (
    Metric("shared_fraction", "share of latents matched to a seed twin with decoder cosine >= the threshold (0.7), averaged over twins (Hungarian matching)", _H),
    Metric("mean_matched_cosine", "mean decoder cosine of the one-to-one matched latent pairs, over twins and latents", _H),
    Metric("n_twins", "seed twins compared: SAEs of the same sweep folder whose config differs only in seed", None),
    Metric("shared_fraction_min", "lowest shared fraction over the seed twins", _H),
    Metric("shared_fraction_max", "highest shared fraction over the seed twins", _H),
    Metric("matched_cosine", "decoder cosine of the latent with its matched partner, averaged over seed twins", _H, per_latent=True),
)  # fmt: skip

SPEC = EvalSpec(
    "stability",
    "share of latents shared with seed twins (Hungarian matching of decoders, cosine >= threshold)",
    run,
    METRICS,
    StabilitySettings,
)
