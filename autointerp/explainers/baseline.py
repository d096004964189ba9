"""The non-LLM floor: the most frequent activating tokens, and the tokens just before them."""

from __future__ import annotations

from collections import Counter

from saelab.autointerp.explainers import Explanation
from saelab.autointerp.windows import Window, escape

VERSION = "baseline.v1"


def explain(windows: list[Window], n_tokens: int = 5, n_context: int = 3) -> Explanation:
    activating, before = Counter(), Counter()
    for w in windows:
        for i, token in enumerate(w.tokens):
            if w.acts[i] > 0 and token.strip():
                activating[escape(token.strip())] += 1
                if i > 0 and w.tokens[i - 1].strip():
                    before[escape(w.tokens[i - 1].strip())] += 1
    if not activating:
        return Explanation("baseline", None, "unparsable", {"explainer": VERSION})
    tokens = ", ".join(f'"{t}"' for t, _ in activating.most_common(n_tokens))
    text = f"the tokens {tokens}"
    if before:
        text += (
            " (often after " + ", ".join(f'"{t}"' for t, _ in before.most_common(n_context)) + ")"
        )
    return Explanation("baseline", text, "ok", {"explainer": VERSION, "n_examples": len(windows)})


async def explainer(client, windows, owner: tuple, cfg) -> Explanation:
    """The registered explainer (asks no LLM)."""
    return explain(windows.explain)
