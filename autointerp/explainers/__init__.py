"""Explainers: turn a latent's explanation windows into a one-line explanation.

`llm` asks the model; `baseline` needs no model (most frequent activating tokens and what
precedes them) and is the floor every report shows beside the LLM's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Explanation:
    explainer: str
    text: str | None
    """None when the explainer's answer could not be read (status says so)."""
    status: str
    """ok, unparsable, or insufficient_examples."""
    provenance: dict = field(default_factory=dict)
