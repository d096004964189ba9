"""`explain_features`: explain and score latents of one SAE from the results store.

Latents run concurrently (the client caps requests in flight). Finished latents are written in
batches, each in one transaction with its LLM-cache entries and the run's counters, so a killed
run loses at most the last second of work, and a rerun with the same configuration skips every
latent already written (and pays nothing for requests already cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace

from saelab import resultstore as results
from saelab.autointerp.client import EndpointError, LLMClient, Usage, first_model
from saelab.autointerp.config import ExplainConfig
from saelab.autointerp.latent import LatentResult, interpret
from saelab.autointerp.windows import split_windows
from saelab.base.errors import UserError

BLOCK = 256
"""Latents whose examples are read from the store at a time."""
FLUSH_S = 1.0
LOCAL_CONCURRENCY = 4
"""Requests in flight against the local server (it decodes them together in one forward pass:
one latent's scoring requests, which share their prompt up to the excerpt, go out at once)."""
REMOTE_CONCURRENCY = 8
"""Requests in flight against a remote endpoint unless the user says otherwise."""


@dataclass
class ExplainSummary:
    run_id: str
    sae_id: str
    features: list[int]
    skipped: int
    """Latents already finished by an earlier run with this configuration."""
    usage: Usage
    seconds: float


NO_ENDPOINT = "http://127.0.0.1:9/v1"
"""The endpoint of a run whose explainers and scorers ask no LLM (port 9 is discard: a request
sent there by mistake fails at once)."""


def needs_no_llm(cfg: ExplainConfig) -> bool:
    """Whether every chosen explainer and scorer works without a language model."""
    from saelab.autointerp.registry import OFFLINE

    return set(cfg.explainers) | set(cfg.scorers) <= OFFLINE


def _enough_examples(row: results.FeatureRow) -> bool:
    return not row.dead and not row.too_few_examples and (row.max_act or 0) > 0


def select_features(cfg: ExplainConfig, d_sae: int, live: list[int] | None = None) -> list[int]:
    """The latents to explain: `cfg.features`, or a seeded sample of `live` (the latents with
    enough examples; None: every latent)."""
    if cfg.sample is not None:
        pool = list(range(d_sae)) if live is None else sorted(live)
        rng = random.Random(cfg.llm.seed)
        return sorted(rng.sample(pool, min(cfg.sample, len(pool))))
    spec = cfg.features or "0:20"
    try:
        if ":" in spec:
            start, stop = (p.strip() for p in spec.split(":", 1))
            start, stop = int(start or 0), int(stop or d_sae)
            chosen = list(range(start, stop))
        else:
            chosen = sorted({int(p) for p in spec.split(",") if p.strip()})
    except ValueError:
        raise UserError(f"--features {spec!r}: give a range a:b or a list like 3,7,9") from None
    bad = [f for f in chosen if not 0 <= f < d_sae][-1:]
    if bad or not chosen:
        raise UserError(
            f"--features {spec!r} selects {'latent ' + str(bad[0]) if bad else 'no latents'}; "
            f"this SAE has latents 0 … {d_sae - 1}"
        )
    return chosen


def explain_features(
    cfg: ExplainConfig, generator=None, store: results.ResultsStore | None = None
) -> ExplainSummary:
    """Explain and score the chosen latents (serving the embedded model locally if no endpoint
    is given; `generator` is an already-loaded `server.Generator` to serve; `store`
    the results file when the caller has opened it already).

    Every way out leaves the run's row in `autointerp_runs` saying how it ended: finished,
    failed (with the endpoint's error) or interrupted (Ctrl-C, SIGTERM); a killed process leaves
    it at running with its last counters. A rerun with the same configuration continues.
    """
    cfg.validate()
    if store is None:
        store = results.ResultsStore(cfg.db, mode="update")  # must exist: it holds the examples
    sae = results.find_sae(store, cfg.sae)
    if not results.feature_stats_exist(store, sae.sae_id):
        raise UserError(
            f"SAE {sae.name} has no feature examples in {cfg.db}; "
            "run `saelab eval --evals features` on it first"
        )
    live = None
    if cfg.sample is not None:  # a dead or rare latent would only say "insufficient examples"
        stats = results.feature_stats(store, sae.sae_id)
        live = [f for f, r in stats.items() if _enough_examples(r)] or [
            f for f, r in stats.items() if not r.dead and (r.max_act or 0) > 0
        ]
    features = select_features(cfg, sae.d_sae, live)
    with contextlib.ExitStack() as stack:
        if not cfg.llm.base_url and needs_no_llm(cfg):
            # nothing will ask a model: a placeholder endpoint, never contacted
            llm = replace(
                cfg.llm,
                base_url=NO_ENDPOINT,
                model=cfg.llm.model or "none",
                concurrency=cfg.llm.concurrency or REMOTE_CONCURRENCY,
            )
            cfg = replace(cfg, llm=llm)
        elif not cfg.llm.base_url:  # the offline default: the embedded model, served locally
            from saelab.autointerp.server import LocalServer, ServeConfig

            served = ServeConfig().model
            if cfg.llm.model and cfg.llm.model != served:  # before the model loads
                raise UserError(
                    f"the local server serves {served!r}, not {cfg.llm.model!r}: leave `model` "
                    "out, or give `base_url` of an endpoint that serves it"
                )
            server = stack.enter_context(LocalServer(ServeConfig(), generator=generator))
            llm = replace(
                cfg.llm,
                base_url=server.base_url,
                model=cfg.llm.model or server.model_id,
                concurrency=cfg.llm.concurrency or LOCAL_CONCURRENCY,
            )
            cfg = replace(cfg, llm=llm)
        elif not cfg.llm.concurrency:
            cfg = replace(cfg, llm=replace(cfg.llm, concurrency=REMOTE_CONCURRENCY))
        try:
            return _run_to_completion(_run(cfg, store, sae, features))
        except asyncio.CancelledError:  # SIGTERM cancels the run: report it as an interruption
            raise KeyboardInterrupt from None


def _run_to_completion(coroutine):
    """asyncio.run, also from inside a running event loop (a notebook): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextlib.contextmanager
def _sigterm_cancels(task: asyncio.Task):
    """SIGTERM cancels the run like Ctrl-C does (only possible in the main thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run(
    cfg: ExplainConfig, store: results.ResultsStore, sae: results.SAERow, features: list[int]
) -> ExplainSummary:
    started = time.monotonic()
    sae_id = sae.sae_id
    flush_lock = threading.Lock()

    def read(fn, *args):
        return fn(store, *args)

    if not cfg.llm.model:
        try:
            cfg = replace(cfg, llm=replace(cfg.llm, model=await first_model(cfg.llm)))
        except EndpointError as err:  # no model to name the run by; record it all the same
            run = _RunRecord(uuid.uuid4().hex[:16], sae_id, cfg, cfg.fingerprint(), "")
            await asyncio.to_thread(_write_run_only, store, flush_lock, run, "failed", str(err))
            raise
    fingerprint = cfg.fingerprint()
    config_hash = results.config_hash(fingerprint)
    n_rows = len(cfg.explainers) * (1 + len(cfg.scorers))
    done = await asyncio.to_thread(read, results.finished_features, sae_id, config_hash, n_rows)
    todo = [f for f in features if f not in done]
    cache = await asyncio.to_thread(read, results.cached_responses, sae_id, todo)
    client = LLMClient(cfg.llm, cache=cache)
    run = _RunRecord(uuid.uuid4().hex[:16], sae_id, cfg, fingerprint, config_hash)
    writer = _Writer(store, flush_lock, run, client, sae)
    await asyncio.to_thread(writer.flush, "running")  # the row exists before any request
    source = _ExampleSource(read, sae, cfg, wanted=todo)
    progress = _progress(cfg, len(todo), client.usage, started)
    in_flight = asyncio.Semaphore(max(2, 2 * cfg.llm.concurrency))

    async def one(feature: int) -> None:
        async with in_flight:
            windows = await source.windows(feature)
            result = await interpret(client, windows, feature, (sae_id, feature), cfg, store)
            writer.add(result, windows_run_id=source.run_id)
            progress.update()

    flusher = asyncio.create_task(writer.loop())
    tasks = [asyncio.create_task(one(f)) for f in todo]
    status, message = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
    try:
        with _sigterm_cancels(asyncio.current_task()):
            await asyncio.gather(*tasks)
        status, message = "finished", None
    except EndpointError as err:
        status, message = "failed", str(err)
        raise EndpointError(
            f"{err}; {writer.finished} latents of {len(todo)} finished and saved, "
            "rerun the same command to continue"
        ) from None
    except Exception as err:
        status, message = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.stop.set()
        await asyncio.gather(flusher, return_exceptions=True)
        progress.close()
        await client.close()
        # last: whatever ended the run, its row says so
        try:
            await asyncio.to_thread(writer.flush, status, message)
        except Exception:
            if status == "finished":
                raise  # otherwise the error that ended the run is the one to report
    return ExplainSummary(
        run.run_id, sae_id, features, len(done), client.usage, time.monotonic() - started
    )


def _write_run_only(
    store: results.ResultsStore, lock: threading.Lock, run: _RunRecord, status: str, message: str
):
    row = run.row(status, 0, Usage(), 0, message)
    with lock:
        results.write_interp_batch(store, results.InterpBatch([], [], [], row))


class _ExampleSource:
    """Reads latents' example windows from the store a block at a time."""

    def __init__(
        self, read, sae: results.SAERow, cfg: ExplainConfig, wanted: list[int] | None = None
    ) -> None:
        self.read, self.sae, self.cfg = read, sae, cfg
        self.wanted = None if wanted is None else set(wanted)
        """The latents that will be asked for (None: any): a block reads only these."""
        self.blocks: dict[int, asyncio.Task] = {}
        self.run_id = None

    async def windows(self, feature: int):
        block = feature // BLOCK
        if block not in self.blocks:
            self.blocks[block] = asyncio.create_task(asyncio.to_thread(self._load, block))
        rows, stats, vocab = await self.blocks[block]
        mine = [r for r in rows if r.feature == feature]
        self.run_id = self.run_id or (mine[0].run_id if mine else None)
        stat = stats.get(feature)
        max_act = float(stat.max_act or 0.0) if stat is not None else 0.0
        seed = self.cfg.llm.seed * 1_000_003 + feature
        return split_windows(mine, vocab, max_act, self.cfg.windows, seed)

    def _load(self, block: int):
        features = list(range(block * BLOCK, (block + 1) * BLOCK))
        if self.wanted is not None:  # a sparse sample reads a few latents, not whole blocks
            features = [f for f in features if f in self.wanted]
        rows = self.read(results.feature_examples, self.sae.sae_id, features)
        stats = self.read(results.feature_stats, self.sae.sae_id, features)
        ids = sorted({t for r in rows for t in r.tokens})
        vocab = self.read(results.token_strings, self.sae.model_sha256 or "", ids)
        return rows, stats, vocab


@dataclass
class _RunRecord:
    run_id: str
    sae_id: str
    cfg: ExplainConfig
    fingerprint: dict
    config_hash: str

    def row(
        self, status: str, latents_done: int, usage: Usage, unparsable: int, message: str | None
    ) -> results.AutointerpRunRow:
        from saelab.base import __version__

        config = asdict(self.cfg)
        config["llm"].pop("api_key_env", None)  # the variable's name is harmless; keep rows lean
        return results.AutointerpRunRow(
            run_id=self.run_id, sae_id=self.sae_id,
            config_json=json.dumps(config, default=str), config_hash=self.config_hash,
            status=status, latents_done=latents_done, requests=usage.requests,
            cache_hits=usage.cache_hits, retries=usage.retries, unparsable=unparsable,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            saelab_version=__version__, message=message,
        )  # fmt: skip


class _Writer:
    """Collects finished latents and writes them in batches (one transaction each)."""

    def __init__(
        self,
        store: results.ResultsStore,
        lock: threading.Lock,
        run: _RunRecord,
        client: LLMClient,
        sae: results.SAERow,
    ):
        self.store, self.lock, self.run, self.client, self.sae = store, lock, run, client, sae
        self.pending: list[tuple[LatentResult, list, str | None]] = []
        self.latents_done = 0
        self.unparsable = 0
        self.stop = asyncio.Event()
        """Set when the run ends; the periodic flusher then returns (the caller flushes last)."""

    @property
    def finished(self) -> int:
        """Latents finished so far, written or about to be."""
        return self.latents_done + len(self.pending)

    def add(self, result: LatentResult, windows_run_id: str | None) -> None:
        entries = self.client.take_new_entries((self.sae.sae_id, result.feature))
        self.pending.append((result, entries, windows_run_id))

    async def loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), FLUSH_S)
            if self.pending and not self.stop.is_set():
                await asyncio.to_thread(self.flush, "running")

    def flush(self, status: str, message: str | None = None) -> None:
        with self.lock:  # one flush at a time, so the last status written is the last one set
            self._flush(status, message)

    def _flush(self, status: str, message: str | None) -> None:
        batch, self.pending = self.pending, []
        explanations, scores, cache = [], [], []
        sae_id, run = self.sae.sae_id, self.run
        for result, entries, features_run in batch:
            by_explainer = {}
            for e in result.explanations:
                provenance = dict(e.provenance, features_run=features_run)
                by_explainer[e.explainer] = provenance
                self.unparsable += e.status == "unparsable"
                explanations.append(results.ExplanationRow(
                    sae_id=sae_id, feature=result.feature, explainer=e.explainer,
                    status=e.status, explanation=e.text, n_examples=provenance.get("n_examples"),
                    provenance_json=json.dumps(provenance), config_hash=run.config_hash,
                    run_id=run.run_id,
                ))  # fmt: skip
            for explainer, s in result.scores:
                self.unparsable += s.n_failures
                provenance = {
                    "explainer": by_explainer.get(explainer),
                    "scorer": s.provenance,
                    "bootstrap": run.cfg.bootstrap,
                    "ci_level": 0.95,
                }
                scores.append(results.ScoreRow(
                    sae_id=sae_id, feature=result.feature, explainer=explainer, scorer=s.scorer,
                    status=s.status, value=s.value, ci_low=s.ci[0] if s.ci else None,
                    ci_high=s.ci[1] if s.ci else None, n_windows=s.n_windows,
                    n_valid=s.n_valid, n_failures=s.n_failures, n_positive=s.n_positive,
                    n_negative=s.n_negative, provenance_json=json.dumps(provenance),
                    config_hash=run.config_hash, run_id=run.run_id,
                ))  # fmt: skip
            cache += [
                results.LLMCacheRow(key, sae_id, result.feature, self.client.cfg.model, req, resp)
                for key, req, resp in entries
            ]
        self.latents_done += len(batch)
        row = run.row(status, self.latents_done, self.client.usage, self.unparsable, message)
        results.write_interp_batch(
            self.store, results.InterpBatch(explanations, scores, cache, row)
        )


class _Progress:
    def __init__(self, bar, usage: Usage, started: float):
        self.bar, self.usage, self.started = bar, usage, started

    def update(self) -> None:
        if self.bar is None:
            return
        minutes = max(time.monotonic() - self.started, 1e-9) / 60
        self.bar.set_postfix_str(
            f"{(self.bar.n + 1) / minutes:.1f} latents/min, {self.usage.tokens} tokens, "
            f"{self.usage.cache_hits} cached"
        )
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(cfg: ExplainConfig, total: int, usage: Usage, started: float) -> _Progress:
    from tqdm.auto import tqdm  # notebook-aware

    bar = (
        tqdm(total=total, unit="latent", desc="explain", disable=not cfg.progress)
        if cfg.progress
        else None
    )
    return _Progress(bar, usage, started)
