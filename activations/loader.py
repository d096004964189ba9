"""The training loader: shuffled `[batch, d]` activations from a store, resumable exactly.

The stream of an epoch is built in windows. The store's committed chunks are put in a seeded
random order; each window takes `shuffle_chunks` of them, keeps the rows that pass the masks
(BOS and other special tokens, invalid sequences, optional high-norm outliers) and permutes
them with a seeded generator. Batches are consecutive slices of the concatenated windows, so
rows left over at the end of one window open the next batch, and nothing is dropped except,
after the last epoch, a final partial batch (unless `drop_last=False`).

A prefetch thread prepares the next window while the current one is consumed. The position
(`state_dict`) is (global window, row offset within it, rows carried into it); restoring it
rebuilds the same windows and carried rows, so the resumed stream equals the uninterrupted one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from saelab.activations.store import ActivationStore
from saelab.base.config import check_fields
from saelab.base.errors import UserError

TEST_FRACTION = 0.1
"""Fraction of a store's committed chunks (the last ones) held out as the `test` split: the one
definition that training (`train`), evaluation (`test`) and the loader share."""


@dataclass
class LoaderConfig:
    """How to read training batches from a store."""

    batch_size: int = 4096
    """Rows (tokens) per batch."""
    seed: int = 0
    """Seed of the chunk order and the in-window permutations."""
    epochs: int = 1
    """Passes over the store's committed chunks."""
    shuffle_chunks: int = 8
    """Chunks per shuffle window (the shuffle buffer); larger mixes better, costs memory."""
    mask_bos: bool = True
    """Drop the BOS position when the store's policy prepended one."""
    mask_special: bool = True
    """Drop any other special token (EOS, chat markers, padding)."""
    outlier_factor: float | None = None
    """Drop rows whose norm exceeds this multiple of the median norm (None: keep all)."""
    drop_last: bool = True
    """Drop the final partial batch of the last epoch."""
    prefetch: int = 1
    """Windows prepared ahead by the background thread (0: no thread)."""
    split: str = "all"
    """Which committed chunks: `all`, `train` (all but the held-out tail) or `test` (the tail)."""
    test_fraction: float = TEST_FRACTION
    """Fraction of committed chunks (the last ones, at least one) held out as `test`."""
    rank: int = 0
    """Data-parallel rank: this process takes batches rank, rank + world, ..."""
    world_size: int = 1
    """Data-parallel world size."""

    def __post_init__(self) -> None:
        check_fields(self)


SPLITS = ("all", "train", "test")


