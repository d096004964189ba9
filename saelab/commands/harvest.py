"""`saelab harvest`: run a model over a corpus and store hook activations."""

from __future__ import annotations

import argparse

from saelab.base.errors import UserError
from saelab.commands.flags import add_fields, given

HELP = "harvest model activations into a zarr store"


def ON_INTERRUPT(args: argparse.Namespace) -> str:
    try:
        from saelab.activations.store import ActivationStore

        committed = ActivationStore(args.out).committed_sequences()
    except Exception:  # no store yet, or one being created
        committed = 0
    if not committed:
        return "no chunk was committed yet"
    return (
        f"the {committed:,} sequences committed so far are kept; rerun the same command with "
        "--resume to continue where it stopped"
    )


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.activations.corpus import BOS_POLICIES
    from saelab.activations.harvest import NONFINITE_POLICIES, HarvestConfig
    from saelab.activations.store import STORAGE_DTYPES

    flags = add_fields(
        p, HarvestConfig, skip=("shard",), required=("out",),
        choices={"bos": BOS_POLICIES, "dtype": list(STORAGE_DTYPES), "nonfinite": NONFINITE_POLICIES},
        helps={"tokens": "tokens to harvest (2e5 works)", "batch_size": "sequences per forward pass"},
    )  # fmt: skip
    p.add_argument("--shard", default="0/1", help="i/n: fill the i-th of n disjoint ranges")
    p.set_defaults(flags=flags)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    return i, n


def run(args: argparse.Namespace) -> int:
    from saelab.activations.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(**given(args, args.flags), shard=parse_shard(args.shard))
    result = harvest(cfg)
    state = "complete" if result.complete else "partial (other shards pending)"
    print(
        f"saelab harvest: wrote {result.tokens} tokens in {result.seconds:.1f}s "
        f"({result.tokens_per_second:.0f} tok/s) to {result.out} [{state}]"
    )
    if result.nonfinite_sequences:
        print(
            f"saelab harvest: {result.nonfinite_sequences} sequences had NaN/inf activations "
            f"({cfg.nonfinite})"
        )
    return 0
