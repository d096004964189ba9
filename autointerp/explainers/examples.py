"""The offline default explainer: a short phrase built from the examples, no LLM asked.

What it reads off the explanation windows:
- the words the latent fires on: runs of active tokens widened to whole words ("A<<ruba>>"
  reads as "Aruba"), ranked by the activation they carry, case merged;
- the word just before them, named only when one word precedes most of them ("after U.S.");
- the start of a text, when the latent fires mostly on the first token after the BOS marker.

The phrase is plain text (no marks, no escapes) and at most `MAX_CHARS` characters, so a graph
node can show it whole. On the demo's SAE it beats the token-list `baseline` on the embedding
score and ties it on detection, which the embedded 135M judge cannot use to tell a right
explanation from a wrong one (docs/architecture.md, "Explanations offline").
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from saelab.autointerp.explainers import Explanation
from saelab.autointerp.windows import Window

VERSION = "examples.v1"
MAX_CHARS = 80
"""Longest explanation: short enough for a circuit node's label."""
MAX_WORDS = 5
"""Most words named."""
MIN_SHARE = 0.03
"""A word is named only when it carries at least this share of the activation (after the
first, which is always named)."""
CONTEXT_SHARE = 0.5
"""The preceding word is named when it precedes at least this share of the occurrences."""
START_SHARE = 0.5
"""Share of the activation on a text's first token above which the latent reads as
"the start of a text"."""
SPECIAL = ("<|", "‹|")
"""How special tokens (BOS, chat markers) begin, raw or escaped: never named as words."""


@dataclass
class Occurrence:
    word: str
    weight: float
    before: str | None
    at_start: bool


def is_special(token: str) -> bool:
    return token.strip().startswith(SPECIAL)


def _joins_left(token: str) -> bool:
    """Whether the token continues the word before it (no leading space, starts alphanumeric)."""
    return bool(token) and token[0].isalnum()


def _ends_word(token: str) -> bool:
    return bool(token) and token[-1].isalnum()


def spell(token: str) -> str:
    """A token (or run of tokens) as the explanation names it: inner whitespace one space, or,
    when it is only whitespace, that spelt out."""
    text = " ".join(token.split())
    if text:
        return text
    return {"\n": "line break", "\t": "tab"}.get(token[:1], "space")


def occurrences(window: Window) -> list[Occurrence]:
    """Each run of active tokens in the window, widened to whole words, with its activation."""
    tokens, active = window.tokens, window.active
    found, i, n = [], 0, len(tokens)
    while i < n:
        if not active[i] or is_special(tokens[i]):
            i += 1
            continue
        j = i
        while j + 1 < n and active[j + 1] and not is_special(tokens[j + 1]):
            j += 1
        weight = float(window.acts[i : j + 1].max())
        start, end = i, j
        # widen to whole words, stepping over at most two pieces each side
        for _ in range(2):
            if (
                start > 0
                and _joins_left(tokens[start])
                and _ends_word(tokens[start - 1])
                and not is_special(tokens[start - 1])
            ):
                start -= 1
        for _ in range(2):
            if end + 1 < n and _joins_left(tokens[end + 1]) and _ends_word(tokens[end]):
                end += 1
        word = spell("".join(tokens[start : end + 1]))
        before = _word_before(tokens, start)
        at_start = start > 0 and is_special(tokens[start - 1])
        found.append(Occurrence(word, weight, before, at_start))
        i = j + 1
    return found


def _word_before(tokens: list[str], start: int) -> str | None:
    """The whole word (or punctuation) ending just before `start`, if any."""
    end = start - 1
    if end < 0 or is_special(tokens[end]) or not tokens[end].strip():
        return None
    begin = end
    while begin > 0 and _joins_left(tokens[begin]) and _ends_word(tokens[begin - 1]):
        begin -= 1
        if is_special(tokens[begin]):
            return None
    return "".join(tokens[begin : end + 1]).strip() or None


def explain(windows: list[Window]) -> Explanation:
    """The phrase for a latent's explanation windows (unparsable when it never fired)."""
    provenance = {"explainer": VERSION, "n_examples": len(windows)}
    found = [o for w in windows if w.max_act > 0 for o in occurrences(_scaled(w))]
    if not found:
        return Explanation("examples", None, "unparsable", provenance)
    total = sum(o.weight for o in found)
    weight, spelling = defaultdict(float), defaultdict(Counter)
    for o in found:
        weight[o.word.lower()] += o.weight
        spelling[o.word.lower()][o.word] += 1
    ranked = sorted(weight, key=lambda k: -weight[k])
    named = [ranked[0]] + [k for k in ranked[1:MAX_WORDS] if weight[k] >= MIN_SHARE * total]
    words = [spelling[k].most_common(1)[0][0] for k in named]
    start_share = sum(o.weight for o in found if o.at_start) / total
    before = Counter(o.before for o in found if o.before)
    text = _phrase(words, before, len(found), start_share)
    return Explanation("examples", text, "ok", provenance)


def _scaled(window: Window) -> Window:
    """The window with activations relative to its own strongest (each example counts once)."""
    peak = window.max_act
    acts = window.acts / peak if peak > 0 else window.acts
    return Window(window.tokens, np.asarray(acts), window.kind, window.key)


def _phrase(words: list[str], before: Counter, n: int, start_share: float) -> str:
    quoted = [f"'{w}'" if '"' in w else f'"{w}"' for w in words]
    context = ""
    if before:
        word, count = before.most_common(1)[0]
        if count >= CONTEXT_SHARE * n and word not in {w.lower() for w in words}:
            context = f' after "{word}"'
    if start_share >= START_SHARE:
        context = " at the start of a text"
    while quoted:
        text = ", ".join(quoted) + context
        if len(text) <= MAX_CHARS:
            return text
        quoted.pop()
    return words[0][: MAX_CHARS - 1] + "…"


async def explainer(client, windows, owner: tuple, cfg) -> Explanation:
    """The registered explainer (asks no LLM)."""
    return explain(windows.explain)
