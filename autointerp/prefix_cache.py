"""The KV caches of recent requests, kept so that a request sharing a prompt prefix with one of
them (the system prompt and the explanation, as one latent's scoring requests do) computes only
the rest. A few entries, least recently used first out, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MIN_REUSE = 8
"""Fewest shared tokens worth a copy of their cache."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, entries: int = 4, max_bytes: int = 256 * 2**20) -> None:
        self.entries = entries
        """Most caches kept."""
        self.max_bytes = max_bytes
        """Most bytes all kept caches take together."""
        self._kept: OrderedDict[int, tuple[list[int], torch.Tensor]] = OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._kept)

    def longest(self, ids: list[int]) -> tuple[int, torch.Tensor | None]:
        """The longest prefix of `ids` (all but its last token) that an entry holds, and that
        entry's cache ([layers, 2, kv_heads, capacity, head_dim], its first positions valid);
        (0, None) below `MIN_REUSE` tokens."""
        best, cache, key = 0, None, None
        for k, (tokens, kv) in self._kept.items():
            n = common_prefix(tokens, ids[:-1])
            if n > best:
                best, cache, key = n, kv, k
        if best < MIN_REUSE:
            return 0, None
        self._kept.move_to_end(key)
        return best, cache

    def put(self, tokens: list[int], cache: torch.Tensor) -> None:
        """Keep `cache`, whose first len(tokens) positions hold `tokens`' keys and values."""
        if len(tokens) < MIN_REUSE or cache.nbytes > self.max_bytes:
            return
        for k, (kept, _) in list(self._kept.items()):  # an entry this one extends is redundant
            if len(kept) <= len(tokens) and tokens[: len(kept)] == kept:
                del self._kept[k]
        self._kept[self._next] = (list(tokens), cache)
        self._next += 1
        while len(self._kept) > self.entries or self.nbytes > self.max_bytes:
            self._kept.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(kv.nbytes for _, kv in self._kept.values())
