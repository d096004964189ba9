"""The LLM explainer: top and quantile windows with active tokens marked, one line back."""

from __future__ import annotations

from saelab.autointerp import answers
from saelab.autointerp.client import LLMClient
from saelab.autointerp.explainers import Explanation
from saelab.autointerp.prompts import prompt
from saelab.autointerp.windows import Window, render


async def explain(
    client: LLMClient, windows: list[Window], owner: tuple, max_tokens: int
) -> Explanation:
    template = prompt("explain")
    lines = [f"{render(w, w.active)} [{w.max_act:.2f}]" for w in windows]
    examples = "\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))
    reply = await client.complete(
        template.messages(examples=examples), max_tokens=max_tokens, owner=owner
    )
    text = answers.explanation(reply.text)
    provenance = {
        "explainer": "llm",
        "model": client.cfg.model,
        "prompt": template.version,
        "temperature": client.cfg.temperature,
        "seed": client.cfg.seed,
        "max_tokens": max_tokens,
        "n_examples": len(windows),
    }
    return Explanation("llm", text, "ok" if text else "unparsable", provenance)


async def explainer(client: LLMClient, windows, owner: tuple, cfg) -> Explanation:
    """The registered explainer: the latent's explanation windows, `cfg.explanation_tokens` at
    most."""
    return await explain(client, windows.explain, owner, cfg.explanation_tokens)
