"""SHIFT's judges: which of the features a classifier relies on are about the spurious
attribute (gender) rather than the task (profession).

- `correlation` (no LLM at hand): a feature's mean-pooled activation on held-out balanced texts,
  where gender and profession are independent, is correlated with both labels; it is judged
  spurious when |r(gender)| reaches `min_corr` and exceeds |r(profession)|.
- `llm`: the configured endpoint reads the feature's description (its stored explanation, else
  the tokens it fires most on in the held-out texts) and answers whether it is about gender or
  sex rather than about occupations. The SFC paper's annotators were humans reading feature
  dashboards; this is the automatic stand-in the issue asks for.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import numpy as np

JUDGES = ("auto", "llm", "correlation")

PROMPT = (
    "A classifier must predict a person's occupation from a short biography, and must not use "
    "the person's gender. Below is the description of one internal feature of a language model "
    "that the classifier relies on.\n\nFeature: {description}\n\nIs this feature mainly about "
    "gender or sex (gendered pronouns such as he/she/his/her, gendered first names, words for "
    "men or women) rather than about occupations or work? Answer with one word: yes or no."
)
_YES = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


@dataclass
class Verdict:
    spurious: bool
    judge: str
    """correlation or llm."""
    corr_gender: float
    corr_profession: float
    description: str = ""
    """The feature's stored explanation, else the tokens it fires most on in the held-out
    texts: what the LLM read, when it judged."""
    answer: str = ""
    """The LLM's answer, as given."""


def pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of `x` `[N, n]` with `y` `[N]` (0 for a constant column)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    denom = np.sqrt((xc**2).sum(0) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc[:, None]).sum(0) / denom
    return np.where(denom > 0, r, 0.0)


def by_correlation(
    acts: np.ndarray, gender: np.ndarray, profession: np.ndarray, min_corr: float
) -> list[Verdict]:
    rg = pearson_columns(acts, gender)
    rp = pearson_columns(acts, profession)
    return [
        Verdict(bool(abs(g) >= min_corr and abs(g) > abs(p)), "correlation", float(g), float(p))
        for g, p in zip(rg, rp)
    ]


def parse_answer(text: str) -> bool | None:
    """True for yes, False for no, None when the answer is neither."""
    match = _YES.match(text or "")
    return None if not match else match.group(1).lower() == "yes"


def by_llm(
    descriptions: list[str], correlated: list[Verdict], llm_cfg, progress=None
) -> list[Verdict]:
    """Ask the endpoint about each description; an unparsable answer keeps the correlation
    judge's verdict for that feature (its `judge` then says so)."""
    return asyncio.run(_ask_all(descriptions, correlated, llm_cfg, progress))


async def _ask_all(descriptions, correlated, llm_cfg, progress) -> list[Verdict]:
    from saelab.autointerp.client import LLMClient, first_model

    if llm_cfg.model is None:
        from dataclasses import replace

        llm_cfg = replace(llm_cfg, model=await first_model(llm_cfg))
    client = LLMClient(llm_cfg)
    try:

        async def one(i: int, description: str) -> Verdict:
            messages = [{"role": "user", "content": PROMPT.format(description=description)}]
            done = await client.complete(messages, max_tokens=4, owner=("shift", i))
            if progress is not None:
                progress(1)
            said = parse_answer(done.text)
            base = correlated[i]
            if said is None:
                return Verdict(
                    base.spurious, "correlation (llm answer unparsable)", base.corr_gender,
                    base.corr_profession, description, done.text,
                )  # fmt: skip
            return Verdict(
                said, "llm", base.corr_gender, base.corr_profession, description, done.text
            )

        return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(descriptions))))
    finally:
        await client.close()


def token_description(tokens: list[str]) -> str:
    """A feature described by the tokens it fires most on (no stored explanation)."""
    shown = ", ".join(repr(t) for t in tokens)
    return f"fires most strongly on the tokens {shown}"
