"""The training loader: masks, coverage, shuffling, exact resume, data-parallel split."""

from __future__ import annotations

import pytest
import torch

from saelab.activations.loader import ActivationLoader
from saelab.activations.store import ActivationStore
from saelab.base.errors import UserError

HOOK = "blocks.2.hook_resid_post"


def expected_rows(store_url: str) -> torch.Tensor:
    """Every row the loader should give in one epoch: non-BOS, non-special, float32."""
    store = ActivationStore(store_url)
    special = set(store.attrs["special_token_ids"]) | {store.attrs["bos_token_id"]}
    rows = []
    for c in store.committed_chunks():
        tokens = store.read_tokens(c)
        acts = store.read_acts(HOOK, c).float()
        for s in range(tokens.shape[0]):
            for p in range(1, tokens.shape[1]):
                if tokens[s, p] not in special:
                    rows.append(acts[s, p])
    return torch.stack(rows)


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order (lexicographic on a random projection, then first value)."""
    key = x.double() @ torch.randn(
        x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return x[torch.argsort(key)]


def test_one_epoch_covers_every_row_once(small_store):
    ref = expected_rows(small_store)
    loader = ActivationLoader(
        small_store, HOOK, batch_size=100, seed=3, drop_last=False, shuffle_chunks=2
    )
    batches = list(loader)
    assert all(b.shape == (100, 576) and b.dtype == torch.float32 for b in batches[:-1])
    got = torch.cat(batches)
    assert len(got) == len(ref) == loader.tokens_per_epoch
    torch.testing.assert_close(sort_rows(got), sort_rows(ref), atol=0, rtol=0)


def test_rows_are_shuffled_across_chunks(small_store):
    loader = ActivationLoader(small_store, HOOK, batch_size=256, seed=0, shuffle_chunks=3)
    store = ActivationStore(small_store)
    first = next(iter(loader))
    # which chunk each row of the first batch came from, by exact match
    chunks = {
        c: store.read_acts(HOOK, c).float().reshape(-1, 576) for c in store.committed_chunks()
    }
    sources = set()
    for row in first[:64]:
        for c, acts in chunks.items():
            if (acts == row).all(dim=1).any():
                sources.add(c)
                break
    assert len(sources) >= 2
    other_seed = next(
        iter(ActivationLoader(small_store, HOOK, batch_size=256, seed=1, shuffle_chunks=3))
    )
    assert not torch.equal(first, other_seed)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_is_exact(small_store, prefetch):
    kwargs = dict(batch_size=96, seed=11, epochs=2, shuffle_chunks=2, prefetch=prefetch)
    full = list(ActivationLoader(small_store, HOOK, **kwargs))
    for stop in (1, 7, len(full) // 2 + 1):
        loader = ActivationLoader(small_store, HOOK, **kwargs)
        head = []
        for batch in loader:
            head.append(batch)
            if len(head) == stop:
                break
        state = loader.state_dict()
        resumed = ActivationLoader(small_store, HOOK, **kwargs)
        resumed.load_state_dict(state)
        tail = list(resumed)
        assert len(head) + len(tail) == len(full)
        for a, b in zip(head + tail, full):
            assert torch.equal(a, b)


def test_data_parallel_ranks_split_the_stream(small_store):
    kwargs = dict(batch_size=64, seed=5, shuffle_chunks=2)
    single = list(ActivationLoader(small_store, HOOK, **kwargs))
    ranks = [
        list(ActivationLoader(small_store, HOOK, rank=r, world_size=2, **kwargs)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) // 2
    for i, (a, b) in enumerate(zip(*ranks)):
        assert torch.equal(a, single[2 * i]) and torch.equal(b, single[2 * i + 1])


def test_outlier_mask(small_store):
    plain = torch.cat(list(ActivationLoader(small_store, HOOK, batch_size=50, drop_last=False)))
    loader = ActivationLoader(small_store, HOOK, batch_size=50, outlier_factor=1.5, drop_last=False)
    kept = torch.cat(list(loader))
    assert len(kept) < len(plain)
    assert kept.norm(dim=1).max() <= loader.outlier_threshold
    assert loader.outlier_threshold == pytest.approx(
        1.5 * float(plain.norm(dim=1).median()), rel=0.3
    )


def test_bos_rows_are_excluded(small_store):
    store = ActivationStore(small_store)
    bos_acts = store.read_acts(HOOK, 0).float()[:, 0]  # BOS activations have a huge norm
    got = torch.cat(list(ActivationLoader(small_store, HOOK, batch_size=128, drop_last=False)))
    assert not any((got == row).all(dim=1).any() for row in bos_acts)


def test_bad_hook_and_state(small_store):
    with pytest.raises(UserError, match="not in store"):
        ActivationLoader(small_store, "blocks.9.hook_resid_post")
    a = ActivationLoader(small_store, HOOK, batch_size=64)
    b = ActivationLoader(small_store, HOOK, batch_size=32)
    with pytest.raises(UserError, match="another loader config"):
        b.load_state_dict(a.state_dict())
    assert a.d_in == 576


def test_train_and_test_splits_are_disjoint_and_cover(small_store):
    def chunks(split):
        return ActivationLoader(small_store, HOOK, batch_size=64, split=split).chunks

    assert chunks("test") == [5] and chunks("train") == [0, 1, 2, 3, 4]
    assert sorted(chunks("train") + chunks("test")) == chunks("all")
    with pytest.raises(UserError, match="unknown split"):
        chunks("valid")
