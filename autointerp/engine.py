"""Continuous batching over `LeanLlama`: the requests in flight share each forward pass.

Every request thread calls `Engine.run`; whichever of them holds `Engine.lock` runs one step for
all requests in flight (no thread of its own, so nothing outlives the callers): requests that
arrived are admitted (their prompt's longest cached prefix copied from `PrefixCache` or from a
request in flight, the rest prefilled in this step), and every other request decodes its next
token, all in one `LeanLlama.forward`. Each finishes on its own (end of sequence, a stop string,
max_tokens) and its cache joins the prefix cache.

Greedy requests also verify draft tokens in the same pass (prompt lookup: the tokens that
followed the last earlier occurrence of the sequence's last few tokens). A draft token is kept
only where it equals the argmax of the row before it, so the output is the greedy output, equal
to the one-at-a-time output up to float rounding (a step's rows go through different matmul
kernels by its row count, see `lean_llama.SMALL_ROWS`, so an exact near-tie could flip a greedy
token); a step costs about the same with a few more rows, since decoding reads all the weights
anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saelab.autointerp.prefix_cache import MIN_REUSE, PrefixCache, common_prefix

if TYPE_CHECKING:  # torch is imported when a request runs (the CLI imports this module)
    import torch

    from saelab.autointerp.lean_llama import Chunk, LeanLlama

DRAFT_TOKENS = 6
"""Most draft tokens a greedy request verifies per step. A request starts there, drafts 2 more
(up to this) after a step that kept all its drafts and 1 fewer (down to 1) after one that did
not: a row costs little beside reading the weights, but not nothing."""
DRAFT_NGRAMS = (3, 2)
"""Lengths of the trailing n-gram looked up in the sequence for drafts (longest first)."""
MAX_BATCH = 8
"""Most requests decoded together."""
PREFILL_CHUNK = 1024
"""Most prompt tokens one request prefills per step (a long prompt takes several steps)."""


class Cancelled(Exception):
    """The client hung up (or the server stops); the request's work stops."""


class GenerationFailed(RuntimeError):
    """A step failed this request (its admission, its forward pass, or its own token
    handling); the error that did is the `__cause__`."""


@dataclass
class Request:
    """One completion in flight."""

    ids: list[int]
    max_tokens: int
    choose: Callable[[torch.Tensor], int]
    """Picks the next token from a row of logits (argmax, or a seeded sample)."""
    greedy: bool
    accept: Callable[[Request, int, torch.Tensor], bool]
    """Records a chosen token with its row's log-probabilities; True when the request is done."""
    cancelled: Callable[[], bool] = lambda: False
    reused: int = 0
    """Prompt tokens whose keys and values were copied from an earlier request."""
    cache: torch.Tensor | None = None
    length: int = 0
    """Tokens whose keys and values are in `cache`."""
    last: int | None = None
    """The last chosen token (not yet in the cache)."""
    out_ids: list[int] = field(default_factory=list)
    draft_len: int = DRAFT_TOKENS
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    @property
    def tokens(self) -> list[int]:
        return self.ids + self.out_ids


@dataclass
class EngineStats:
    steps: int = 0
    batched_steps: int = 0
    """Steps that served more than one request."""
    reused_prompt_tokens: int = 0
    drafted_tokens: int = 0
    accepted_draft_tokens: int = 0


