"""Steering benchmark: the cost of steering hooks on KV-cached generation, the intervention
scorer's throughput against a fake endpoint, and feature steering beside DiffMean at matched KL.

    python benchmarks/steering.py                   # ~5 minutes on 2 busy CPU cores

A small real SAE (TopK) is trained on a small harvest of the embedded model and evaluated
(features eval) into a temporary results file. Then:
- generation tokens/s with the KV cache on, unsteered vs steered (add on generated positions,
  and a clamp through the SAE), interleaved repeats, medians; target: hooks cost <= 10%;
- `saelab explain --scorers intervention` (baseline explainer) on a few latents against the
  200 ms fake endpoint: latents/min (the model work, bisection and generation, dominates);
- for a handful of latents: feature steering at a target KL beside DiffMean matched to the same
  KL (concept strength = logit lift of the latent's top logit tokens on neutral text).
Results are printed and saved as JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.autointerp import start_fake  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from saelab import resultstore as results  # noqa: E402

HOOK = "blocks.6.hook_resid_post"


def build(tmp: Path, model, tokens: int, d_sae: int) -> tuple[str, str, str]:
    from saelab.activations.harvest import HarvestConfig, harvest
    from saelab.cli import main

    store, sae, db = str(tmp / "acts.zarr"), str(tmp / "sae"), str(tmp / "results.duckdb")
    harvest(HarvestConfig(out=store, hooks=[HOOK], tokens=tokens, seq_len=64, progress=False),
            model=model)  # fmt: skip
    assert main(["train", "--acts", store, "--hook", HOOK, "--arch", "topk", "--d-sae",
                 str(d_sae), "--k", "16", "--out", sae, "--no-progress"]) == 0  # fmt: skip
    assert main(["eval", "--sae", sae, "--acts", store, "--db", db, "--evals", "features"]) == 0
    (row,) = results.list_saes(results.ResultsStore(db))
    return db, sae, row.sae_id


def live_latents(db: str, sae_id: str, n: int) -> list[int]:
    with results.ResultsStore(db).reading() as con:
        rows = con.execute(
            "SELECT feature FROM features WHERE sae_id = ? AND NOT too_few_examples "
            "AND density BETWEEN 0.002 AND 0.2 ORDER BY max_act DESC LIMIT ?",
            [sae_id, n],
        ).fetchall()
    return [r[0] for r in rows]


def generation_speed(model, db, sae_id, feature, new_tokens: int, repeats: int) -> dict:
    from saelab.steering.generate import Sampling, generate
    from saelab.steering.harness import Harness
    from saelab.steering.interventions import hooked
    from saelab.steering.target import resolve

    target = resolve(results.ResultsStore(db), sae_id, model=model)
    h = Harness(target, [feature], ["The"], ["A plain sentence about the weather today."],
                Sampling(max_new_tokens=1), 1, "generated", explanation="")  # fmt: skip
    ids = h.encode("In the morning the market opened and")
    cfg = Sampling(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    setups = {
        "unsteered": None,
        "add": h.steering(h.feature_edits("add", 2.0, "max_act", "zero")),
        "clamp": h.steering(h.feature_edits("clamp", 2.0, "max_act", "zero")),
    }
    times: dict[str, list[float]] = {k: [] for k in setups}
    generate(model.bridge, ids, Sampling(max_new_tokens=4), None, 4)  # warm-up
    for _ in range(repeats):
        for name, steering in setups.items():
            start = time.perf_counter()
            if steering is None:
                generate(model.bridge, ids, cfg, None, 4)
            else:
                with hooked(steering):
                    generate(model.bridge, ids, cfg, steering, 4)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: 4 * new_tokens / v for k, v in med.items()}
    return {
        "batch": 4, "new_tokens": new_tokens, "repeats": repeats, "kv_cache": True,
        "tokens_per_s": tps,
        "overhead": {k: med[k] / med["unsteered"] - 1 for k in ("add", "clamp")},
    }  # fmt: skip


def scorer_speed(model, db, sae_id, latents: list[int], latency: float) -> dict:
    from saelab.autointerp.config import ExplainConfig, LLMConfig
    from saelab.autointerp.pipeline import explain_features
    from saelab.autointerp.scorers import intervention
    from saelab.steering.backend import InterventionBackend

    intervention.set_backend_factory(lambda d, s: InterventionBackend(d, s, model=model))
    fake, url = start_fake(latency)
    try:
        cfg = ExplainConfig(
            db=db, sae=sae_id, features=",".join(map(str, latents)), explainers=["baseline"],
            scorers=["intervention"], progress=False,
            llm=LLMConfig(base_url=url, model="fake-llm", concurrency=8),
        )  # fmt: skip
        summary = explain_features(cfg)
    finally:
        fake.terminate()
        intervention.set_backend_factory(None)
    return {
        "latents": len(latents), "latency_s": latency, "seconds": summary.seconds,
        "requests": summary.usage.requests,
        "latents_per_min": len(latents) / summary.seconds * 60,
    }  # fmt: skip


def comparison(model, db, sae_id, latents: list[int], target_kl: float) -> list[dict]:
    from saelab.steering.generate import Sampling
    from saelab.steering.run import SteerConfig, steer

    out = []
    for f in latents:
        cfg = SteerConfig(db=db, sae=sae_id, features=[f], target_kl=target_kl, store=True,
                          sampling=Sampling(max_new_tokens=16, seed=0), n_samples=2)  # fmt: skip
        runs = {r.method: r for r in steer(cfg, model=model).runs}
        out.append(
            {
                "feature": f,
                **{
                    f"{m}_{k}": getattr(runs[m], k)
                    for m in ("sae", "diffmean", "none")
                    for k in ("strength", "kl", "concept", "feature_act", "perplexity")
                },
            }  # fmt: skip
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="harvest size for the SAE")
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scorer-latents", type=int, default=4)
    p.add_argument("--compare-latents", type=int, default=5)
    p.add_argument("--target-kl", type=float, default=0.5)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/steering-cpu.json"))
    args = p.parse_args()
    from saelab.activations.models import load_model

    model = load_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        db, _, sae_id = build(Path(tmp), model, args.tokens, args.d_sae)
        chosen = live_latents(db, sae_id, max(args.scorer_latents, args.compare_latents))
        speed = generation_speed(model, db, sae_id, chosen[0], args.new_tokens, args.repeats)
        print(json.dumps(speed), flush=True)
        scorer = scorer_speed(model, db, sae_id, chosen[: args.scorer_latents], args.latency)
        print(json.dumps(scorer), flush=True)
        compared = comparison(model, db, sae_id, chosen[: args.compare_latents], args.target_kl)
    result = {
        "benchmark": "steering",
        "machine": machine_info(),
        "config": {**vars(args), "hook": HOOK, "torch_threads": torch.get_num_threads()},
        "generation": speed,
        "intervention_scorer": scorer,
        "feature_vs_diffmean": compared,
        "checks": {f"{k}_overhead_le_0.10": v <= 0.10 for k, v in speed["overhead"].items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
