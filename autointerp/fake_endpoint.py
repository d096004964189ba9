"""A fault-injecting fake OpenAI-compatible endpoint, for tests, benchmarks and dry runs.

It serves `/v1/models` and `/v1/chat/completions` on 127.0.0.1. Each chat request takes the
next action of a script (then "ok" once the script is used up):

    ok            a well-formed answer from the responder
    401 / 429 / 500 / 503   that HTTP status (429 with Retry-After: 0)
    timeout       answer only after `hang_s` seconds (longer than the client waits)
    drop          close the connection without an answer
    garbage       HTTP 200 whose body is not JSON
    empty         a well-formed completion with empty content
    unparsable    a well-formed completion whose content answers nothing

The default responder writes answers of the right shape: a JSON list of 0/1 when the prompt
asks for "exactly N numbers", of 0–10 when it asks for "exactly N integers", else an
explanation line. `python -m saelab.autointerp.fake_endpoint --latency 0.2` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_COUNT = re.compile(r"exactly (\d+) (numbers|integers)")
Responder = Callable[[list[dict]], str]


def shaped_answer(messages: list[dict]) -> str:
    """An answer of the shape the prompt asks for (deterministic in the prompt)."""
    prompt = messages[-1]["content"]
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    matches = list(_COUNT.finditer(prompt))  # the last one: the prompt's own instruction
    match = matches[-1] if matches else None
    if not match:
        return "Explanation: tokens that the fake endpoint made up"
    n, high = int(match.group(1)), 1 if match.group(2) == "numbers" else 10
    return json.dumps([(seed >> (i % 24)) % (high + 1) for i in range(n)])


class FakeEndpoint:
    """Run with `with FakeEndpoint(script=[...]) as fake:`, then point a client at fake.base_url."""

    def __init__(
        self,
        script: list[str] | None = None,
        responder: Responder = shaped_answer,
        latency_s: float = 0.0,
        hang_s: float = 5.0,
        logprobs: bool = False,
        model: str = "fake-llm",
        port: int = 0,
    ) -> None:
        self.script = list(script or [])
        self.responder, self.latency_s, self.hang_s = responder, latency_s, hang_s
        self.logprobs, self.model = logprobs, model
        self.actions: Counter = Counter()
        """How many requests got each action."""
        self.requests: list[dict] = []
        """Every chat request body received (in arrival order)."""
        self.authorization: set[str] = set()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> FakeEndpoint:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def next_action(self, body: dict, authorization: str | None) -> str:
        with self._lock:
            action = self.script.pop(0) if self.script else "ok"
            self.actions[action] += 1
            self.requests.append(body)
            if authorization:
                self.authorization.add(authorization)
            return action

    def completion(self, body: dict, content: str) -> dict:
        choice = {"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": content}}  # fmt: skip
        if self.logprobs and body.get("logprobs"):
            choice["logprobs"] = {"content": _logprobs(content)}
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        return {
            "id": "fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_tokens + len(content.split())},
        }  # fmt: skip


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses connections under concurrency
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a timeout, a closed pooled connection) is not an error of
        the endpoint: say nothing, where socketserver would print a traceback to stderr."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _logprobs(content: str) -> list[dict]:
    """Tokens of the answer; each number n comes with alternative n+1 (p 0.25) beside it (p 0.75)."""
    items = []
    for token in re.findall(r"\d+|\D+", content):
        top = [{"token": token, "logprob": 0.0}]
        if token.isdigit():
            other = str((int(token) + 1) % 11)
            top = [
                {"token": token, "logprob": math.log(0.75)},
                {"token": other, "logprob": math.log(0.25)},
            ]
        items.append({"token": token, "logprob": top[0]["logprob"], "top_logprobs": top})
    return items


def _handler(fake: FakeEndpoint):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status >= 400:  # the client must not reuse a connection after an error
                    self.send_header("Connection", "close")
                    self.close_connection = True
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except ConnectionError:  # the client gave up (timeout)
                self.close_connection = True

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                data = {"object": "list", "data": [{"id": fake.model, "object": "model"}]}
                self._send(200, json.dumps(data).encode())
            else:
                self._send(200, b'{"status": "ok"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            action = fake.next_action(body, self.headers.get("Authorization"))
            if fake.latency_s:
                time.sleep(fake.latency_s)
            if action in ("401", "429", "500", "503"):
                error = {"error": {"message": f"scripted {action}", "type": "fake"}}
                headers = {"Retry-After": "0"} if action == "429" else None
                return self._send(int(action), json.dumps(error).encode(), headers)
            if action == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if action == "garbage":
                return self._send(200, b"<html>upstream exploded</html>")
            if action == "timeout":
                time.sleep(fake.hang_s)
            content = {"empty": "", "unparsable": "I am not sure what to say."}.get(action, None)
            if content is None:
                content = fake.responder(body["messages"])
            self._send(200, json.dumps(fake.completion(body, content)).encode())

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    with FakeEndpoint(latency_s=args.latency, port=args.port) as fake:
        print(f"fake endpoint at {fake.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
