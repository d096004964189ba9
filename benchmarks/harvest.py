"""Harvest and loader throughput.

1. Harvest throughput as a ratio to the bare model forward on the same batches: the bare
   forward runs the bridge to the same `stop_at_layer` with no hooks and stores nothing; the
   harvest does everything (tokenising, hooks, casting, compressing, writing, committing).
   Target: ratio >= 0.9.
2. Loader throughput in activations/s (shuffled float32 [4096, d] batches from the store),
   against what a TopK SAE training step consumes at d_sae 18432, k 64 on the same machine,
   measured in the same run. Target: loader >= 3x training.

    python benchmarks/harvest.py [--tokens 65536] [--out benchmarks/results/harvest-cpu.json]
    python benchmarks/harvest.py --device cuda --batch-size 64 --tokens 131072 \
        --model <HF folder> --dataset <text folder>     # GPU (benchmarks/gpu_suite.sh)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

from benchmarks.machine import machine_info  # noqa: E402
from saelab.activations.corpus import iter_sequences, load_corpus  # noqa: E402
from saelab.activations.harvest import HarvestConfig, harvest  # noqa: E402
from saelab.activations.loader import ActivationLoader  # noqa: E402
from saelab.activations.models import load_model  # noqa: E402


def bare_forward_seconds(model, cfg: HarvestConfig) -> float:
    """Time the model alone on exactly the batches the harvest will run."""
    n_seq = -(-cfg.tokens // cfg.seq_len)
    stream = iter_sequences(load_corpus(cfg.dataset), model.tokenizer, cfg.seq_len, cfg.bos)
    tokens = np.stack([s.tokens for s in itertools.islice(stream, n_seq)])
    stop = model.stop_layer(cfg.hooks)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(tokens), cfg.batch_size):
            batch = torch.from_numpy(tokens[start : start + cfg.batch_size]).long().to(cfg.device)
            model.bridge(batch, stop_at_layer=stop)
    _sync(cfg.device)
    return time.perf_counter() - t0


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def harvest_seconds(model, cfg: HarvestConfig) -> float:
    t0 = time.perf_counter()
    harvest(cfg, model=model)
    return time.perf_counter() - t0


def loader_rate(store: str, hook: str, batch_size: int, min_seconds: float = 5.0) -> float:
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        for batch in ActivationLoader(store, hook, batch_size=batch_size, seed=rows):
            rows += len(batch)
    return rows / (time.perf_counter() - t0)


def training_rate(
    d_in: int,
    batch_size: int,
    steps: int = 4,
    d_sae: int = 18432,
    k: int = 64,
    device: str = "cpu",
) -> dict:
    """Tokens/s a TopK SAE (AuxK on) consumes in training, on the same machine and device."""
    from saelab.sae import StepContext, build_sae, make_config

    sae = build_sae(make_config("topk", d_sae=d_sae, k=k), d_in=d_in).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch_size, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[::8] = True  # AuxK has dead latents to work with

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = sae.training_forward(x, StepContext(dead_mask=dead))
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    rate = steps * batch_size / (time.perf_counter() - t0)
    return {
        "tokens_per_s": rate,
        "config": {
            "arch": "topk",
            "d_sae": d_sae,
            "k": k,
            "aux_k": True,
            "batch": batch_size,
            "steps": steps,
            "device": device,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--hook", default="blocks.8.hook_resid_post")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; the best of each is kept"
    )
    parser.add_argument("--loader-batch", type=int, default=4096)
    parser.add_argument("--model", default="smollm2-135m", help="model spec (load_model's)")
    parser.add_argument("--dataset", default="builtin", help="corpus spec (load_corpus's)")
    parser.add_argument("--device", default="cpu", help="torch device for the model and the SAE")
    parser.add_argument("--train-d-sae", type=int, default=18432)
    parser.add_argument("--train-k", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--loader-seconds", type=float, default=5.0)
    parser.add_argument("--out", default="benchmarks/results/harvest-cpu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model = load_model(args.model, device=args.device)
    tmp = tempfile.mkdtemp(prefix="saelab-bench-")
    cfg = HarvestConfig(
        out=f"{tmp}/acts.zarr",
        model=args.model,
        dataset=args.dataset,
        device=args.device,
        hooks=[args.hook],
        tokens=args.tokens,
        batch_size=args.batch_size,
        progress=False,
        overwrite=True,
    )
    warm = HarvestConfig(
        out="", model=args.model, dataset=args.dataset, device=args.device, hooks=[args.hook]
    )
    bare_forward_seconds(model, replace(warm, tokens=2048, batch_size=args.batch_size))
    bare, full = [], []
    for _ in range(args.rounds):
        bare.append(bare_forward_seconds(model, cfg))
        full.append(harvest_seconds(model, cfg))
    tokens = -(-args.tokens // cfg.seq_len) * cfg.seq_len
    loader = loader_rate(cfg.out, args.hook, args.loader_batch, args.loader_seconds)
    train = training_rate(
        model.d_model,
        args.loader_batch,
        steps=args.train_steps,
        d_sae=args.train_d_sae,
        k=args.train_k,
        device=args.device,
    )
    result = {
        "benchmark": "harvest",
        "machine": machine_info(),
        "config": {
            "model": cfg.model,
            "model_name": model.name,
            "dataset": args.dataset,
            "device": args.device,
            "hook": args.hook,
            "tokens": tokens,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "chunk_seqs": cfg.chunk_seqs,
            "dtype": cfg.dtype,
            "rounds": args.rounds,
            "loader_batch": args.loader_batch,
        },
        "bare_forward_tokens_per_s": tokens / min(bare),
        "harvest_tokens_per_s": tokens / min(full),
        "harvest_over_bare": min(bare) / min(full),
        "harvest_target": 0.9,
        "loader_activations_per_s": loader,
        "training_consumption": train,
        "loader_over_training": loader / train["tokens_per_s"]
        if train.get("tokens_per_s")
        else None,
        "loader_target": 3.0,
        "raw_seconds": {"bare": bare, "harvest": full},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
