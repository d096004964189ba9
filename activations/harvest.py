"""The harvester: run the model over a corpus once and write hook activations to a store.

Several hooks come from one forward pass that stops after the last layer they need. The
model computes chunk c+1 while a writer thread compresses and writes chunk c. Resuming
recomputes the deterministic sequence stream, skips the committed chunks, and continues, so a
store filled in several sittings is identical to one filled in one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.activations import corpus as corpus_mod
from saelab.activations import store as store_mod
from saelab.activations.models import DEFAULT_MODEL, LoadedModel, load_model
from saelab.base.config import check_device, check_fields
from saelab.base.errors import UserError
from saelab.base.fs import disk_error

NONFINITE_POLICIES = ("error", "drop", "keep")
# What must match for `--resume` to continue a store rather than refuse it.
FINGERPRINT = (
    "model",
    "model_sha256",
    "dataset",
    "split",
    "text_column",
    "seq_len",
    "bos",
    "dtype",
    "hooks",
    "requested_sequences",
    "chunk_seqs",
    "n_shards",
)


@dataclass
class HarvestConfig:
    """What to harvest and where. `saelab harvest` builds exactly this."""

    out: str
    """Store location: a local path or any fsspec URL (file://, s3://, gs://, memory://)."""
    model: str = DEFAULT_MODEL
    """Model spec: embedded alias, local HF folder, .gguf file, or hub name."""
    dataset: str = "builtin"
    """Corpus spec: builtin[:speeches|:wikipedia|:news|:shakespeare], a local
    file/folder, or a `datasets` name[:split]."""
    hooks: list[str] = field(default_factory=lambda: ["blocks.8.hook_resid_post"])
    """transformer-lens hook names, all read in one forward pass."""
    tokens: int = 200_000
    """Tokens to harvest (rounded up to whole sequences)."""
    seq_len: int = 128
    """Tokens per sequence, BOS included."""
    bos: str = "prepend"
    """BOS policy: `prepend` (every sequence starts with BOS; loaders mask it) or `none`."""
    dtype: str = "float16"
    """Storage dtype: float16, bfloat16 (raw 16-bit) or float32."""
    batch_size: int = 16
    """Sequences per forward pass."""
    chunk_seqs: int = 64
    """Sequences per zarr chunk (a multiple of batch_size); the unit of commit and resume."""
    split: str = "train"
    """Split for hub datasets."""
    text_column: str = "text"
    """Column holding the text."""
    shard: tuple[int, int] = (0, 1)
    """(i, n): this worker fills the i-th of n disjoint chunk ranges of one store."""
    nonfinite: str = "drop"
    """Sequences with NaN/inf activations: `error` stops, `drop` marks them invalid, `keep` keeps them."""
    resume: bool = False
    """Continue an existing store with the same config; with no store there yet, start one (so
    one command line both starts and resumes a long harvest)."""
    overwrite: bool = False
    """Replace an existing store."""
    device: str = "cpu"
    """Torch device for the model."""
    progress: bool = True
    """Show a progress bar with tokens/s and ETA."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if not self.out.strip():
            raise UserError("--out is empty; give the store's path, e.g. --out acts.zarr")
        if not self.model.strip():
            raise UserError("--model is empty; give a model spec, e.g. --model smollm2-135m")
        if self.dtype not in store_mod.STORAGE_DTYPES:
            raise UserError(
                f"unknown --dtype {self.dtype!r}: choose {', '.join(store_mod.STORAGE_DTYPES)}"
            )
        if self.nonfinite not in NONFINITE_POLICIES:
            raise UserError(
                f"unknown --nonfinite {self.nonfinite!r}: choose {', '.join(NONFINITE_POLICIES)}"
            )
        if self.bos not in corpus_mod.BOS_POLICIES:
            raise UserError(
                f"unknown --bos {self.bos!r}: choose {', '.join(corpus_mod.BOS_POLICIES)}"
            )
        if not self.hooks:
            raise UserError(
                "no hooks given; pass --hooks blocks.L.hook_resid_post (several allowed)"
            )
        if len(set(self.hooks)) != len(self.hooks):
            raise UserError("a hook is listed twice in --hooks")
        for name, value in (
            ("tokens", self.tokens),
            ("seq-len", self.seq_len),
            ("batch-size", self.batch_size),
            ("chunk-seqs", self.chunk_seqs),
        ):
            if value < 1:
                raise UserError(f"--{name} must be positive, got {value}")
        if self.chunk_seqs % self.batch_size:
            raise UserError(
                f"--chunk-seqs {self.chunk_seqs} must be a multiple of --batch-size {self.batch_size}"
            )
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise UserError(f"--shard {i}/{n} is invalid: use i/n with 0 <= i < n")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pick one")
        check_device(self.device)


@dataclass
class HarvestResult:
    """What a harvest did."""

    out: str
    sequences: int
    tokens: int
    seconds: float
    nonfinite_sequences: int
    complete: bool

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def harvest(cfg: HarvestConfig, model: LoadedModel | None = None) -> HarvestResult:
    """Fill (or continue filling) the store `cfg.out`; returns what this call wrote."""
    cfg.validate()
    store_mod.refuse_inside_store(_parent(cfg.out), "a new store")
    # Before the model loads: fail fast. This also refuses (with --resume or --overwrite too)
    # a location that holds something other than a saelab store, which creating would wipe.
    existing = _existing_attrs(cfg.out)
    if existing is not None and not (cfg.resume or cfg.overwrite):
        _refuse_existing(cfg.out, existing)
    model = model or load_model(cfg.model, device=cfg.device)
    # Each hook's real per-token shape; refuses what cannot be stored before any harvesting.
    shapes = model.hook_shapes(cfg.hooks)
    # A resumed store keeps the builtin corpus version it was started from.
    version = (existing or {}).get("builtin_version") if cfg.resume else None
    dataset = corpus_mod.load_corpus(cfg.dataset, cfg.split, cfg.text_column, version)
    stream = corpus_mod.iter_sequences(dataset, model.tokenizer, cfg.seq_len, cfg.bos)
    first = next(stream, None)
    if first is None:
        raise UserError(
            f"dataset {cfg.dataset!r} yields no sequence of {cfg.seq_len} tokens; "
            "use a shorter --seq-len or more text"
        )
    stream = itertools.chain([first], stream)
    attrs = _store_attrs(cfg, model, shapes, version)
    n_seq = attrs["requested_sequences"]
    if existing is None or cfg.overwrite:
        check_size(cfg, dataset, attrs["hooks"])
    group = _open_or_create(cfg, attrs, n_seq)
    return _run(cfg, model, group, stream, n_seq)


def check_size(cfg: HarvestConfig, dataset, widths: dict[str, int]) -> None:
    """Refuse a size the corpus cannot fill or the disk cannot hold, before any work.

    The corpus bound is generous: every text token covers at least one byte of UTF-8 text
    (plus one spare token per document for a tokenizer's word-start marker)."""
    import pyarrow.compute as pc

    column = dataset.data.column("text")
    text_bytes = int(pc.sum(pc.binary_length(column)).as_py() or 0)
    body = cfg.seq_len - (1 if cfg.bos == "prepend" else 0)
    max_seqs = (text_bytes + len(dataset)) // max(body, 1)
    n_seq = math.ceil(cfg.tokens / cfg.seq_len)
    if n_seq > max_seqs:
        raise UserError(
            f"{cfg.tokens:,} tokens asked, but corpus {cfg.dataset!r} holds at most "
            f"{max_seqs * cfg.seq_len:,} ({text_bytes:,} bytes of text in {len(dataset):,} "
            "documents); ask for fewer tokens or a bigger corpus"
        )
    itemsize = 4 if cfg.dtype == "float32" else 2
    need = n_seq * (cfg.seq_len * (4 + itemsize * sum(widths.values())) + 17)
    free = store_mod.free_bytes(cfg.out)
    if free is not None and need > free:
        raise UserError(
            f"the store would need about {_gib(need)} but only {_gib(free)} is free at "
            f"{cfg.out!r}; harvest fewer tokens, fewer hooks, a 16-bit dtype or another location"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def _store_attrs(
    cfg: HarvestConfig,
    model: LoadedModel,
    shapes: dict[str, list[int]],
    builtin_version: int | None = None,
) -> dict:
    tok = model.tokenizer
    return {
        "model": cfg.model,
        "model_name": model.name,
        "model_sha256": model.weights_sha256,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "tokenizer": getattr(tok, "name_or_path", "") or model.name,
        "bos_token_id": corpus_mod.bos_token_id(tok) if cfg.bos == "prepend" else None,
        "special_token_ids": sorted(int(i) for i in tok.all_special_ids),
        "dataset": cfg.dataset,
        "split": cfg.split,
        "text_column": cfg.text_column,
        "builtin_version": (builtin_version or corpus_mod.BUILTIN_VERSION)
        if cfg.dataset.startswith("builtin")
        else None,
        "seq_len": cfg.seq_len,
        "bos": cfg.bos,
        "dtype": cfg.dtype,
        # Stored flat: [n_seq, seq_len, width]; `hook_layout` records how to unflatten
        # (per-head hooks such as attn.hook_z are [n_heads, d_head]).
        "hooks": {h: math.prod(shapes[h]) for h in cfg.hooks},
        "hook_layout": {h: {"shape": shapes[h]} for h in cfg.hooks},
        "requested_sequences": math.ceil(cfg.tokens / cfg.seq_len),
        "chunk_seqs": cfg.chunk_seqs,
        "n_shards": cfg.shard[1],
        "nonfinite_policy": cfg.nonfinite,
        "config": dataclasses.asdict(cfg),
    }


def _open_or_create(cfg: HarvestConfig, attrs: dict, n_seq: int):
    existing = _existing_attrs(cfg.out)
    # a store killed while it was being created holds nothing committed: resume recreates it
    unfinished = existing is not None and existing.get("creating") and cfg.resume
    if existing is not None and not cfg.overwrite and not unfinished:
        if not cfg.resume:
            _refuse_existing(cfg.out, existing)
        diffs = [k for k in FINGERPRINT if _norm(existing.get(k)) != _norm(attrs.get(k))]
        if diffs:
            detail = "; ".join(
                f"{k}: store has {existing.get(k)!r}, asked {attrs.get(k)!r}" for k in diffs
            )
            raise UserError(
                f"cannot resume {cfg.out!r}, its config differs ({detail}); use --overwrite or another --out"
            )
        return store_mod.open_group(cfg.out, mode="r+")
    hooks = attrs.pop("hooks")
    return store_mod.create(cfg.out, attrs, hooks, n_seq, cfg.chunk_seqs, cfg.shard[1])


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _refuse_existing(url: str, existing: dict) -> None:
    raise UserError(
        f"store {url!r} already exists ({existing.get('committed_sequences', '?')} sequences "
        "committed); pass --resume to continue it or --overwrite to replace it"
    )


def _norm(value):
    return json.loads(json.dumps(value))  # tuples vs lists, as JSON attributes come back


def _existing_attrs(url: str) -> dict | None:
    """The saelab store's attributes at `url`; None where nothing is there or an empty folder.

    Anything else (a file, a folder with files, a foreign zarr group) is a `UserError`."""
    return store_mod.existing_attrs(url)


def _run(cfg: HarvestConfig, model: LoadedModel, group, stream, n_seq: int) -> HarvestResult:
    chunk_seqs, (shard, n_shards) = cfg.chunk_seqs, cfg.shard
    owned = store_mod.shard_chunks(math.ceil(n_seq / chunk_seqs), shard, n_shards)
    done = int(group["progress"][shard])
    # A resumed harvest also recomputes committed chunks whose files are missing or damaged.
    repair = _damaged_chunks(cfg.out, owned[:done]) if cfg.resume and done else []
    todo = repair + ([] if group.attrs.get("exhausted") else list(owned[done:]))
    first_seq = owned.start * chunk_seqs
    stop_seq = min(owned.stop * chunk_seqs, n_seq)
    begin = todo[0] if todo else owned.start + done
    stream = itertools.islice(stream, begin * chunk_seqs, stop_seq)
    stop_layer = model.stop_layer(cfg.hooks)
    writer = _ChunkWriter(group, cfg, shard, done)
    bar = _progress_bar(
        cfg, total=(stop_seq - first_seq) * cfg.seq_len, initial=done * chunk_seqs * cfg.seq_len
    )
    t0, written, nonfinite, short_at = time.perf_counter(), 0, 0, None
    try:
        wanted = set(todo)
        for chunk in range(begin, owned.stop) if todo else ():
            expected = min((chunk + 1) * chunk_seqs, n_seq) - chunk * chunk_seqs
            seqs = list(itertools.islice(stream, expected))
            if chunk not in wanted:
                continue  # intact and committed: the stream just moves past it
            if seqs:
                payload = _compute_chunk(model, seqs, cfg, stop_layer)
                payload["repair"] = chunk in repair
                nonfinite += int(payload["nonfinite"].sum()) * (not payload["repair"])
                writer.put(chunk, payload)
                written += len(seqs)
                bar.update(len(seqs) * cfg.seq_len)
            if len(seqs) < expected:
                short_at = chunk * chunk_seqs + len(seqs)  # the corpus ran out here
                break
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if short_at is not None:
        _shrink(group, cfg, short_at)
    complete = _mark_complete(group, cfg)
    return HarvestResult(cfg.out, written, written * cfg.seq_len, seconds, nonfinite, complete)


def _compute_chunk(
    model: LoadedModel, seqs: list, cfg: HarvestConfig, stop_layer: int | None
) -> dict:
    tokens = np.stack([s.tokens for s in seqs])
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in cfg.hooks}
    with torch.inference_mode():
        for start in range(0, len(seqs), cfg.batch_size):
            batch = torch.from_numpy(tokens[start : start + cfg.batch_size]).long().to(cfg.device)
            _, cache = model.bridge.run_with_cache(
                batch,
                names_filter=list(cfg.hooks),
                stop_at_layer=stop_layer,
                return_cache_object=False,
            )
            for hook in cfg.hooks:
                value = cache[hook]
                acts[hook].append(value.reshape(*value.shape[:2], -1).float().cpu())
    stored, nonfinite = {}, np.zeros(len(seqs), dtype=bool)
    for hook, parts in acts.items():
        values = torch.cat(parts)
        cast = values.to(store_mod.STORAGE_DTYPES[cfg.dtype][1])
        bad = ~torch.isfinite(cast).flatten(1).all(dim=1)
        nonfinite |= bad.numpy()
        stored[hook] = store_mod.to_storage(values, cfg.dtype)
    if nonfinite.any():
        if cfg.nonfinite == "error":
            raise UserError(
                f"{int(nonfinite.sum())} sequences have NaN/inf activations (dtype {cfg.dtype}); committed "
                "chunks are kept: rerun with --resume and --nonfinite drop, or use --dtype float32"
            )
        if cfg.nonfinite == "drop":
            for hook in stored:
                stored[hook][nonfinite] = 0
    return {
        "tokens": tokens,
        "doc": np.array([s.doc for s in seqs], dtype=np.int64),
        "offset": np.array([s.offset for s in seqs], dtype=np.int64),
        "valid": ~nonfinite if cfg.nonfinite == "drop" else np.ones(len(seqs), dtype=bool),
        "nonfinite": nonfinite,
        "acts": stored,
    }


class _ChunkWriter:
    """Writes chunks on a background thread; a chunk is committed after all its arrays land."""

    def __init__(self, group, cfg: HarvestConfig, shard: int, done: int) -> None:
        self.group, self.cfg, self.shard, self.done = group, cfg, shard, done
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="saelab-writer", daemon=True)
        self.thread.start()

    def put(self, chunk: int, payload: dict) -> None:
        self._raise()
        self.queue.put((chunk, payload))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def abort(self) -> None:
        """Let the chunk in flight finish (it is then committed), drop the rest."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put(None)
        self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as err:  # surfaced in the main thread by put/close
                self.error = err

    def _write(self, chunk: int, payload: dict) -> None:
        cs = self.cfg.chunk_seqs
        rows = slice(chunk * cs, chunk * cs + len(payload["tokens"]))
        g = self.group
        try:
            for name in store_mod.DATA_ARRAYS:
                store_mod.writable(g, name)[rows] = payload[name]
            for hook, values in payload["acts"].items():
                store_mod.writable(g, f"hooks/{hook}")[rows] = values
        except OSError as err:
            raise disk_error(err, f"chunk {chunk} of store {self.cfg.out!r}") from None
        if payload.get("repair"):
            return  # a committed chunk rewritten in place: the commit log already counts it
        # The commit: only now does the chunk count.
        self.done += 1
        g["progress"][self.shard] = self.done
        if self.cfg.shard[1] == 1:
            g.attrs["committed_sequences"] = rows.stop
        if payload["nonfinite"].any():
            g.attrs["nonfinite_sequences"] = int(g.attrs.get("nonfinite_sequences", 0)) + int(
                payload["nonfinite"].sum()
            )


def _damaged_chunks(url: str, chunks) -> list[int]:
    """Committed chunks whose files are missing or unreadable (each reported on stderr)."""
    import sys

    store = store_mod.ActivationStore(url)
    damaged = []
    for chunk in chunks:
        problem = store.chunk_problem(chunk)
        if problem:
            print(f"saelab harvest: repairing {problem}", file=sys.stderr)
            damaged.append(chunk)
    return damaged


def _shrink(group, cfg: HarvestConfig, n_seq: int) -> None:
    """The corpus ran out before the requested size: cut the arrays to what exists."""
    if cfg.shard[1] > 1:
        raise UserError(
            f"the corpus holds only {n_seq} sequences of {cfg.seq_len} tokens, fewer than the store "
            "was sized for; harvest fewer --tokens (sharded stores cannot shrink)"
        )
    if n_seq == 0:
        raise UserError("the corpus yielded no sequences for this store")
    for name in ("tokens", "doc", "offset", "valid", *(f"hooks/{h}" for h in cfg.hooks)):
        arr = group[name]
        arr.resize((n_seq, *arr.shape[1:]))
    group.attrs.update({"n_seq": n_seq, "exhausted": True})
    print(
        f"saelab harvest: the corpus ran out after {n_seq} sequences ({n_seq * cfg.seq_len} tokens)"
    )


def _mark_complete(group, cfg: HarvestConfig) -> bool:
    store = store_mod.ActivationStore(cfg.out)
    progress = group["progress"][:]
    complete = all(
        int(p) >= len(store_mod.shard_chunks(store.n_chunks, s, len(progress)))
        for s, p in enumerate(progress)
    )
    group.attrs.update({"committed_sequences": store.committed_sequences(), "complete": complete})
    return complete


def _progress_bar(cfg: HarvestConfig, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="tok",
        unit_scale=True,
        disable=not cfg.progress,
        desc=f"harvest {cfg.model}"
        + (f" shard {cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard[1] > 1 else ""),
        dynamic_ncols=True,
        smoothing=0.1,
    )
