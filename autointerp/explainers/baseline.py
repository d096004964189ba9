"""The non-LLM floor: the most frequent activating tokens, and the tokens just before them."""

from __future__ import annotations

from collections import Counter

from saelab.autointerp.explainers import Explanation
from saelab.autointerp.windows import Window, escape

VERSION = "baseline.v1"


def shown(token: str) -> str:
    """A token as the explanation names it: stripped, or, when it is only whitespace (a
    latent that fires on line breaks, say), the whitespace spelt out ("\\n", "\\t", "␣")."""
    text = token.strip()
    if text:
        return text
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")


def explain(windows: list[Window], n_tokens: int = 5, n_context: int = 3) -> Explanation:
    activating, before = Counter(), Counter()
    for w in windows:
        for i, token in enumerate(w.tokens):
            if w.acts[i] > 0 and shown(token):
                activating[escape(shown(token))] += 1
                if i > 0 and shown(w.tokens[i - 1]):
                    before[escape(shown(w.tokens[i - 1]))] += 1
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
