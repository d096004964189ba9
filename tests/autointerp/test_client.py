"""The LLM client against the fault-injecting fake endpoint: retries, refusals, cache, keys."""

from __future__ import annotations

import asyncio
import json

import pytest

from saelab.autointerp.client import EndpointError, LLMClient
from saelab.autointerp.config import LLMConfig
from saelab.autointerp.fake_endpoint import FakeEndpoint
from saelab.base.errors import UserError

MESSAGES = [{"role": "user", "content": "Reply with exactly 3 numbers as a JSON list."}]


def ask(client: LLMClient, messages=MESSAGES, **kw):
    async def go():
        try:
            return await client.complete(messages, max_tokens=10, owner=("s", 0), **kw)
        finally:
            await client.close()

    return asyncio.run(go())


def config(fake, **kw) -> LLMConfig:
    return LLMConfig(base_url=fake.base_url, model="fake-llm", backoff_s=0.01, timeout_s=1.0, **kw)


def test_every_transient_fault_is_retried_and_counted():
    script = ["429", "500", "503", "timeout", "drop", "garbage"]
    with FakeEndpoint(script=script, hang_s=2.0) as fake:
        client = LLMClient(config(fake, max_retries=6))
        reply = ask(client)
    assert len(json.loads(reply.text)) == 3
    assert client.usage.retries == 6 and client.usage.requests == 7
    assert fake.actions == {a: 1 for a in script} | {"ok": 1}
    assert client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0


def test_endpoint_down_is_a_clear_error_after_the_retries():
    with FakeEndpoint() as fake:
        url = fake.base_url
    client = LLMClient(LLMConfig(base_url=url, model="m", backoff_s=0.01, max_retries=2))
    with pytest.raises(EndpointError, match=r"failed 3 times \(last: connection failed"):
        ask(client)
    assert client.usage.retries == 2


def test_persistent_5xx_gives_up_with_the_status():
    with FakeEndpoint(script=["500"] * 10) as fake:
        with pytest.raises(EndpointError, match="HTTP 500"):
            ask(LLMClient(config(fake, max_retries=3)))
        assert fake.actions["500"] == 4


def test_a_refusal_is_not_retried(monkeypatch):
    with FakeEndpoint(script=["401"]) as fake:
        with pytest.raises(EndpointError, match="HTTP 401.*check the API key"):
            ask(LLMClient(config(fake)))
        assert sum(fake.actions.values()) == 1


def test_cache_answers_a_repeated_request_and_tracks_new_entries():
    with FakeEndpoint() as fake:
        first = LLMClient(config(fake))
        reply = ask(first)
        entries = first.take_new_entries(("s", 0))
        assert len(entries) == 1 and first.take_new_entries(("s", 0)) == []
        second = LLMClient(config(fake), cache={k: resp for k, _, resp in entries})
        again = ask(second)
        changed = ask(LLMClient(config(fake, temperature=0.7), cache=second.cache))
    assert again.cached and again.text == reply.text and second.usage.requests == 0
    assert not changed.cached  # sampling parameters are part of the key
    assert sum(fake.actions.values()) == 2


def test_api_key_comes_from_the_named_variable_and_is_sent(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-test-secret-42")
    with FakeEndpoint() as fake:
        ask(LLMClient(config(fake, api_key_env="MY_LLM_KEY")))
    assert fake.authorization == {"Bearer sk-test-secret-42"}
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(UserError, match="MY_LLM_KEY .* is not set"):
        LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="MY_LLM_KEY"))


def test_logprobs_are_returned_when_the_endpoint_gives_them():
    with FakeEndpoint(logprobs=True) as fake:
        reply = ask(LLMClient(config(fake)), logprobs=True)
        plain = ask(LLMClient(config(fake)))
    assert reply.logprobs and any(t["token"].isdigit() for t in reply.logprobs)
    assert plain.logprobs is None
    assert fake.requests[0]["top_logprobs"] == 5 and "logprobs" not in fake.requests[1]
