"""The local endpoint's engine against transformers: the lean forward pass over a ragged batch,
greedy decoding with drafts, a reused prompt prefix, and concurrent requests batched together
each give what transformers (or the request alone) gives."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from saelab.autointerp.engine import Engine, Request
from saelab.autointerp.lean_llama import Chunk
from saelab.autointerp.prefix_cache import PrefixCache
from saelab.autointerp.server import Generator

SYSTEM = "You are a careful assistant who answers briefly."
SHARED = (
    "Feature explanation: the marked tokens are names of rivers and the verbs that describe "
    "water moving, such as flows, floods and drains, in news reports about weather."
)


def fresh(gen: Generator, **kw) -> Generator:
    """A generator over the same model with its own engine (empty prefix cache, fresh stats)."""
    return Generator(gen.model, gen.tokenizer, engine=Engine(gen.engine.model, **kw))


def chat(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def test_ragged_batch_forward_matches_transformers(local_generator):
    lean, model = local_generator.engine.model, local_generator.model
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (23, 17))
    with torch.inference_mode():
        ref_a = model(torch.tensor([a])).logits[0]
        ref_b = model(torch.tensor([b])).logits[0]
    cache_a, cache_b = lean.new_cache(32), lean.new_cache(32)
    (first_b,) = lean.forward([Chunk(cache_b, 0, b[:10], 0)])  # b's prefix first, then both
    out_a, rest_b = lean.forward([Chunk(cache_a, 0, a, 0), Chunk(cache_b, 10, b[10:], 0)])
    torch.testing.assert_close(out_a, ref_a, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([first_b, rest_b]), ref_b, atol=1e-4, rtol=0)
    (last,) = lean.forward([Chunk(lean.new_cache(32), 0, a, len(a) - 1)])  # the last row only
    torch.testing.assert_close(last, ref_a[-1:], atol=1e-4, rtol=0)
    cache = lean.new_cache(32)  # a step of 3 rows (oneDNN's packed weights, not MKL's sgemm)
    lean.forward([Chunk(cache, 0, a[:20], 19)])
    (few,) = lean.forward([Chunk(cache, 20, a[20:], 0)])
    torch.testing.assert_close(few, ref_a[20:], atol=2e-3, rtol=0)


@pytest.mark.parametrize("user", [
    "Copy this line three times: the river floods the valley every spring.",
    "Name three facts about mountains.",
])  # fmt: skip
def test_greedy_output_is_transformers_generate(local_generator, user):
    """Token for token what `generate` gives (no drafts), with drafts verified on the copying
    prompt."""
    gen = fresh(local_generator)
    messages = chat(user)
    ids = gen.encode(messages)
    with torch.inference_mode():
        ref = local_generator.model.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False
        )[0, len(ids) :].tolist()
    eos = gen.model.generation_config.eos_token_id
    ref = ref[: ref.index(eos)] if eos in ref else ref
    out = gen.generate(messages, max_tokens=16, temperature=0)
    assert out.token_ids == ref
    if user.startswith("Copy"):
        assert gen.engine.stats.accepted_draft_tokens >= 4


def test_a_reused_prefix_gives_the_same_tokens(local_generator):
    first = chat(f"{SHARED}\n\nExcerpt: the Danube flows through Vienna.\n\nAnswer 1 or 0.")
    second = chat(f"{SHARED}\n\nExcerpt: stocks fell on Monday morning.\n\nAnswer 1 or 0.")
    reusing = fresh(local_generator)
    reusing.generate(first, max_tokens=4)
    with_reuse = reusing.generate(second, max_tokens=12, top_logprobs=3)
    shared = len(reusing.encode(chat(SHARED))) - 6  # up to the end of the explanation
    assert reusing.stats.reused_prompt_tokens >= shared
    alone = fresh(local_generator).generate(second, max_tokens=12, top_logprobs=3)
    assert with_reuse.token_ids == alone.token_ids and len(alone.token_ids) > 0
    for x, y in zip(with_reuse.tokens, alone.tokens):
        assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
        assert [t for t, _ in x["top"]] == [t for t, _ in y["top"]]


def test_concurrent_requests_return_what_each_returns_alone(local_generator):
    requests = [
        dict(messages=chat("Name three facts about rivers."), max_tokens=10),
        dict(messages=chat(f"{SHARED}\n\nExcerpt: the Nile floods."), max_tokens=16,
             top_logprobs=2),
        dict(messages=chat("List the numbers from 1 to 20, separated by commas."), max_tokens=30,
             stop=["7"]),
        dict(messages=chat("Write a sentence about cats."), max_tokens=9, temperature=0.8,
             seed=3),
    ]  # fmt: skip
    alone = [fresh(local_generator).generate(**r) for r in requests]
    together = fresh(local_generator)
    start, got = threading.Barrier(len(requests)), [None] * len(requests)

    def ask(i: int) -> None:
        start.wait()
        got[i] = together.generate(**requests[i])

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(len(requests))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)
    assert together.engine.stats.batched_steps > 0
    assert alone[2].finish_reason == "stop" and alone[2].text.endswith("6, ")
    for r, a, b in zip(requests, alone, got):
        if r.get("temperature", 0) > 0:
            # sampled: its logits came through other kernels (a step's row count picks them),
            # so multinomial may draw another token; a valid completion, the same while the
            # tokens agree
            assert 0 < len(b.token_ids) <= r["max_tokens"] and b.finish_reason in ("stop", "length")
            assert len(b.tokens) == len(b.token_ids)
            pairs = list(zip(a.token_ids, b.token_ids))
            same = next((i for i, (x, y) in enumerate(pairs) if x != y), len(pairs))
            for x, y in zip(a.tokens[:same], b.tokens[:same]):
                assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
            continue
        assert b.token_ids == a.token_ids and b.text == a.text
        assert b.finish_reason == a.finish_reason
        for x, y in zip(a.tokens, b.tokens):
            assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
            assert [t for t, _ in x["top"]] == [t for t, _ in y["top"]]


def test_max_tokens_below_one_is_refused_before_anything_runs(local_generator):
    gen = fresh(local_generator)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_tokens"):
            gen.generate(chat("Hi"), max_tokens=bad)
        with pytest.raises(ValueError, match="max_tokens"):
            Request([1, 2, 3], bad, int, True, lambda *a: True)
    assert gen.engine.stats.steps == 0 and gen.stats.requests == 0


VOCAB = 64


class BreakingModel:
    """Stands in for `LeanLlama` (token t is followed by t + 1) and breaks for one request: no
    room for its cache (`new_cache`, told apart by its capacity), or a forward pass with its
    prompt in it (`forward`)."""

    def __init__(self, breaks: str, bad_capacity: int, bad_token: int) -> None:
        self.breaks, self.bad_capacity, self.bad_token = breaks, bad_capacity, bad_token

    def new_cache(self, capacity: int) -> torch.Tensor:
        if self.breaks == "new_cache" and capacity == self.bad_capacity:
            raise MemoryError("no room for this cache")
        return torch.zeros(1, 1, 1, capacity, 1)

    def forward(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        if self.breaks == "forward" and any(self.bad_token in c.ids for c in chunks):
            raise RuntimeError("the forward pass broke")
        out = []
        for c in chunks:
            rows = torch.zeros(len(c.ids) - c.logits_from, VOCAB)
            for j, t in enumerate(c.ids[c.logits_from :]):
                rows[j, (t + 1) % VOCAB] = 1.0
            out.append(rows)
        return out


@pytest.mark.parametrize("breaks", ["new_cache", "accept", "forward"])
def test_a_request_that_breaks_fails_alone_and_no_thread_hangs(breaks):
    """Four requests admitted in one step, the second breaking (its cache, its stop check, or
    the forward pass it is in): it fails with its own error, every other completes or fails
    with its own (a broken forward pass fails the step's requests), and no thread waits
    forever."""
    prompts = [[10 * i + j for j in range(5)] for i in range(4)]
    lengths = [5, 7, 5, 5]  # the breaking request's cache has its own capacity
    bad = 1
    injected = {"new_cache": MemoryError, "accept": ValueError, "forward": RuntimeError}[breaks]
    capacity = len(prompts[bad]) + lengths[bad] + 7  # + DRAFT_TOKENS + 1
    engine = Engine(BreakingModel(breaks, capacity, prompts[bad][0]))

    def accept(req: Request, token: int, logp) -> bool:
        if breaks == "accept" and req.ids is prompts[bad]:
            raise ValueError("the stop check broke")
        req.out_ids.append(token)
        return len(req.out_ids) >= req.max_tokens

    reqs = [
        Request(p, n, lambda row: int(row.argmax()), True, accept)
        for p, n in zip(prompts, lengths)
    ]  # fmt: skip
    got: list = [None] * len(reqs)

    def call(i: int) -> None:
        try:
            engine.run(reqs[i])
            got[i] = list(reqs[i].out_ids)
        except Exception as err:
            got[i] = err

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(reqs))]
    with engine.lock:  # all four queued, in order, before the first step
        for i, t in enumerate(threads):
            t.start()
            while len(engine._pending) <= i:
                time.sleep(0.001)
    deadline = time.monotonic() + 10
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)
    assert isinstance(got[bad], RuntimeError) and isinstance(got[bad].__cause__, injected)
    errors = [g for g in got if isinstance(g, BaseException)]
    assert len({id(e) for e in errors}) == len(errors)  # each thread raises its own
    for i, g in enumerate(got):
        if i == bad:
            continue
        if breaks == "forward" and isinstance(g, RuntimeError):
            assert isinstance(g.__cause__, injected)
        else:
            assert g == [prompts[i][-1] + 1 + k for k in range(lengths[i])]


def test_prefix_cache_keeps_the_longest_and_evicts_the_oldest():
    def kv(n: int) -> torch.Tensor:
        return torch.zeros(1, 2, 1, n, 4)  # 32 bytes per position

    cache = PrefixCache(entries=2, max_bytes=32 * 95)
    assert cache.longest(list(range(20))) == (0, None)
    cache.put(list(range(10)), kv(10))
    n, _ = cache.longest(list(range(8)) + [99, 100])
    assert n == 8
    assert cache.longest(list(range(5)) + [7])[0] == 0  # under MIN_REUSE
    cache.put(list(range(12)), kv(12))  # extends the first: replaces it
    assert len(cache) == 1
    assert cache.longest(list(range(30)))[0] == 12
    cache.put([5] * 10, kv(10))
    cache.put([6] * 10, kv(10))  # two entries at most: the oldest (range(12)) goes
    assert len(cache) == 2 and cache.longest(list(range(30)))[0] == 0
    cache.put([7] * 90, kv(90))  # over the byte budget with the others: they go
    assert len(cache) == 1 and cache.nbytes == 32 * 90
