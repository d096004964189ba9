"""saelab's local endpoint: answers and logprobs against a plain full forward pass, a timed-out
request cancelled on the server, `saelab llm-serve` stopping on SIGTERM with nothing left, and
`saelab explain` through it with the scorers reading next-token probabilities."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from saelab import resultstore as results
from saelab.autointerp.server import LocalServer, ServeConfig


def children(pid: int) -> list[int]:
    """Child processes of `pid` (all its threads')."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_answers_and_logprobs_match_a_full_forward_pass(local_generator):
    import torch

    tok, model = local_generator.tokenizer, local_generator.model
    system = "You are a careful assistant who answers briefly."
    asked = []
    with LocalServer(generator=local_generator) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        reused_before = server.stats.reused_prompt_tokens
        for topic in ("rivers", "mountains"):  # the second reuses the shared prefix's cache
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"Name three facts about {topic}."}]  # fmt: skip
            reply = client.chat.completions.create(
                model=server.model_id, messages=messages, max_tokens=6, temperature=0,
                logprobs=True, top_logprobs=3,
            )  # fmt: skip
            asked.append((messages, reply))
        assert server.stats.reused_prompt_tokens - reused_before > 10
    for messages, reply in asked:
        ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=False))  # fmt: skip
        assert reply.usage.prompt_tokens == len(ids)
        content = reply.choices[0].logprobs.content
        assert len(content) == reply.usage.completion_tokens == 6
        for item in content:  # greedy decoding, every step a fresh pass over the whole sequence
            with torch.inference_mode():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            best = int(logp.argmax())
            assert item.token == tok.decode([best])
            assert item.logprob == pytest.approx(float(logp[best]), abs=2e-3)
            top = logp.topk(3)
            assert [t.token for t in item.top_logprobs] == [
                tok.decode([int(i)]) for i in top.indices
            ]
            for t, v in zip(item.top_logprobs, top.values):
                assert t.logprob == pytest.approx(float(v), abs=2e-3)
            ids.append(best)
        assert reply.choices[0].message.content == tok.decode(ids[-6:], skip_special_tokens=True)


def test_a_timed_out_request_is_cancelled_on_the_server(local_generator):
    counting = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
    with LocalServer(ServeConfig(max_tokens=2000), generator=local_generator) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=1.5)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(
                model=server.model_id, messages=counting, max_tokens=2000
            )
        deadline = time.monotonic() + 10
        while server.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stats.cancelled == 1  # stopped between decode steps, not run to the end
        started = time.monotonic()
        short = client.with_options(timeout=30).chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert short.usage.completion_tokens <= 2 and time.monotonic() - started < 10


def test_llm_serve_stops_on_sigterm_and_leaves_no_process():
    port = free_port()
    command = [sys.executable, "-m", "saelab.cli", "llm-serve", "--port", str(port)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line, child.stderr.read()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            assert json.load(r)["data"][0]["id"] == "smollm2-135m"
        assert children(child.pid) == []  # the server is a thread, never a child process
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0
    finally:
        if child.poll() is None:
            child.kill()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_explain_through_the_local_server_reads_answers_from_logprobs(
    interp_db, local_generator, tmp_path
):
    from saelab.autointerp.config import ExplainConfig, WindowConfig
    from saelab.autointerp.pipeline import explain_features

    path, sae_id = interp_db
    db = str(tmp_path / "results.duckdb")
    shutil.copy(path, db)
    with results.ResultsStore(db).reading() as con:
        (feature,) = con.execute(
            "SELECT min(feature) FROM features WHERE sae_id = ? AND n_active >= 40", [sae_id]
        ).fetchone()
    cfg = ExplainConfig(
        db=db, sae=sae_id, features=str(feature), scorers=["detection", "fuzzing"],
        windows=WindowConfig(explain_top=4, score_activating=4, score_nonactivating=4),
        progress=False,
    )  # fmt: skip
    summary = explain_features(cfg, generator=local_generator)
    assert summary.features == [feature] and summary.usage.requests > 0
    scores = results.interp_scores(results.ResultsStore(db))
    assert {(r["explainer"], r["scorer"]) for r in scores} == {
        (e, s) for e in ("examples", "baseline") for s in ("detection", "fuzzing")
    }
    for r in scores:  # a 135M model gives valid, if weak, answers this way
        assert r["status"] == "ok" and r["n_valid"] == r["n_windows"] > 0, r
        assert 0.0 <= r["value"] <= 1.0
        scorer = json.loads(r["provenance_json"])["scorer"]
        assert scorer["answer"].startswith("next-token probabilities") and scorer["batch_size"] == 1
        assert scorer["model"] == "smollm2-135m"
    with results.ResultsStore(db).reading() as con:
        run = con.execute("SELECT status, message, latents_done FROM autointerp_runs").fetchall()
    assert run == [("finished", None, 1)]


def test_requests_the_server_cannot_honour_are_refused(local_generator):
    """A bad max_tokens or temperature, or a prompt longer than the model's positions, is a 400,
    another model's name a 404 (never answered as if it were that model), and every answer names
    the model that wrote it."""

    def post(base_url: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{base_url}/chat/completions", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    hi = [{"role": "user", "content": "Hi"}]
    with LocalServer(ServeConfig(), generator=local_generator) as server:
        for bad in (-1, 0, 1.5, "3"):
            status, body = post(server.base_url, {"messages": hi, "max_tokens": bad})
            assert status == 400 and "max_tokens" in body["error"]["message"], bad
        status, body = post(server.base_url, {"messages": hi, "max_tokens": 1, "temperature": -1})
        assert status == 400 and "temperature" in body["error"]["message"]
        long = [{"role": "user", "content": " hello" * 9000}]  # the model takes 8191 tokens
        status, body = post(server.base_url, {"messages": long, "max_tokens": 1})
        message = body["error"]["message"]
        assert status == 400 and "the prompt has" in message and "\n" not in message, message
        status, body = post(server.base_url, {"messages": hi, "max_tokens": 1, "model": "gpt-4o"})
        assert status == 404 and body["error"]["code"] == "model_not_found"
        status, body = post(server.base_url, {"messages": hi, "max_tokens": 1})
        assert status == 200 and body["model"] == server.model_id == "smollm2-135m"
