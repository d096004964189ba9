"""Corpora as `datasets.Dataset`s, and their cutting into fixed-length token sequences.

A dataset spec is one of
- `builtin` (or `builtin:wikipedia`, `builtin:news`): real English text shipped inside the
  `gensim` package's test data, a shortened English Wikipedia dump and the Lee news corpus;
- a local `.txt` / `.jsonl` / `.json` / `.parquet` file, or a folder of them;
- a `datasets` hub name, optionally `name:split`, where the network allows.

Every dataset has a `text` column (or the one named by `text_column`) and a `source` column.
Sequences never cross documents: each starts at `offset` tokens into document `doc`, so any
activation can be traced back to its text.
"""

from __future__ import annotations

import bz2
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saelab.activations.cache import cache_dir
from saelab.base.errors import UserError

BUILTIN_SOURCES = ("wikipedia", "news")
BUILTIN_VERSION = 2
WIKI_PIECE_CHARS = 2000
"""Wikipedia articles are cut at paragraph ends into pieces of about this many characters, so a
small harvest of the shuffled corpus spans many articles rather than the first few long ones."""
BOS_POLICIES = ("prepend", "none")
_LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_corpus(spec: str = "builtin", split: str = "train", text_column: str = "text"):
    """Load a corpus spec as a `datasets.Dataset` with `text` and `source` columns."""
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
        sources = BUILTIN_SOURCES if spec == "builtin" else (spec.split(":", 1)[1],)
        unknown = [s for s in sources if s not in BUILTIN_SOURCES]
        if unknown:
            raise UserError(
                f"unknown builtin corpus {unknown[0]!r}: choose builtin, "
                + ", ".join(f"builtin:{s}" for s in BUILTIN_SOURCES)
            )
        ds = _builtin_dataset(sources)
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


def _gensim_test_data() -> Path:
    try:
        import gensim
    except ImportError:
        raise UserError("the builtin corpus needs gensim: pip install gensim") from None
    return Path(gensim.__file__).parent / "test" / "test_data"


def _builtin_dataset(sources: tuple[str, ...]):
    """The builtin corpus, prepared once (parsing the wiki dump takes seconds) and cached."""
    import datasets

    folder = cache_dir() / "corpora" / f"builtin-v{BUILTIN_VERSION}-{'+'.join(sources)}"
    if (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder))
    ds = datasets.Dataset.from_list(_builtin_documents(sources))
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    ds.save_to_disk(str(tmp))
    if folder.exists():  # another process prepared it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)
    return datasets.load_from_disk(str(folder))


def _builtin_documents(sources: tuple[str, ...]) -> list[dict]:
    """The builtin corpus: documents from each source, interleaved in a fixed seeded order."""
    root = _gensim_test_data()
    docs: list[dict] = []
    if "wikipedia" in sources:
        docs += [
            {"text": t, "source": "wikipedia", "title": title} for title, t in _wikipedia(root)
        ]
    if "news" in sources:
        for name in ("lee_background.cor", "lee.cor"):
            for i, line in enumerate((root / name).read_text(encoding="latin-1").splitlines()):
                if line.strip():
                    docs.append({"text": line.strip(), "source": "news", "title": f"{name}:{i}"})
    random.Random(BUILTIN_VERSION).shuffle(docs)
    return docs


def _wikipedia(root: Path) -> Iterator[tuple[str, str]]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = root / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.open(dump) as fh:
        for title, markup, _ in extract_pages(fh):
            if not markup or markup.lstrip().lower().startswith("#redirect"):
                continue
            text = filter_wiki(markup)
            text = re.sub(r"'{2,}", "", text)  # bold/italic quotes
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            for part, piece in enumerate(_pieces(text, WIKI_PIECE_CHARS)):
                if len(piece) > 200:
                    yield f"{title} ({part + 1})", piece


def _pieces(text: str, size: int) -> Iterator[str]:
    """Consecutive runs of whole paragraphs, each about `size` characters."""
    piece: list[str] = []
    length = 0
    for paragraph in text.split("\n\n"):
        piece.append(paragraph)
        length += len(paragraph)
        if length >= size:
            yield "\n\n".join(piece)
            piece, length = [], 0
    if piece:
        yield "\n\n".join(piece)


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
