"""`saelab harvest`: run a model over a corpus and store hook activations."""

from __future__ import annotations

import argparse

from saelab.commands.numbers import count
from saelab_base.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from activations.corpus import BOS_POLICIES
    from activations.harvest import NONFINITE_POLICIES, HarvestConfig
    from activations.store import STORAGE_DTYPES

    d = HarvestConfig(out="")
    p = sub.add_parser("harvest", help="harvest model activations into a zarr store")
    p.add_argument(
        "--out",
        required=True,
        help="store path or fsspec URL (e.g. runs/acts.zarr, s3://b/acts.zarr)",
    )
    p.add_argument("--model", default=d.model, help=f"model spec (default {d.model})")
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="builtin[:wikipedia|:news], a local file/folder, or a datasets name[:split]",
    )
    p.add_argument("--hooks", nargs="+", default=d.hooks, help="transformer-lens hook names")
    p.add_argument("--tokens", type=count, default=d.tokens, help="tokens to harvest (2e5 works)")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--bos", choices=BOS_POLICIES, default=d.bos)
    p.add_argument("--dtype", choices=list(STORAGE_DTYPES), default=d.dtype)
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="sequences per forward pass"
    )
    p.add_argument("--chunk-seqs", type=int, default=d.chunk_seqs, help="sequences per zarr chunk")
    p.add_argument("--split", default=d.split)
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--shard", default="0/1", help="i/n: fill the i-th of n disjoint ranges")
    p.add_argument("--nonfinite", choices=NONFINITE_POLICIES, default=d.nonfinite)
    p.add_argument("--resume", action="store_true", help="continue an interrupted store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    return i, n


def run(args: argparse.Namespace) -> int:
    from activations.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        out=args.out,
        model=args.model,
        dataset=args.dataset,
        hooks=list(args.hooks),
        tokens=args.tokens,
        seq_len=args.seq_len,
        bos=args.bos,
        dtype=args.dtype,
        batch_size=args.batch_size,
        chunk_seqs=args.chunk_seqs,
        split=args.split,
        text_column=args.text_column,
        shard=parse_shard(args.shard),
        nonfinite=args.nonfinite,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.no_progress,
    )
    result = harvest(cfg)
    state = "complete" if result.complete else "partial (other shards pending)"
    print(
        f"saelab harvest: wrote {result.tokens} tokens in {result.seconds:.1f}s "
        f"({result.tokens_per_second:.0f} tok/s) to {result.out} [{state}]"
    )
    if result.nonfinite_sequences:
        print(
            f"saelab harvest: {result.nonfinite_sequences} sequences had NaN/inf activations ({cfg.nonfinite})"
        )
    return 0
