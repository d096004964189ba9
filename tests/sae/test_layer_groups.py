"""Layer groups (Group-SAE): the similarity, the grouping, the multi-hook loader, and
`saelab train --layer-groups` → `saelab eval --hook` on a synthetic multi-layer store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from saelab.activations.loader import MultiHookLoader
from saelab.activations.store import ActivationStore, create, to_storage
from saelab.base.errors import UserError
from saelab.sae.layer_groups import (
    amad,
    angular_similarity_matrix,
    check_layer_hooks,
    contiguous_groups,
)

D, SEQ, CHUNK = 16, 8, 4
BLOCKS = [[0, 1, 2], [3, 4]]
"""The synthetic store's layers: each block shares one sparse signal per token."""
ATOMS, ACTIVE = 24, 3
"""Each block's signal: ACTIVE of its ATOMS random unit directions, coefficients in [1, 2]."""
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(5)]


def synthetic_store(path, n_seq: int = 24, seed: int = 0) -> str:
    """A float32 store of 5 `blocks.L.hook_resid_post` hooks, no BOS: the layers of a block
    are one shared sparse signal per token plus small layer noise, scaled by depth."""
    g = torch.Generator().manual_seed(seed)
    attrs = {"seq_len": SEQ, "dtype": "float32", "bos": "none", "bos_token_id": None,
             "special_token_ids": [], "model": "synthetic", "requested_sequences": n_seq}  # fmt: skip
    url = str(path)
    group = create(url, attrs, {h: D for h in HOOKS}, n_seq, CHUNK, 1)
    group["tokens"][:] = torch.randint(5, 100, (n_seq, SEQ), generator=g).int().numpy()
    group["valid"][:] = np.ones(n_seq, dtype=bool)
    for block in BLOCKS:
        atoms = torch.nn.functional.normalize(torch.randn(ATOMS, D, generator=g), dim=1)
        picked = torch.rand(n_seq * SEQ, ATOMS, generator=g).argsort(1)[:, :ACTIVE]
        coef = torch.zeros(n_seq * SEQ, ATOMS).scatter_(
            1, picked, 1 + torch.rand(n_seq * SEQ, ACTIVE, generator=g)
        )
        signal = (coef @ atoms).reshape(n_seq, SEQ, D)
        for layer in block:
            acts = (1 + 0.5 * layer) * (signal + 0.1 * torch.randn(n_seq, SEQ, D, generator=g))
            group[f"hooks/{HOOKS[layer]}"][:] = to_storage(acts, "float32")
    group["progress"][:] = np.array([math.ceil(n_seq / CHUNK)])
    group.attrs.update({"committed_sequences": n_seq, "complete": True})
    return url