class Engine:
    def __init__(
        self, model: LeanLlama, prefix: PrefixCache | None = None, speculate: bool = True
    ) -> None:
        self.model = model
        self.prefix = prefix if prefix is not None else PrefixCache()
        self.speculate = speculate
        self.lock = threading.Lock()
        """Held while a step runs (one forward pass at a time)."""
        self.stats = EngineStats()
        self._pending: list[Request] = []
        self._active: list[Request] = []
        self._queue = threading.Lock()

    def run(self, req: Request) -> None:
        """Serve `req` to completion (raises `Cancelled` if it was cancelled, `GenerationFailed`
        if a step failed it). The thread running a step that fails raises nothing for the
        others' sake: each thread raises only its own request's error."""
        with self._queue:
            self._pending.append(req)
        while not req.done.is_set():
            if self.lock.acquire(timeout=0.005):
                try:
                    if not req.done.is_set():
                        self.step()
                except Exception as err:  # the forward pass failed: so did its requests (only)
                    for r in list(self._active):
                        self._finish(r, err)
                except BaseException as err:  # KeyboardInterrupt, SystemExit: nobody waits on
                    for r in self._active + self._take_pending():
                        self._finish(r, err)
                    raise
                finally:
                    self.lock.release()
        if isinstance(req.error, Cancelled):
            raise req.error
        if req.error is not None:
            error = req.error
            raise GenerationFailed(f"{type(error).__name__}: {error}") from error

    def step(self) -> None:
        from saelab.autointerp.lean_llama import Chunk

        self._admit()
        chunks, owners = [], []
        for r in list(self._active):
            if r.cancelled():
                self._finish(r, Cancelled())
                continue
            if r.last is None:  # prefill (the part of the prompt not yet cached)
                ids = r.ids[r.length : r.length + PREFILL_CHUNK]
                final = r.length + len(ids) == len(r.ids)
                chunks.append(Chunk(r.cache, r.length, ids, len(ids) - 1 if final else len(ids)))
            else:
                ids = [r.last] + self._draft(r)
                chunks.append(Chunk(r.cache, r.length, ids, 0))
            owners.append(r)
        if not chunks:
            return
        self.stats.steps += 1
        self.stats.batched_steps += len(chunks) > 1
        logits = self.model.forward(chunks)
        for r, chunk, rows in zip(owners, chunks, logits):
            try:
                done = self._advance(r, chunk, rows)
            except Exception as err:  # its own choice or stop check: it alone fails
                self._finish(r, err)
                continue
            if done:
                self._finish(r)

    def _advance(self, r: Request, chunk: Chunk, rows: torch.Tensor) -> bool:
        """Take the step's tokens for `r`; True when it is done."""
        import torch

        if r.last is None:
            r.length += len(chunk.ids)
            if not len(rows):  # more prompt to prefill
                return False
            drafts = []
        else:
            r.length += 1
            drafts = chunk.ids[1:]
            self.stats.drafted_tokens += len(drafts)
        logp = torch.log_softmax(rows.float(), dim=-1)
        for j in range(len(rows)):
            token = r.choose(rows[j])
            r.last = token
            if r.accept(r, token, logp[j]):
                return True
            if j < len(drafts) and drafts[j] == token:
                r.length += 1  # the draft's keys and values were right
                self.stats.accepted_draft_tokens += 1
            else:
                break
        if drafts:
            kept = j == len(drafts)
            r.draft_len = min(DRAFT_TOKENS, r.draft_len + 2) if kept else max(1, r.draft_len - 1)
        return False

    def _draft(self, r: Request) -> list[int]:
        room = min(r.draft_len, r.max_tokens - len(r.out_ids) - 1)
        if not (self.speculate and r.greedy) or room < 1:
            return []
        tokens = r.tokens
        for n in DRAFT_NGRAMS:
            if len(tokens) <= n:
                continue
            tail = tokens[-n:]
            for i in range(len(tokens) - n - 1, -1, -1):
                if tokens[i : i + n] == tail:
                    return tokens[i + n : i + n + room]
        return []

    def _admit(self) -> None:
        admitted, deferred = [], []
        taken = self._take_pending(MAX_BATCH - len(self._active))
        try:
            while taken:
                r = taken.pop(0)
                try:
                    self._admit_one(r, admitted, deferred)
                except BaseException as err:  # no room for its cache...: it alone fails
                    self._finish(r, err)
                    if not isinstance(err, Exception):
                        raise
        finally:  # the deferred, and any not reached, wait for the next step
            with self._queue:
                self._pending[:0] = deferred + taken

    def _admit_one(self, r: Request, admitted: list[Request], deferred: list[Request]) -> None:
        if r.cancelled():
            self._finish(r, Cancelled())
            return
        shared, source = self._reusable(r.ids)
        # a request sharing more with one admitted in this step waits a step and copies it
        more = max(shared, MIN_REUSE) + 32
        if any(common_prefix(a.ids, r.ids[:-1]) >= more for a in admitted):
            deferred.append(r)
            return
        capacity = len(r.ids) + r.max_tokens + DRAFT_TOKENS + 1
        r.cache = self.model.new_cache(capacity)
        if shared:
            r.cache[:, :, :, :shared] = source[:, :, :, :shared]
        r.length = r.reused = shared
        self.stats.reused_prompt_tokens += shared
        self._active.append(r)
        admitted.append(r)

    def _reusable(self, ids: list[int]) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of `ids`: in the prefix cache or a request in flight."""
        shared, source = self.prefix.longest(ids)
        for a in self._active:
            n = min(common_prefix(a.tokens, ids[:-1]), a.length)
            if n > shared and n >= MIN_REUSE:
                shared, source = n, a.cache
        return shared, source

    def _take_pending(self, most: int | None = None) -> list[Request]:
        with self._queue:
            most = len(self._pending) if most is None else max(0, most)
            taken, self._pending = self._pending[:most], self._pending[most:]
        return taken

    def _finish(self, r: Request, error: BaseException | None = None) -> None:
        if r in self._active:
            self._active.remove(r)
        if error is None and r.cache is not None:
            self.prefix.put(r.tokens[: r.length], r.cache)
        r.cache, r.error = None, error
        r.done.set()
