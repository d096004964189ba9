"""Token windows as readable text: byte-level pieces merged, escaped, highlighted by activation.

Byte-level BPE tokenizers (GPT-2 style, as the embedded model uses) split a multi-byte
character across tokens, so decoding one id at a time (what the store's `vocab` holds) gives
"�". Here each token's raw bytes come from the tokenizer's own vocabulary; a window is decoded
with an incremental UTF-8 decoder and a token that completes no character is merged with the
next one. Without a tokenizer the stored per-id strings are used as they are.

Everything rendered goes through `html.escape` (text and attributes): token strings come from a
corpus and must never be read as markup.
"""

from __future__ import annotations

import codecs
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def _byte_level_alphabet() -> dict[str, int]:
    """The printable character byte-level BPE uses for each byte value (inverse map)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


@dataclass
class Piece:
    """Text that one or more consecutive tokens stand for."""

    text: str
    first: int
    """Index of the first token in the window."""
    last: int
    """Index of the last token (inclusive)."""


class TokenBytes:
    """Raw bytes of every token id of a byte-level tokenizer (read from tokenizer.json)."""

    def __init__(self, tokenizer_json: str | Path):
        spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        decoder = (spec.get("decoder") or {}).get("type")
        if decoder != "ByteLevel":
            raise ValueError(f"not a byte-level tokenizer (decoder {decoder!r})")
        alphabet = _byte_level_alphabet()
        self._bytes: dict[int, bytes] = {}
        for piece, idx in spec["model"]["vocab"].items():
            self._bytes[int(idx)] = _piece_bytes(piece, alphabet)
        for added in spec.get("added_tokens", []):
            self._bytes[int(added["id"])] = added["content"].encode("utf-8")

    def __call__(self, token_id: int) -> bytes | None:
        return self._bytes.get(int(token_id))


def _piece_bytes(piece: str, alphabet: dict[str, int]) -> bytes:
    if all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return piece.encode("utf-8")


def merge_pieces(
    token_ids: Sequence[int], token_bytes: TokenBytes | None, vocab: dict[int, str]
) -> list[Piece]:
    """The window as pieces of text, each covering the tokens that form whole characters."""
    if token_bytes is None:
        return [Piece(vocab.get(int(t), f"<{int(t)}>"), i, i) for i, t in enumerate(token_ids)]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[Piece] = []
    first = 0
    for i, t in enumerate(token_ids):
        raw = token_bytes(t)
        text = decoder.decode(raw) if raw is not None else vocab.get(int(t), f"<{int(t)}>")
        if text:
            pieces.append(Piece(text, first, i))
            first = i + 1
    tail = decoder.decode(b"", final=True)
    if first < len(token_ids):
        pieces.append(Piece(tail, first, len(token_ids) - 1))
    return pieces


def visible(text: str) -> str:
    """Escaped text with newlines and tabs shown as marks (spaces stay, kept by pre-wrap)."""
    out = html.escape(text, quote=True)
    return out.replace("\r", "").replace("\t", "→\t").replace("\n", "↵<br>")


NEWLINE_MARK = '<span class="nl" style="color:#aaa">↵</span>'
"""How a newline inside a token window shows: a faint mark on the same line."""


def inline_visible(text: str) -> str:
    """Escaped text on one line: newlines as a faint mark with no line break (a window of many
    newlines stays a few lines tall), tabs as an arrow."""
    out = html.escape(text, quote=True)
    return out.replace("\r", "").replace("\t", "→ ").replace("\n", NEWLINE_MARK)


def highlight_html(
    pieces: list[Piece], acts: Sequence[float], scale: float, token_ids: Sequence[int]
) -> str:
    """One window as HTML: each piece shaded by its largest activation, values on hover."""
    scale = scale if scale and scale > 0 else max([float(a) for a in acts] + [1e-9])
    spans = []
    for p in pieces:
        values = [float(a) for a in acts[p.first : p.last + 1]]
        peak = max(values) if values else 0.0
        alpha = min(max(peak / scale, 0.0), 1.0)
        ids = ", ".join(str(int(t)) for t in token_ids[p.first : p.last + 1])
        vals = ", ".join(f"{v:.3g}" for v in values)
        title = html.escape(f"activation {vals} · token {ids}", quote=True)
        style = f"background: rgba(255, 120, 0, {alpha:.3f});" if alpha > 0 else ""
        spans.append(
            f'<span class="tok" style="{style}" title="{title}">{inline_visible(p.text)}</span>'
        )
    return (
        '<div class="saelab-window" style="font-family: monospace; white-space: pre-wrap; '
        'line-height: 1.7; padding: 2px 0;">' + "".join(spans) + "</div>"
    )


def short_text(text: str | None, limit: int = 48) -> str:
    """One line of at most `limit` characters (whitespace collapsed, cut at a word where one
    ends late enough, "…" where cut): an explanation shown as a label. Not escaped: escape
    where it is rendered."""
    if not text:
        return ""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # end on a whole word where that keeps most of the room
        cut = cut[:space]
    return cut.rstrip() + "…"


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|:<>~$=^&")


def markdown_literal(text: str) -> str:
    """Text for a Streamlit label (which reads Markdown, colour directives and :icons:) shown
    literally: every Markdown punctuation character backslash-escaped."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)
