"""The offline default endpoint: the embedded model behind a minimal OpenAI-compatible server.

`LocalServer` serves `GET /v1/models`, `GET /health` and `POST /v1/chat/completions` (not
streamed; `max_tokens`, `temperature`, `seed`, `stop`, `logprobs`, `top_logprobs` up to 20) on
127.0.0.1 from a thread of the calling process, over one model loaded once. It replaced a
`transformers serve` child process, which on a 2-core CPU answered a 300-token prompt at about
37 tokens/s (see `benchmarks/llm_server.py` for the measurement). A Llama-family model runs
through `engine.Engine`: requests in flight are decoded together in one forward pass, a prompt
prefix shared with a recent request (the same system prompt and explanation) reuses that
prefix's cache, and greedy requests verify prompt-lookup drafts (see engine.py).

A request whose client has hung up (a client-side timeout) is dropped before its prefill and
stopped between decode steps, so abandoned work never delays the next request. Because the
server is a thread of the calling process (and the request threads run the engine's steps),
nothing outlives the process that started it.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from saelab.autointerp.engine import Cancelled, Engine, GenerationFailed, Request
from saelab.base.config import check_fields
from saelab.base.errors import UserError, check_host, listen_error

MAX_TOP_LOGPROBS = 20


class PromptTooLong(ValueError):
    """The prompt does not fit the model's positions (the server answers 400)."""


@dataclass
class ServeConfig:
    """Where and what to serve."""

    model: str = "smollm2-135m"
    """An embedded model name, a local HF folder or a .gguf file."""
    host: str = "127.0.0.1"
    """Listen address (loopback by default: nothing outside this machine can reach it)."""
    port: int = 0
    """Port; 0 picks a free one."""
    max_tokens: int = 512
    """Most completion tokens one request may ask for."""
    speculate: bool = True
    """Greedy requests verify prompt-lookup draft tokens in the same forward pass (the output
    is the greedy output, equal to the one-at-a-time output up to float rounding: an exact
    near-tie could flip a greedy token; `--no-speculate` decodes one token per pass)."""
    threads: int | None = None
    """Torch threads while serving. None: the cores not busy with other work when the server
    starts (at least 1): on a shared CPU, more threads than free cores make every forward
    pass several times slower."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UserError(f"`threads` must be at least 1, got {self.threads}")
        if not 0 <= self.port < 65536:
            raise UserError(f"`port` {self.port} is not a TCP port (0-65535; 0 picks a free one)")
        if self.max_tokens < 1:
            raise UserError(f"`max_tokens` must be at least 1, got {self.max_tokens}")
        check_host(self.host)


@dataclass
class Generation:
    text: str
    tokens: list[dict]
    """Per generated token: {"token", "logprob", "top": [(token, logprob), ...]}."""
    prompt_tokens: int
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)
    """The completion's token ids (end of sequence excluded)."""


@dataclass
class Stats:
    """What the server did (for tests and the benchmark)."""

    requests: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens whose KV cache came from an earlier request's shared prefix."""
    completion_tokens: int = 0


