"""The one way saelab talks to a language model: the `openai` package against any
OpenAI-compatible endpoint.

Async with a concurrency limit; retries with exponential backoff (or the server's Retry-After)
on 429, 5xx, timeouts, dropped connections and malformed bodies; a response cache keyed by
(model, messages, sampling parameters) whose new entries the caller saves with its results; and
token accounting. The API key is read from the environment variable the user names and lives
only inside the openai client object: it is never logged, stored or put in a config.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field

from saelab.base.config import check_fields
from saelab.base.errors import UserError

TOP_LOGPROBS = 5


@dataclass
class LLMConfig:
    """An OpenAI-compatible endpoint and how to talk to it."""

    base_url: str | None = None
    """Endpoint root, e.g. https://api.openai.com/v1. None: start the embedded local server."""
    model: str | None = None
    """Model name the endpoint serves. None: the first model the endpoint lists."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored).
    None: OPENAI_API_KEY if set, else no key (local servers need none)."""
    concurrency: int | None = None
    """Requests in flight at once. None: 8 against a remote endpoint, 4 against the local server
    (it decodes the requests in flight together)."""
    timeout_s: float = 60.0
    """Seconds before one request counts as timed out (and is retried)."""
    max_retries: int = 5
    """Retries of one request on 429, 5xx, timeouts, dropped connections and malformed bodies."""
    backoff_s: float = 1.0
    """First retry delay; doubles on each retry (with jitter), or the server's Retry-After."""
    temperature: float = 0.0
    """Sampling temperature of every request (part of the cache key)."""
    seed: int = 0
    """Sampling seed sent with every request, and the seed of window sampling."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"`concurrency` must be at least 1 (got {self.concurrency})")
        if self.max_retries < 0 or not (0 < self.timeout_s < math.inf):
            raise UserError(
                f"`max_retries` must be >= 0 and `timeout_s` a positive finite number of seconds "
                f"(got {self.max_retries}, {self.timeout_s})"
            )
        if not 0 <= self.temperature <= 2:
            raise UserError(f"`temperature` must be between 0 and 2, got {self.temperature}")
        if not (0 <= self.backoff_s < math.inf):
            raise UserError(f"`backoff_s` must be >= 0, got {self.backoff_s}")


class EndpointError(UserError):
    """The endpoint failed for good (down, refusing, or answering garbage after every retry)."""


@dataclass
class Completion:
    text: str
    logprobs: list[dict] | None
    """Per generated token: {"token": str, "top": [[alternative, logprob], ...]}; None if not given."""
    cached: bool = False


@dataclass
class Usage:
    """Counters of one run (cache hits spend no tokens)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class _Pending:
    key: str
    owner: tuple
    request: str
    response: str


@dataclass
class LLMClient:
    cfg: LLMConfig
    cache: dict[str, str] = field(default_factory=dict)
    """key -> response JSON, from earlier runs (see `take_new_entries`)."""
    usage: Usage = field(default_factory=Usage)
    logprobs_refused: bool = False
    """Set once the endpoint rejects a request for asking for logprobs."""
    logprobs_missing: bool = False
    """Set once the endpoint answers a request for logprobs without them (it ignores the ask)."""

    def __post_init__(self) -> None:
        from openai import AsyncOpenAI

        if not self.cfg.base_url or not self.cfg.model:
            raise UserError("the LLM client needs a base URL and a model name")
        self._openai = AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=_api_key(self.cfg.api_key_env),
            max_retries=0,  # retries are counted here
            timeout=self.cfg.timeout_s,
        )
        self._slots = asyncio.Semaphore(self.cfg.concurrency or 8)
        self._pending: list[_Pending] = []
        self._jitter = random.Random(self.cfg.seed)

    async def complete(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        owner: tuple,
        logprobs: bool = False,
        top_logprobs: int = TOP_LOGPROBS,
    ) -> Completion:
        """One chat completion (from the cache when this exact request was made before)."""
        logprobs = logprobs and not self.logprobs_refused
        params = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.cfg.temperature,
            "seed": self.cfg.seed,
        }
        if logprobs:
            params |= {"logprobs": True, "top_logprobs": top_logprobs}
        request = json.dumps(params, sort_keys=True, ensure_ascii=False)
        key = hashlib.sha256(request.encode()).hexdigest()
        if key in self.cache:
            self.usage.cache_hits += 1
            return _completion(json.loads(self.cache[key]), cached=True)
        body = await self._create(params)
        if body is None:  # logprobs refused: ask again without them
            return await self.complete(messages, max_tokens=max_tokens, owner=owner)
        response = json.dumps(body, ensure_ascii=False)
        self.cache[key] = response
        self._pending.append(_Pending(key, owner, request, response))
        completion = _completion(body)
        if logprobs and completion.logprobs is None:
            self.logprobs_missing = True
        return completion

    def take_new_entries(self, owner: tuple) -> list[tuple[str, str, str]]:
        """New (key, request, response) cache entries made for `owner`, removed from the queue."""
        mine = [p for p in self._pending if p.owner == owner]
        self._pending = [p for p in self._pending if p.owner != owner]
        return [(p.key, p.request, p.response) for p in mine]

    async def _create(self, params: dict) -> dict | None:
        import openai

        for attempt in range(self.cfg.max_retries + 1):
            last = attempt == self.cfg.max_retries
            try:
                async with self._slots:
                    self.usage.requests += 1
                    raw = await self._openai.chat.completions.with_raw_response.create(**params)
                body = _parse_body(raw.text)
                self._count_tokens(body)
                return body
            except openai.BadRequestError as err:
                if params.get("logprobs") and "logprob" in str(err).lower():
                    self.logprobs_refused = True
                    return None
                raise EndpointError(_refusal(self.cfg, err, self._openai.api_key)) from None
            except (openai.RateLimitError, openai.InternalServerError) as err:
                reason, wait = f"HTTP {err.status_code}", _retry_after(err)
            except openai.APITimeoutError:
                reason, wait = f"no answer within {self.cfg.timeout_s:g} s", None
            except openai.APIConnectionError as err:
                reason, wait = f"connection failed ({_cause(err)})", None
            except _MalformedBody as err:
                reason, wait = f"malformed response ({err})", None
            except openai.APIStatusError as err:
                raise EndpointError(_refusal(self.cfg, err, self._openai.api_key)) from None
            if last:
                raise EndpointError(
                    f"endpoint {self.cfg.base_url} failed {self.cfg.max_retries + 1} times "
                    f"(last: {reason}); check that it is up, or raise --max-retries"
                )
            self.usage.retries += 1
            delay = self.cfg.backoff_s * 2**attempt * (0.5 + self._jitter.random())
            await asyncio.sleep(min(wait if wait is not None else delay, 60.0))
        raise AssertionError("unreachable")

    def _count_tokens(self, body: dict) -> None:
        usage = body.get("usage") or {}
        self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)

    async def close(self) -> None:
        await self._openai.close()