def split_chunks(chunks: list[int], split: str, test_fraction: float) -> list[int]:
    """The chunks of a split: the last `test_fraction` of them (at least one) are `test`."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose {', '.join(SPLITS)}")
    if split == "all":
        return list(chunks)
    if len(chunks) < 2:
        raise UserError("the store has fewer than 2 chunks: too small for a train/test split")
    n_test = max(1, round(len(chunks) * test_fraction))
    return list(chunks[:-n_test]) if split == "train" else list(chunks[-n_test:])


class ActivationLoader:
    """Iterable of float32 `[batch_size, d]` activations of one hook of a store."""

    def __init__(
        self,
        store: str | ActivationStore,
        hook: str,
        batch_size: int = 4096,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        config: LoaderConfig | None = None,
        **overrides,
    ) -> None:
        self.store = store if isinstance(store, ActivationStore) else ActivationStore(store)
        self.store.check_hook(hook)
        self.hook = hook
        self.cfg = config or LoaderConfig(batch_size=batch_size, seed=seed, **overrides)
        if self.cfg.batch_size < 1:
            raise UserError(f"batch size must be positive, got {self.cfg.batch_size}")
        self.device = torch.device(device)
        self.d_in = self.store.width(hook)
        self.chunks = split_chunks(
            self.store.committed_chunks(), self.cfg.split, self.cfg.test_fraction
        )
        if not self.chunks:
            raise UserError(
                f"store {self.store.url!r} has no committed {self.cfg.split!r} data; harvest (more) first"
            )
        self.outlier_threshold = self._outlier_threshold()
        self.windows_per_epoch = -(-len(self.chunks) // self.cfg.shuffle_chunks)
        self._position = (0, 0, 0)  # (global window, offset into it, rows carried into it)

    # -- public -------------------------------------------------------------------------

    @property
    def hook_label(self) -> str:
        """The hook(s) this loader reads, for messages."""
        return self.hook

    @property
    def store_info(self) -> dict:
        """The store's metadata (model, dataset, hooks, ...) for provenance."""
        return dict(self.store.attrs)

    @property
    def tokens_per_epoch(self) -> int:
        """Rows that pass the masks in one epoch (counts tokens only, reads no activations)."""
        return sum(int(self._token_mask(c).sum()) for c in self.chunks)

    def state_dict(self) -> dict:
        window, offset, carried = self._position
        return {
            "window": window,
            "offset": offset,
            "carried": carried,
            "config": asdict(self.cfg),
            "chunks": list(self.chunks),
            "outlier_threshold": self.outlier_threshold,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != asdict(self.cfg) or state["chunks"] != list(self.chunks):
            raise UserError(
                "the saved loader position is for another loader config or store content"
            )
        self.outlier_threshold = state["outlier_threshold"]
        self._position = (state["window"], state["offset"], state["carried"])

    def __iter__(self) -> Iterator[torch.Tensor]:
        # Data parallel: every rank walks the same stream and takes its member of each group of
        # `world_size` consecutive batches; the position moves a whole group at a time, so one
        # saved position serves every rank.
        world, rank = self.cfg.world_size, self.cfg.rank
        group: list[torch.Tensor] = []
        for batch, position in self._batches():
            group.append(batch)
            if len(group) == world:
                self._position = position
                yield group[rank].to(self.device, non_blocking=True)
                group = []

    def _batches(self) -> Iterator[tuple[torch.Tensor, tuple[int, int, int]]]:
        """Consecutive batches of the global stream, each with the position just after it."""
        size = self.cfg.batch_size
        window, offset, carried = self._position
        pending = self._tail_rows(window, carried)
        n_windows = self.windows_per_epoch * self.cfg.epochs
        fresh, yielded = self._position == (0, 0, 0), False
        for g, rows in self._windows(window):
            rows = torch.cat([pending, rows]) if len(pending) else rows
            start = offset if g == window else 0
            carried_here = len(pending)
            while start + size <= len(rows):
                start += size
                yielded = True
                yield rows[start - size : start], (g, start, carried_here)
            pending = rows[start:]
            if g + 1 == n_windows and len(pending) and not self.cfg.drop_last:
                yield pending, (g + 1, 0, 0)
        if fresh and not yielded and self.cfg.drop_last:
            raise UserError(
                f"store {self.store.url!r} has {len(pending):,} usable rows of {self.hook_label} in "
                f"its {self.cfg.split!r} split, fewer than one batch of {size:,}; lower the "
                "batch size or harvest more tokens"
            )

    # -- windows --------------------------------------------------------------------------

    def _window_chunks(self, g: int) -> list[int]:
        epoch, w = divmod(g, self.windows_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.chunks))
        picked = order[w * self.cfg.shuffle_chunks : (w + 1) * self.cfg.shuffle_chunks]
        return [self.chunks[i] for i in picked]

    def _window_rows(self, g: int) -> torch.Tensor:
        """The masked, permuted float32 rows of global window g."""
        parts = [self._chunk_rows(c) for c in self._window_chunks(g)]
        rows = torch.cat(parts) if parts else torch.empty(0, self.d_in)
        perm = torch.from_numpy(np.random.default_rng([self.cfg.seed, g, 1]).permutation(len(rows)))
        return rows[perm]

    def _windows(self, first: int) -> Iterator[tuple[int, torch.Tensor]]:
        last = self.windows_per_epoch * self.cfg.epochs
        if self.cfg.prefetch <= 0:
            for g in range(first, last):
                yield g, self._window_rows(g)
            return
        ready: queue.Queue = queue.Queue(maxsize=self.cfg.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for g in range(first, last):
                    if stop.is_set():
                        return
                    ready.put((g, self._window_rows(g)))
                ready.put(None)
            except BaseException as err:  # re-raised in the consumer
                ready.put(err)

        thread = threading.Thread(target=produce, name="saelab-loader", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass

    def _tail_rows(self, window: int, count: int) -> torch.Tensor:
        """The last `count` rows of the stream before `window` (the rows carried into it)."""
        parts, need, g = [], count, window - 1
        while need > 0 and g >= 0:
            rows = self._window_rows(g)
            take = rows[max(0, len(rows) - need) :]
            parts.insert(0, take)
            need -= len(take)
            g -= 1
        return torch.cat(parts) if parts else torch.empty(0, self.d_in)

    # -- masks ----------------------------------------------------------------------------

    def _token_mask(self, chunk: int) -> np.ndarray:
        return self.store.token_mask(chunk, self.cfg.mask_bos, self.cfg.mask_special).reshape(-1)

    def _chunk_rows(self, chunk: int) -> torch.Tensor:
        acts = self.store.read_acts(self.hook, chunk).reshape(-1, self.d_in)
        keep = torch.from_numpy(self._token_mask(chunk))
        rows = acts[keep].float()
        if self.outlier_threshold is not None:
            rows = rows[rows.norm(dim=1) <= self.outlier_threshold]
        return rows

    def _outlier_threshold(self) -> float | None:
        """factor × the median norm over the first committed chunk (fixed for the run)."""
        if self.cfg.outlier_factor is None:
            return None
        acts = self.store.read_acts(self.hook, self.chunks[0]).reshape(-1, self.d_in)
        norms = acts[torch.from_numpy(self._token_mask(self.chunks[0]))].float().norm(dim=1)
        return float(norms.median()) * self.cfg.outlier_factor


def distinct_hooks(hooks: list[str], who: str) -> list[str]:
    """`hooks` as a list, refused when empty or when a hook repeats."""
    hooks = list(hooks)
    if not hooks:
        raise UserError(f"{who} needs at least one hook")
    if len(set(hooks)) != len(hooks):
        raise UserError(f"a hook is given twice in {hooks}; give each hook once")
    return hooks


class MultiHookLoader(ActivationLoader):
    """The rows of several hooks of one width (a layer group), shuffled together: each token
    gives one row per hook, every hook's rows once per epoch, each row in its own raw scale.

    The unit of shuffling is a (chunk, hook) pair instead of a chunk: a window reads
    `shuffle_chunks` pairs, one hook of one chunk each, so it holds as many rows as a
    single-hook window, mixes several layers, and a run that needs fewer rows than an epoch
    (one per-layer SAE's budget spread over the group) reads only about the rows it uses.
    Everything else (masks, resume, data-parallel split) is the single-hook loader's. The
    high-norm outlier threshold is set per hook (residual norms grow with depth). `hook` is
    None: the rows belong to no single hook.
    """

    def __init__(
        self,
        store: str | ActivationStore,
        hooks: list[str],
        batch_size: int = 4096,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        config: LoaderConfig | None = None,
        **overrides,
    ) -> None:
        hooks = distinct_hooks(hooks, "a multi-hook loader")
        opened = store if isinstance(store, ActivationStore) else ActivationStore(store)
        widths = {h: opened.width(h) for h in hooks}
        if len(set(widths.values())) > 1:
            raise UserError(
                "one SAE reads hooks of one width, but these differ: "
                + ", ".join(f"{h} {w}" for h, w in widths.items())
            )
        self.hooks = hooks
        super().__init__(
            opened, hooks[0], batch_size, seed=seed, device=device, config=config, **overrides
        )
        self.hook = None  # type: ignore[assignment]
        self.store_chunks = list(self.chunks)
        self.chunks = [(c, i) for c in self.store_chunks for i in range(len(hooks))]  # type: ignore[misc]
        self.windows_per_epoch = -(-len(self.chunks) // self.cfg.shuffle_chunks)

    @property
    def hook_label(self) -> str:
        return ", ".join(self.hooks)

    @property
    def tokens_per_epoch(self) -> int:
        """Rows that pass the masks in one epoch, summed over the hooks."""
        per_hook = sum(int(self._store_mask(c).sum()) for c in self.store_chunks)
        return len(self.hooks) * per_hook

    def _store_mask(self, chunk: int) -> np.ndarray:
        return self.store.token_mask(chunk, self.cfg.mask_bos, self.cfg.mask_special).reshape(-1)

    def _token_mask(self, item) -> np.ndarray:  # type: ignore[override]
        return self._store_mask(item[0])

    def _chunk_rows(self, item) -> torch.Tensor:  # type: ignore[override]
        chunk, i = item
        hook = self.hooks[i]
        keep = torch.from_numpy(self._token_mask(item))
        rows = self.store.read_acts(hook, chunk).reshape(-1, self.d_in)[keep].float()
        if self.outlier_threshold is not None:
            rows = rows[rows.norm(dim=1) <= self.outlier_threshold[hook]]
        return rows

    def _outlier_threshold(self) -> dict[str, float] | None:  # type: ignore[override]
        if self.cfg.outlier_factor is None:
            return None
        first = self.chunks[0]  # a store chunk: called before the pairs are formed
        keep = torch.from_numpy(self._store_mask(first))
        out = {}
        for h in self.hooks:
            acts = self.store.read_acts(h, first).reshape(-1, self.d_in)[keep].float()
            out[h] = float(acts.norm(dim=1).median()) * self.cfg.outlier_factor
        return out


class JointHookLoader(ActivationLoader):
    """The activations of several hooks at the same tokens, side by side in one row: each
    batch is `[batch, Σ widths]`, the hooks' columns in the order given (`columns` says where
    each one lies). A transcoder's input and target come from one such loader, so both sides
    of a row belong to the same token, in the same shuffle, and a resume restores both.

    Everything else (windows, masks, resume, data-parallel split) is the single-hook
    loader's; the high-norm outlier filter looks at the first hook. `hook` is the first hook
    (the one the training reads as its input).
    """

    def __init__(
        self,
        store: str | ActivationStore,
        hooks: list[str],
        batch_size: int = 4096,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        config: LoaderConfig | None = None,
        **overrides,
    ) -> None:
        hooks = distinct_hooks(hooks, "a joint-hook loader")
        opened = store if isinstance(store, ActivationStore) else ActivationStore(store)
        for h in hooks:
            opened.check_hook(h)
        self.hooks = hooks
        self.widths = {h: opened.width(h) for h in hooks}
        starts = np.cumsum([0] + [self.widths[h] for h in hooks])
        self.columns = {h: slice(int(a), int(b)) for h, a, b in zip(hooks, starts, starts[1:])}
        """Where each hook's activations lie in a row."""
        super().__init__(
            opened, hooks[0], batch_size, seed=seed, device=device, config=config, **overrides
        )
        self.d_in = int(starts[-1])

    @property
    def hook_label(self) -> str:
        return " + ".join(self.hooks)

    def _chunk_rows(self, chunk: int) -> torch.Tensor:
        keep = torch.from_numpy(self._token_mask(chunk))
        parts = [
            self.store.read_acts(h, chunk).reshape(-1, self.widths[h])[keep].float()
            for h in self.hooks
        ]
        rows = torch.cat(parts, dim=1)
        if self.outlier_threshold is not None:
            rows = rows[parts[0].norm(dim=1) <= self.outlier_threshold]
        return rows

    def _outlier_threshold(self) -> float | None:
        if self.cfg.outlier_factor is None:
            return None
        first = self.hooks[0]
        acts = self.store.read_acts(first, self.chunks[0]).reshape(-1, self.widths[first])
        norms = acts[torch.from_numpy(self._token_mask(self.chunks[0]))].float().norm(dim=1)
        return float(norms.median()) * self.cfg.outlier_factor
