"""CE/KL with MLPs replaced all at once: a cross-layer transcoder against per-layer
transcoders of the same layers (each fed, like the CLT, by its input in the same spliced pass).

    python -m benchmarks.clt_loss --clt CLT_DIR --per-layer TC_DIR... --acts STORE [--sequences 8]

Reads the store's held-out sequences (the loss eval's split and splice mask); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clt", required=True)
    parser.add_argument("--per-layer", nargs="+", required=True)
    parser.add_argument("--acts", required=True)
    parser.add_argument("--sequences", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from saelab.activations.loader import TEST_FRACTION, split_chunks
    from saelab.activations.models import load_model
    from saelab.activations.store import ActivationStore
    from saelab.evaluation.loss.splice import clt_loss_stats, spliced_loss_stats
    from saelab.sae.checkpoint import load_sae

    store = ActivationStore(args.acts)
    tokens, masks = [], []
    for c in split_chunks(store.committed_chunks(), "test", TEST_FRACTION):
        tokens.append(store.read_tokens(c))
        masks.append(store.token_mask(c))
        if sum(len(t) for t in tokens) >= args.sequences:
            break
    toks = torch.from_numpy(np.concatenate(tokens)[: args.sequences]).long()
    mask = torch.from_numpy(np.concatenate(masks)[: args.sequences])
    model = load_model(store.attrs["model"])
    clt = load_sae(args.clt).eval()
    tcs = [load_sae(folder).eval() for folder in args.per_layer]

    def per_layer_hooks(m):
        seen: dict[str, torch.Tensor] = {}
        hooks = []
        for tc in tcs:

            def read(act, hook=None, _tc=tc):
                seen[_tc.target_hook] = act
                return act

            def splice(act, hook=None, _tc=tc):
                out = act.clone()
                out[m] = _tc(seen.pop(_tc.target_hook)[m].float()).to(act.dtype)
                return out

            hooks += [(tc.input_hook, read), (tc.target_hook, splice)]
        return hooks

    with torch.no_grad():
        out = {
            "clt": clt_loss_stats(model.bridge, clt, toks, mask).metrics(),
            "per_layer": spliced_loss_stats(
                model.bridge, per_layer_hooks, [tc.target_hook for tc in tcs], toks, mask
            ).metrics(),
            "sequences": len(toks),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