def angular_reference(acts: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 - angle/pi, one pair of layers and one token at a time, float64."""
    n_layers, n_tokens, _ = acts.shape
    x = acts.double()
    out = torch.empty(n_layers, n_layers, dtype=torch.float64)
    for i in range(n_layers):
        for j in range(n_layers):
            angles = []
            for t in range(n_tokens):
                a, b = x[i, t], x[j, t]
                c = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
                angles.append(math.acos(max(-1.0, min(1.0, c))))
            out[i, j] = 1 - sum(angles) / len(angles) / math.pi
    return out


def test_angular_similarity_matches_a_float64_reference():
    acts = torch.randn(4, 30, 12, generator=torch.Generator().manual_seed(1))
    acts[1] = acts[0] + 0.2 * acts[1]  # one close pair, so not every value is near 0.5
    acts[3] = -acts[2]  # opposite directions: similarity 0
    got = angular_similarity_matrix(acts, token_block=7)
    ref = angular_reference(acts)
    ref.fill_diagonal_(1.0)
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=0)
    assert abs(float(got[2, 3])) < 1e-3 and float(got[0, 1]) > 0.9


def test_grouping_on_a_hand_built_distance_matrix():
    # Layers at points 0, 1, 2, 10, 11 of a line, distance |p_i - p_j| / 11. Worked by hand:
    # complete linkage merges (0,1) [1, the lower of three ties], then (3,4) [1 < max(2,1)],
    # then (0,1)+(2) [2 < max(8,9)]; single linkage takes (0,1)+(2) second [min(2,1) = 1,
    # tied with (3,4), the lower wins].
    p = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0], dtype=torch.float64)
    d = (p[:, None] - p[None, :]).abs() / 11
    assert contiguous_groups(d, 4) == [[0, 1], [2], [3], [4]]
    assert contiguous_groups(d, 3) == [[0, 1], [2], [3, 4]]
    assert contiguous_groups(d, 2) == [[0, 1, 2], [3, 4]]
    assert contiguous_groups(d, 1) == [[0, 1, 2, 3, 4]]
    assert contiguous_groups(d, 5) == [[0], [1], [2], [3], [4]]
    assert contiguous_groups(d, 3, linkage="single") == [[0, 1, 2], [3], [4]]
    assert amad(d, [[0, 1, 2], [3, 4]]) == pytest.approx((2 / 11 + 1 / 11) / 2)
    assert amad(d, [[0], [1, 2, 3]]) == pytest.approx((0 + 9 / 11) / 2)
    with pytest.raises(UserError, match="between 1 and 5"):
        contiguous_groups(d, 6)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"], "consecutive layers"),
        (["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"], "consecutive layers"),
        (["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], "one hook point"),
        (["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.x"], "not in the"),
        (["embed", "blocks.0.hook_resid_post"], "blocks.<layer>.<point>"),
    ],
)
def test_refuses_non_contiguous_or_unknown_hooks(hooks, message):
    with pytest.raises(UserError, match=message) as err:
        check_layer_hooks(hooks, [*HOOKS, "blocks.1.hook_mlp_out", "embed"])
    assert "\n" not in str(err.value)


def test_multi_hook_loader_yields_every_layers_rows_once_per_epoch(tmp_path):
    url = synthetic_store(tmp_path / "s.zarr")
    store = ActivationStore(url)
    hooks = HOOKS[1:4]
    loader = MultiHookLoader(url, hooks, batch_size=40, seed=2, shuffle_chunks=2, drop_last=False)
    got = torch.cat(list(loader))
    ref = torch.cat(
        [store.read_acts(h, c).reshape(-1, D) for h in hooks for c in store.committed_chunks()]
    )
    assert loader.tokens_per_epoch == len(ref) == 3 * 24 * SEQ
    key = torch.randn(D, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got[torch.argsort(got @ key)], ref[torch.argsort(ref @ key)])
    first = next(iter(MultiHookLoader(url, hooks, batch_size=64, seed=2, shuffle_chunks=4)))
    norms = first.norm(dim=1)  # the layers' scales differ (1.5, 2, 2.5): a batch mixes them
    assert norms.min() < 0.8 * norms.max()
    # exact resume mid-epoch, as the single-hook loader
    full = list(MultiHookLoader(url, hooks, batch_size=40, seed=2, shuffle_chunks=2, epochs=2))
    loader = MultiHookLoader(url, hooks, batch_size=40, seed=2, shuffle_chunks=2, epochs=2)
    head = [b for _, b in zip(range(5), loader, strict=False)]
    resumed = MultiHookLoader(url, hooks, batch_size=40, seed=2, shuffle_chunks=2, epochs=2)
    resumed.load_state_dict(loader.state_dict())
    torch.testing.assert_close(torch.cat(head + list(resumed)), torch.cat(full), atol=0, rtol=0)


def test_train_layer_groups_then_eval_each_layer(tmp_path):
    from saelab import resultstore as results
    from saelab.cli import main
    from saelab.evaluation.runner import EvalConfig, evaluate
    from saelab.sae import load_sae

    url = synthetic_store(tmp_path / "s.zarr", n_seq=40)
    out = tmp_path / "groups"
    rc = main(
        ["train", "--acts", url, "--hooks", ",".join(HOOKS), "--layer-groups", "2",
         "--arch", "topk", "--d-sae", "32", "--k", "4", "--batch-size", "64", "--tokens", "768",
         "--lr", "1e-2", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    saved = json.loads((out / "layer_groups.json").read_text())
    assert saved["groups"] == [HOOKS[:3], HOOKS[3:]]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["layers-0-2", "layers-3-4"]
    cfg = json.loads((out / "layers-3-4" / "cfg.json").read_text())
    assert cfg["hook_name"] == HOOKS[3]
    assert cfg["saelab"]["provenance"]["layer_group"]["hooks"] == HOOKS[3:]
    assert cfg["saelab"]["trained_tokens"] == 768
    sae = load_sae(out / "layers-3-4").requires_grad_(False)
    store = ActivationStore(url)
    x = store.read_acts(HOOKS[4], store.committed_chunks()[-1]).reshape(-1, D).float()
    fvu = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(fvu) < 0.5  # a raw-scale layer of the group is reconstructed (scale folded)

    db = str(tmp_path / "r.duckdb")
    metrics = {}
    for hook in HOOKS[3:]:
        got = evaluate(
            EvalConfig(sae=str(out / "layers-3-4"), acts=url, db=db, evals=["core"], hook=hook),
            log=lambda *_: None,
        )
        metrics[hook] = got["layers-3-4"]["core"]
    assert all(0 <= m["fvu"] < 0.5 for m in metrics.values())
    rows = results.list_saes(results.ResultsStore(db))
    assert sorted(r.hook for r in rows) == HOOKS[3:]  # one row per layer, not overwritten
    with pytest.raises(UserError, match="layer group"):
        evaluate(EvalConfig(sae=str(out / "layers-3-4"), acts=url, db=db, evals=["core"],
                            hook=HOOKS[0]))  # fmt: skip