async def first_model(cfg: LLMConfig) -> str:
    """The first model the endpoint lists (the default when the user names none)."""
    from openai import AsyncOpenAI, OpenAIError

    client = AsyncOpenAI(
        base_url=cfg.base_url,
        api_key=_api_key(cfg.api_key_env),
        max_retries=2,
        timeout=cfg.timeout_s,
    )
    try:
        models = [m.id async for m in client.models.list()]
    except OpenAIError as err:
        raise EndpointError(
            f"cannot list the models of {cfg.base_url} ({type(err).__name__}); "
            "check that it is up, or name the model with --llm"
        ) from None
    finally:
        await client.close()
    if not models:
        raise EndpointError(f"{cfg.base_url} lists no models; name one with --llm")
    return models[0]


class _MalformedBody(Exception):
    pass


def _parse_body(text: str) -> dict:
    """The response JSON, checked for the one field every use needs."""
    try:
        body = json.loads(text)
    except ValueError:
        raise _MalformedBody(f"not JSON: {text[:40]!r}") from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _MalformedBody("no choices")
    return body


def _completion(body: dict, cached: bool = False) -> Completion:
    choice = body["choices"][0]
    text = (choice.get("message") or {}).get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    logprobs = None
    if isinstance(content, list):  # given, if maybe empty (the answer stopped at once)
        logprobs = [
            {
                "token": item.get("token", ""),
                "top": [
                    [alt.get("token", ""), alt.get("logprob", 0.0)]
                    for alt in item.get("top_logprobs") or []
                ],
            }
            for item in content
        ]
    return Completion(text=text, logprobs=logprobs, cached=cached)


def _api_key(env_name: str | None) -> str:
    if env_name:
        key = os.environ.get(env_name)
        if not key:
            raise UserError(f"environment variable {env_name} (named by --api-key-env) is not set")
        return key
    return os.environ.get("OPENAI_API_KEY") or "no-key"  # local servers ignore it


def _retry_after(err) -> float | None:
    value = err.response.headers.get("retry-after") if err.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _cause(err: Exception) -> str:
    cause = err.__cause__ or err
    return type(cause).__name__


def _refusal(cfg: LLMConfig, err, key: str) -> str:
    body = err.body.get("message") if isinstance(err.body, dict) else err.body
    message = " ".join(str(body or "").split())[:200]
    if key and len(key) > 3:
        message = message.replace(key, "***")  # some providers echo the key back
    hint = {401: "check the API key", 403: "check the API key", 404: "check --base-url and --llm"}
    return (
        f"endpoint {cfg.base_url} refused the request (HTTP {err.status_code}"
        f"{': ' + message if message else ''}); "
        f"{hint.get(err.status_code, 'check the request settings')}"
    )