@dataclass
class Generator:
    """One causal LM and its tokenizer. `generate` may be called from many threads at once:
    a Llama-family model goes through `Engine` (requests in flight batched into one forward
    pass, prompt prefixes reused, greedy drafts verified); any other through transformers, one
    request at a time."""

    model: object
    tokenizer: object
    stats: Stats = field(default_factory=Stats)
    lean: bool = True
    """Serve a Llama-family model through `Engine` (False: through transformers)."""
    speculate: bool = True
    """Greedy requests verify prompt-lookup drafts (a draft is kept only where it is the greedy
    token; the output equals the one-at-a-time output up to float rounding, so an exact
    near-tie could flip a greedy token)."""
    engine: Engine | None = None
    """The engine (built from `model` when None and `lean`)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a forward pass runs."""
    _prefix: list[int] = field(default_factory=list)
    _cache: object = None
    _cache_name: str | None = None
    _stats_lock: threading.Lock = field(default_factory=threading.Lock)
    _text_lock: threading.Lock = field(default_factory=threading.Lock)
    """A fast tokenizer used from two threads at once can fail ("Already borrowed")."""

    def __post_init__(self) -> None:
        from saelab.autointerp.lean_llama import LeanLlama, supports

        if self.engine is None and self.lean and supports(self.model) is None:
            self.engine = Engine(LeanLlama(self.model), speculate=self.speculate)
        if self.engine is not None:
            self.lock = self.engine.lock

    @classmethod
    def load(cls, spec: str, lean: bool = True, speculate: bool = True) -> Generator:
        """`lean=False` serves through transformers whatever the model (the reference path)."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saelab.activations.models import resolve_model_folder

        transformers.utils.logging.disable_progress_bar()
        folder, _ = resolve_model_folder(spec)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer, lean=lean, speculate=speculate)

    def encode(self, messages: list[dict]) -> list[int]:
        with self._text_lock:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def decode(self, ids: list[int]) -> str:
        with self._text_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(
        self,
        messages: list[dict],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        top_logprobs: int = 0,
        stop: list[str] | None = None,
        cancelled=lambda: False,
    ) -> Generation:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        ids = self.encode(messages)
        if cancelled():
            raise Cancelled
        if self.engine is None:
            with self.lock:
                return self._generate_hf(
                    ids, max_tokens, temperature, seed, top_logprobs, stop, cancelled
                )
        import torch

        eos = _eos_ids(self.model, self.tokenizer)
        items, finish = [], ["length"]

        def accept(req: Request, token: int, logp) -> bool:
            if token in eos:
                finish[0] = "stop"
                return True
            req.out_ids.append(token)
            items.append(self._item(token, logp, top_logprobs))
            if stop and any(s in self.decode(req.out_ids) for s in stop):
                finish[0] = "stop"
                return True
            return len(req.out_ids) >= max_tokens

        if temperature > 0:
            sampler = torch.Generator().manual_seed(int(seed or 0))

            def choose(logits) -> int:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                return int(torch.multinomial(probs, 1, generator=sampler))
        else:

            def choose(logits) -> int:
                return int(logits.argmax())

        limit = self.engine.model.max_positions
        if len(ids) >= limit:
            raise PromptTooLong(
                f"the prompt has {len(ids)} tokens; this model takes at most {limit - 1}"
            )
        max_tokens = min(max_tokens, limit - len(ids))
        req = Request(ids, max_tokens, choose, temperature == 0, accept, cancelled)
        self.engine.run(req)
        return self._done(ids, req.out_ids, items, finish[0], stop, req.reused)

    def _done(self, ids, out_ids, items, finish, stop, reused) -> Generation:
        text = self.decode(out_ids)
        if stop:
            cut = [text.index(s) for s in stop if s in text]
            text = text[: min(cut)] if cut else text
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.prompt_tokens += len(ids)
            self.stats.completion_tokens += len(out_ids)
            self.stats.reused_prompt_tokens += reused
        return Generation(text, items, len(ids), finish, list(out_ids))

    def _generate_hf(self, ids, max_tokens, temperature, seed, top_logprobs, stop, cancelled):
        """The transformers path: one request, its own decode loop over a `DynamicCache`."""
        import torch

        eos = _eos_ids(self.model, self.tokenizer)
        sampler = None
        if temperature > 0:
            sampler = torch.Generator().manual_seed(int(seed or 0))
        with torch.inference_mode():
            logits, cache, reused = self._prefill(ids)
            out_ids, items, finish = [], [], "length"
            for step in range(max_tokens):
                logp = torch.log_softmax(logits.float(), dim=-1)
                if sampler is None:
                    token = int(logp.argmax())
                else:
                    probs = torch.softmax(logits.float() / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=sampler))
                if token in eos:
                    finish = "stop"
                    break
                out_ids.append(token)
                items.append(self._item(token, logp, top_logprobs))
                if stop and any(s in self.decode(out_ids) for s in stop):
                    finish = "stop"
                    break
                if step + 1 == max_tokens:
                    break
                if cancelled():
                    self._forget()
                    raise Cancelled
                output = self.model(
                    input_ids=torch.tensor([[token]]), use_cache=True, **self._cache_arg(cache)
                )
                logits = output.logits[0, -1]
            self._prefix = ids + out_ids[:-1] if out_ids else ids
        return self._done(ids, out_ids, items, finish, stop, reused)

    def _prefill(self, ids: list[int]):
        """Logits after the prompt, computing only the part not shared with the cached prefix."""
        import torch

        shared = 0
        for a, b in zip(self._prefix, ids[:-1]):  # keep at least one token to compute
            if a != b:
                break
            shared += 1
        cache = self._cache
        if cache is not None and shared >= 8:
            extra = cache.get_seq_length() - shared
            if extra > 0:
                cache.crop(-extra)
        else:
            from transformers import DynamicCache

            cache, shared = DynamicCache(config=self.model.config), 0
        self._cache, self._prefix = cache, []  # until this request finishes cleanly
        output = self.model(
            input_ids=torch.tensor([ids[shared:]]),
            use_cache=True,
            **self._cache_arg(cache),
            logits_to_keep=1,
        )
        return output.logits[0, -1], cache, shared

    def _cache_arg(self, cache) -> dict:
        """`cache=` where the model takes it (newer transformers), else `past_key_values=`."""
        if self._cache_name is None:
            import inspect

            names = inspect.signature(self.model.forward).parameters
            self._cache_name = "cache" if "cache" in names else "past_key_values"
        return {self._cache_name: cache}

    def _forget(self) -> None:
        self._cache, self._prefix = None, []

    def _item(self, token: int, logp, k: int) -> dict:
        item = {"token": self._piece(token), "logprob": float(logp[token]), "top": []}
        if k:
            values, indices = logp.topk(k)
            item["top"] = [(self._piece(int(i)), float(v)) for v, i in zip(values, indices)]
        return item

    def _piece(self, token: int) -> str:
        with self._text_lock:
            return self.tokenizer.decode([token])


def free_cores() -> int:
    """Cores not busy with other work right now (the 1-minute load average), at least 1."""
    import os

    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


class LocalServer:
    """The server in a background thread of this process; use as a context manager."""

    def __init__(self, cfg: ServeConfig | None = None, generator: Generator | None = None) -> None:
        self.cfg = cfg or ServeConfig()
        self.generator = generator
        self.model_id = ""
        """The model name the server lists (its spec, e.g. smollm2-135m)."""
        self.base_url = ""
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._threads_before: int | None = None
        self.busy: threading.Lock | None = None
        """Held while a forward pass runs (the generator's lock)."""
        self.stopping = threading.Event()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        import torch

        self.cfg.validate()
        self.stopping.clear()
        if self.generator is None:
            self.generator = Generator.load(self.cfg.model, speculate=self.cfg.speculate)
        self.busy = self.generator.lock
        self.model_id = self.cfg.model
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads or free_cores())
        try:
            self._http = _Server((self.cfg.host, self.cfg.port), _handler(self))
        except OSError as err:
            raise listen_error(self.cfg.host, self.cfg.port, err) from None
        port = self._http.server_address[1]
        self.base_url = f"http://{self.cfg.host}:{port}/v1"
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="saelab-llm-server", daemon=True
        )
        self._thread.start()

    @property
    def stats(self) -> Stats:
        return self.generator.stats

    def stop(self) -> None:
        self.stopping.set()  # a request in progress stops at its next decode step
        busy = self.busy
        if busy is not None and busy.acquire(timeout=60):  # torch not mid-forward at exit
            busy.release()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def wait(self) -> None:
        """Block until stopped (KeyboardInterrupt propagates to the caller)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that hung up is not the server's error
        super().handle_error(request, client_address)


def _hung_up(sock: socket.socket) -> bool:
    """True once the client closed its side of the connection."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _handler(server: LocalServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
            except ConnectionError:
                self.close_connection = True

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            path = self.path.rstrip("/")
            if path.endswith("/models"):
                model = {"id": server.model_id, "object": "model", "owned_by": "saelab"}
                self._send(200, {"object": "list", "data": [model]})
            elif path.endswith("/health"):
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                request = _parse_request(body, server.cfg.max_tokens)
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                return self._error(400, str(err) or "malformed request")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._error(404, f"no route {self.path}")
            asked = body.get("model")
            if asked not in (None, "", server.model_id):
                return self._send(404, {"error": {
                    "message": f"the model {asked!r} does not exist here; this server serves "
                    f"{server.model_id!r}", "type": "invalid_request_error",
                    "code": "model_not_found",
                }})  # fmt: skip

            def cancelled() -> bool:
                return server.stopping.is_set() or _hung_up(self.connection)

            try:
                result = server.generator.generate(**request, cancelled=cancelled)
            except Cancelled:
                with server.generator._stats_lock:
                    server.generator.stats.cancelled += 1
                self.close_connection = True
                return
            except PromptTooLong as err:
                return self._error(400, str(err))
            except Exception as err:  # a model error: the client sees a 500, the server lives
                name = "" if isinstance(err, GenerationFailed) else f"{type(err).__name__}: "
                return self._error(500, f"generation failed: {name}{err}")
            self._send(200, _response(body, request, result, server.model_id))

    return Handler


