"""Reading the LLM's answers. An answer that cannot be read is None: the caller counts it as a
failure, never as a right or wrong answer."""

from __future__ import annotations

import json
import math
import re

_LIST = re.compile(r"\[[^\[\]]*\]")
_EXPLANATION = re.compile(r"explanation\s*:\s*(.+)", re.IGNORECASE)


def int_list(text: str, count: int, low: int, high: int) -> list[int] | None:
    """The first JSON list of exactly `count` integers in [low, high] found in the text."""
    for match in _LIST.finditer(text):
        try:
            values = json.loads(match.group())
        except ValueError:
            continue
        if (
            isinstance(values, list)
            and len(values) == count
            and all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
            )
        ):
            return values
    return None


_MARKUP = re.compile(r"<<|>>|‹‹|››|\*\*|__|`|[⏎↵]")
_PREAMBLE = re.compile(
    r"^(?:(?:the|this)\s+(?:feature|latent|neuron)\s+(?:is\s+)?"
    r"(?:(?:responds?|fires?|activates?|active|reacts?)\s+(?:to|on|for|in)|detects?|captures?)\s+)?",
    re.IGNORECASE,
)
_ENUMERATOR = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'])\.\s+(?=[A-Z])")


def explanation(text: str, max_words: int = 15) -> str | None:
    """The explanation after "Explanation:" (else the first non-empty line), or None if empty.

    Cleaned for a label: the window marks, bold and code markup and line-break glyphs an LLM
    copies from its prompt are dropped, a "The feature responds to" preamble is cut, only the first sentence and at most
    `max_words` words are kept (the prompt asks for 15).
    """
    match = _EXPLANATION.search(text)
    line = match.group(1) if match else next((s for s in text.splitlines() if s.strip()), "")
    line = _MARKUP.sub("", line)
    line = _SENTENCE_END.split(_ENUMERATOR.sub("", line).strip())[0]
    line = _PREAMBLE.sub("", line).strip().strip("\"'").strip()
    if not line:
        return None
    return " ".join(line.split()[:max_words])


def expected_values(logprobs: list[dict] | None, count: int, high: int = 10) -> list[float] | None:
    """Expected 0…high value of each number the model wrote, from its top logprobs.

    Walks the generated tokens; each token that is a whole number in range contributes the
    probability-weighted mean of its numeric alternatives (renormalised). None unless exactly
    `count` numbers were found this way (then the caller falls back to the parsed values).
    """
    if not logprobs:
        return None
    values = []
    for item in logprobs:
        token = item["token"].strip()
        if not token.isdigit() or int(token) > high:
            continue
        weights, total = 0.0, 0.0
        for alt, logprob in item["top"]:
            alt = alt.strip()
            if alt.isdigit() and int(alt) <= high:
                p = math.exp(logprob)
                weights += p * int(alt)
                total += p
        values.append(weights / total if total > 0 else float(token))
    return values if len(values) == count else None


YES, NO = frozenset({"1", "yes"}), frozenset({"0", "no"})
"""The allowed answers of a one-excerpt yes/no question (compared stripped and lower-cased)."""


def yes_probability(logprobs: list[dict] | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the first answer token, from its top logprobs.

    The probabilities of every alternative that reads as an allowed answer ("1", " Yes", ...)
    are summed on each side. None when there is no token or neither answer is among the
    alternatives (the caller counts a failure).
    """
    if not logprobs:
        return None
    yes = no = 0.0
    for alt, logprob in logprobs[0]["top"]:
        word = alt.strip().lower()
        if word in YES:
            yes += math.exp(logprob)
        elif word in NO:
            no += math.exp(logprob)
    return yes / (yes + no) if yes + no > 0 else None
