"""A resumable view of any iterable of `[batch, d_in]` tensors.

The trainer peeks at the first batches (input scale, b_dec initialisation) and then trains
on them too; peeked batches wait in `pending`. The position is the source's own
`state_dict()` when it has one (the activation loader), otherwise the count of batches
consumed, replayed on resume by skipping that many from a fresh iterator (fine for
deterministic sources).

A source with `gives_grad = True` (the live loader) yields `(x, grad)` pairs: the hook's
activations and the LM loss gradient there; the pair travels as one batch (`batch_acts`,
`batch_grad` take it apart) and peeking returns activations only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from saelab.base.errors import UserError

Batch = Tensor | tuple[Tensor, Tensor]
"""`[batch, d_in]` activations, or `(activations, LM loss gradient)` from a gradient source."""


def batch_acts(batch: Batch) -> Tensor:
    """The activations of a batch."""
    return batch[0] if isinstance(batch, tuple) else batch


def batch_grad(batch: Batch) -> Tensor | None:
    """The LM loss gradient of a batch (None: the source gives none)."""
    return batch[1] if isinstance(batch, tuple) else None


class BatchStream:
    """Iterator over batches with peeking and an exact-resume state."""

    def __init__(self, source: Iterable[Tensor], state_source: Any | None = None) -> None:
        self.source = source
        self.state_source = state_source if state_source is not None else source
        self.consumed = 0
        self.with_grad = bool(getattr(source, "gives_grad", False))
        self.pending: deque[Batch] = deque()
        self._it: Iterator[Batch] | None = None

    @property
    def has_state(self) -> bool:
        return hasattr(self.state_source, "state_dict") and hasattr(
            self.state_source, "load_state_dict"
        )

    def _next_from_source(self) -> Batch | None:
        if self._it is None:
            self._it = iter(self.source)
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        self.consumed += 1
        if self.with_grad:
            return _check_batch(batch[0]), _check_batch(batch[1])
        return _check_batch(batch)

    def next(self) -> Batch | None:
        """The next batch, or None when the source is exhausted."""
        if self.pending:
            return self.pending.popleft()
        return self._next_from_source()

    def peek_rows(self, rows: int) -> Tensor:
        """At least `rows` rows (fewer if the source ends) without consuming them."""
        have = sum(batch_acts(b).shape[0] for b in self.pending)
        while have < rows:
            batch = self._next_from_source()
            if batch is None:
                break
            self.pending.append(batch)
            have += batch_acts(batch).shape[0]
        if not self.pending:
            raise UserError("the activation source yielded no batches; check the store and hook")
        return torch.cat([batch_acts(b) for b in self.pending])[:rows]

    def state_dict(self) -> dict:
        return {
            "consumed": self.consumed,
            "pending": [_cpu_copy(b) for b in self.pending],
            "source": self.state_source.state_dict() if self.has_state else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.pending = deque(state["pending"])
        self._it = None
        if state["source"] is not None:
            if not self.has_state:
                raise UserError("the saved run used a resumable loader; pass the same loader")
            self.state_source.load_state_dict(state["source"])
            self.consumed = state["consumed"]
            return
        self.consumed = 0
        for _ in range(state["consumed"]):
            if self._next_from_source() is None:
                raise UserError("the data source is shorter than when the run was saved")


def _cpu_copy(batch: Batch) -> Batch:
    if isinstance(batch, tuple):
        return tuple(b.cpu().clone() for b in batch)  # type: ignore[return-value]
    return batch.cpu().clone()


def _check_batch(batch: Any) -> Tensor:
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 2:
        raise UserError(
            f"the loader must yield [batch, d_in] tensors, got {type(batch).__name__}"
            + (f" of shape {tuple(batch.shape)}" if isinstance(batch, Tensor) else "")
        )
    return batch
