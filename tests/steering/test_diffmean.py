"""The DiffMean vector from stored windows (batched, the forward stopped after the hook's block)
against the same mean difference computed here from one full forward per window."""

from __future__ import annotations

import torch

from saelab.steering.diffmean import diffmean_from_windows

HOOK = "blocks.2.hook_resid_post"  # the steering fixtures' SAE reads it (conftest)


def test_windows_batched_and_stopped_match_full_forwards(steer_db_master, live_features, model):
    from saelab import resultstore as results

    db, _, sae_id = steer_db_master
    rows = results.feature_examples(results.ResultsStore(db), sae_id, live_features[:1])
    windows = [r for r in rows if r.kind == "top"][:3] + [
        r for r in rows if r.kind == "nonactivating"
    ][:3]
    bos = model.tokenizer.bos_token_id
    if bos is None:
        bos = model.tokenizer.eos_token_id
    fired, silent = [], []
    for w in windows:
        _, cache = model.bridge.run_with_cache(
            torch.tensor([[bos] + list(w.tokens)]), names_filter=[HOOK]
        )
        h = cache[HOOK][0, 1:].double()
        active = torch.tensor(w.acts) > 0
        fired.append(h[active])
        silent.append(h[~active])
    expected = torch.cat(fired).mean(0) - torch.cat(silent).mean(0)
    got = diffmean_from_windows(model.bridge, HOOK, windows, bos)
    assert torch.cat(fired).shape[0] > 0 and torch.cat(silent).shape[0] > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