def _parse_request(body: dict, cap: int) -> dict:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("the request needs a list of messages")
    if body.get("stream"):
        raise ValueError("streaming is not supported by saelab's local server")
    messages = []
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content)
        messages.append({"role": str(m["role"]), "content": str(content or "")})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = 256 if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    temperature = body.get("temperature")
    temperature = 0.0 if temperature is None else float(temperature)
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2, got {temperature}")
    top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    stop = body.get("stop")
    return {
        "messages": messages,
        "max_tokens": min(max_tokens, cap),
        "temperature": temperature,
        "seed": body.get("seed"),
        "top_logprobs": top,
        "stop": [stop] if isinstance(stop, str) else list(stop or []),
    }


def _response(body: dict, request: dict, result: Generation, model_id: str) -> dict:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": result.text},
        "finish_reason": result.finish_reason,
        "logprobs": None,
    }
    if body.get("logprobs"):
        choice["logprobs"] = {
            "content": [
                {
                    "token": item["token"],
                    "logprob": _finite(item["logprob"]),
                    "top_logprobs": [{"token": t, "logprob": _finite(lp)} for t, lp in item["top"]],
                }
                for item in result.tokens
            ]
        }
    completion = len(result.tokens)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [choice],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion,
        },
    }


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -9999.0
