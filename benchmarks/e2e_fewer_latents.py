"""e2e-KL: does end-to-end fine-tuning buy the same CE with fewer latents?

Braun et al. 2024 ("Identifying Functionally Important Features with End-to-End Sparse
Dictionary Learning") report that an SAE trained on the model's output distribution (KL between
clean and spliced next-token predictions) needs fewer active latents than a local (MSE) SAE for
the same increase in CE loss. This benchmark asks it of the variant benchmark's TopK SAEs:

1. the local TopK SAE at `--k` (trained by `benchmarks/variants.py`, 2M tokens of MSE) is
   fine-tuned end to end with KL (`saelab.sae.e2e`, its k unchanged) for `--tokens` tokens;
2. the fine-tuned SAE and every local TopK SAE of the given sweeps (one per L0) are evaluated
   together (core on the same held-out tokens, spliced loss on the same sequences);
3. the local Δloss is interpolated over L0 (linear in log L0 and log Δloss between neighbouring
   local points) to find the L0 a local SAE needs for the e2e SAE's Δloss: "local L0 for the
   same CE" over the e2e SAE's L0 is the latents saved (> 1: the claim reproduces).

    python benchmarks/e2e_fewer_latents.py --acts W/acts.zarr \
        --sweeps W/l16/sweep W/l32/sweep W/l64/sweep --k 32 --tokens 65536 --work W/e2e
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    """One e2e-vs-local comparison."""

    acts: str
    """The variant benchmark's activation store (its test split is the evaluation's)."""
    sweeps: list[str]
    """Sweep folders of the variant benchmark holding `topk-L0_<k>` checkpoints."""
    work: str
    """A new folder: copies of the local SAEs, the e2e checkpoint and the results file."""
    k: int = 32
    """The local TopK SAE to fine-tune (`topk-L0_<k>`)."""
    tokens: int = 65536
    """Fine-tuning tokens."""
    batch_size: int = 2048
    """Tokens per fine-tuning step."""
    lr: float = 1e-4
    """Adam learning rate of the fine-tuning (the e2e default)."""
    max_eval_tokens: int = 100_000
    """Held-out tokens of the core eval (the variant benchmark's)."""
    loss_sequences: int = 32
    """Sequences of the spliced-loss eval (the variant benchmark's)."""
    out: str = str(RESULTS / "e2e-fewer-latents-cpu.json")
    """The JSON result."""


def find_local(sweeps: list[str]) -> dict[int, str]:
    """Every `topk-L0_<n>` folder of the sweeps, by n."""
    found: dict[int, str] = {}
    for sweep in sweeps:
        for folder in sorted(Path(sweep).glob("topk-L0_*")):
            tail = folder.name.removeprefix("topk-L0_")
            if tail.isdigit() and (folder / "cfg.json").is_file():
                if int(tail) in found:
                    raise SystemExit(f"topk-L0_{tail} is in two of the sweeps given")
                found[int(tail)] = str(folder)
    return found


def local_l0_for(delta_loss: float, curve: list[tuple[float, float]]) -> float | None:
    """The L0 at which the local (L0, Δloss) curve reaches `delta_loss`, interpolated linearly
    in (log L0, log Δloss) between the neighbouring points; None outside the curve."""
    pts = sorted(curve)
    for (l0_a, d_a), (l0_b, d_b) in zip(pts, pts[1:]):
        lo, hi = sorted((d_a, d_b))
        if lo <= delta_loss <= hi and d_a != d_b:
            t = (math.log(delta_loss) - math.log(d_a)) / (math.log(d_b) - math.log(d_a))
            return math.exp(math.log(l0_a) + t * (math.log(l0_b) - math.log(l0_a)))
    return None


def run(cfg: Config) -> dict:
    import saelab
    from saelab.activations.models import load_model
    from saelab.sae.config import TrainConfig
    from saelab.sae.e2e import E2EConfig, E2ETrainer

    local = find_local(cfg.sweeps)
    if cfg.k not in local:
        raise SystemExit(f"no topk-L0_{cfg.k} in {cfg.sweeps}; run benchmarks/variants.py first")
    work = Path(cfg.work)
    saes = work / "saes"
    saes.mkdir(parents=True, exist_ok=True)
    for l0, folder in local.items():
        if not (saes / f"local-topk-L0_{l0}").exists():
            shutil.copytree(folder, saes / f"local-topk-L0_{l0}")
    model = load_model("smollm2-135m")
    e2e_name = f"e2e-topk-L0_{cfg.k}"
    t0 = time.perf_counter()
    if not (saes / e2e_name / "cfg.json").is_file():
        E2ETrainer(
            E2EConfig(sae=local[cfg.k], mode="kl", lr=cfg.lr),
            cfg.acts,
            TrainConfig(tokens=cfg.tokens, progress=True),
            str(saes / e2e_name),
            tokens=cfg.tokens,
            batch_size=cfg.batch_size,
            model=model,
        ).run()
    e2e_seconds = time.perf_counter() - t0
    db = work / "results.duckdb"
    t0 = time.perf_counter()
    saelab.evaluate(
        saelab.EvalConfig(
            sae=str(saes),
            acts=cfg.acts,
            db=str(db),
            evals=["core", "loss"],
            settings={
                "core": {"max_tokens": cfg.max_eval_tokens},
                "loss": {"sequences": cfg.loss_sequences},
            },
        ),
        model=model,
    )
    eval_seconds = time.perf_counter() - t0
    metrics = saelab.open_results(str(db)).metrics()
    rows = {
        r["name"]: {k: float(r[k]) for k in ("l0", "fvu", "delta_loss", "ce_loss_score")}
        for _, r in metrics.iterrows()
    }
    return {
        "benchmark": "e2e_fewer_latents",
        "machine": machine_info(),
        "command": " ".join(sys.argv),
        "config": asdict(cfg),
        "local_checkpoints": {str(k): v for k, v in sorted(local.items())},
        "e2e_seconds": e2e_seconds,
        "eval_seconds": eval_seconds,
        "rows": rows,
        "claim": claim(rows, cfg.k),
    }


def claim(rows: dict[str, dict[str, float]], k: int) -> dict[str, Any]:
    """The claim from the evaluated rows: the e2e SAE at k against the local curve. It
    reproduces when the e2e SAE's Δloss is below the local SAE's at the same k (so a local SAE
    needs more latents for it); `latents_saved` is read off the curve where it reaches."""
    e2e, local_same = rows[f"e2e-topk-L0_{k}"], rows[f"local-topk-L0_{k}"]
    curve = [(v["l0"], v["delta_loss"]) for n, v in rows.items() if n.startswith("local-")]
    needed = local_l0_for(e2e["delta_loss"], curve)
    return {
        "e2e_l0": e2e["l0"],
        "e2e_delta_loss": e2e["delta_loss"],
        "local_delta_loss_same_k": local_same["delta_loss"],
        "local_l0_for_e2e_delta_loss": needed,
        "latents_saved": None if needed is None else needed / e2e["l0"],
        "reproduces": e2e["delta_loss"] < local_same["delta_loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--acts", required=True)
    p.add_argument("--sweeps", nargs="+", required=True)
    p.add_argument("--work", required=True)
    d = Config(acts="", sweeps=[], work="")
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-eval-tokens", type=int, default=d.max_eval_tokens)
    p.add_argument("--loss-sequences", type=int, default=d.loss_sequences)
    p.add_argument("--out", default=d.out)
    a = p.parse_args()
    cfg = Config(
        acts=a.acts, sweeps=a.sweeps, work=a.work, k=a.k, tokens=a.tokens,
        batch_size=a.batch_size, lr=a.lr, max_eval_tokens=a.max_eval_tokens,
        loss_sequences=a.loss_sequences, out=a.out,
    )  # fmt: skip
    result = run(cfg)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["claim"], indent=1))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
