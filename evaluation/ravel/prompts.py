"""Prompts that ask for an entity's attribute, the model's greedy answers, and which prompts it
answers correctly (only those are kept, as SAEBench keeps them).

A prompt is the template with the entity in place, after the BOS token the activation store also
starts its sequences with. Its entity position is the entity's last token (SAEBench's
`final_entity_token_pos`): the position the intervention edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

CITY_TEMPLATES = {
    "Country": [
        "Q: Which country is Cairo in? A: Egypt. Q: Which country is %s in? A:",
        "Tokyo is a city in Japan. Lima is a city in Peru. %s is a city in",
        "Berlin is in the country of Germany. %s is in the country of",
    ],
    "Continent": [
        "Q: Which continent is Cairo on? A: Africa. Q: Which continent is %s on? A:",
        "Tokyo is in Asia. Lima is in South America. Berlin is in Europe. %s is in",
        "Berlin is a city on the continent of Europe. %s is a city on the continent of",
    ],
    "Language": [
        "In Tokyo people speak Japanese. In Lima people speak Spanish. In %s people speak",
        "Q: What language do people in Cairo speak? A: Arabic. Q: What language do people in %s speak? A:",
        "The main language of Berlin is German. The main language of %s is",
    ],
}
"""The built-in templates per attribute (few-shot, so the 135M model answers in the expected
form; each shot's answer is a different value, and SAEBench's filter drops the prompts whose
entity is a shot)."""


@dataclass
class Prompt:
    """One (entity, template) prompt."""

    entity: str
    attribute: str
    template: str
    value: str
    """The attribute's true value for the entity."""
    tokens: list[int]
    """BOS + the prompt's tokens."""
    entity_pos: int
    """Index in `tokens` of the entity's last token."""
    answer: str = ""
    """The model's greedy continuation (filled by `answer_prompts`)."""
    first_token: int = -1
    """The first token of that continuation: the target the mask is trained towards."""
    correct: bool = False


def build_prompts(table, tokenizer, bos: int) -> list[Prompt]:
    """Every (entity, template) prompt of the table, with its entity position."""
    prompts = []
    for entity, values in table.values.items():
        for attribute, templates in table.templates.items():
            for template in templates:
                # SAEBench's entity position: the last token before the template's tail.
                tail = template.split("%s")[1]
                text = [bos, *tokenizer.encode(template % entity, add_special_tokens=False)]
                pos = len(text) - len(tokenizer.encode(tail, add_special_tokens=False)) - 1
                prompts.append(Prompt(entity, attribute, template, values[attribute], text, pos))
    return prompts


def pad_left(sequences: list[list[int]], pad: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded tokens `[B, T]`, their attention mask, and each row's padding length (the
    model's rotary positions are relative, so left padding leaves the real tokens' outputs
    unchanged; the smoke test checks it)."""
    width = max(len(s) for s in sequences)
    offsets = torch.tensor([width - len(s) for s in sequences], device=device)
    tokens = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
    attention = (torch.arange(width, device=device)[None] >= offsets[:, None]).long()
    return tokens, attention, offsets


def greedy(
    bridge,
    tokens: Tensor,
    attention: Tensor,
    n_new: int,
    fwd_hooks=(),
    first: Callable | None = None,
) -> Tensor:
    """`n_new` greedy tokens after left-padded `tokens` `[B, T]`; `fwd_hooks` apply to every
    forward (the prompt's positions recompute identically, so an edit there holds throughout);
    `first(logits)` sees the first step's logits."""
    out = tokens
    for step in range(n_new):
        logits = bridge.run_with_hooks(
            out, fwd_hooks=list(fwd_hooks), return_type="logits", attention_mask=attention
        )
        if step == 0 and first is not None:
            first(logits)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        attention = torch.cat([attention, attention.new_ones(len(out), 1)], dim=1)
    return out[:, tokens.shape[1] :]


@torch.no_grad()
def answer_prompts(
    model, hook: str, prompts: list[Prompt], n_new: int, batch_size: int, device: str
) -> Tensor:
    """Fill each prompt's greedy answer, first answer token and correctness; returns the hook's
    activation at each prompt's entity position `[P, d]` (read in the same forward)."""
    states = []
    pad = pad_token(model.tokenizer)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        tokens, attention, offsets = pad_left([p.tokens for p in batch], pad, device)
        pos = offsets + torch.tensor([p.entity_pos for p in batch], device=device)
        captured = []

        def capture(act, hook=None, _pos=pos, _out=captured):
            if not _out:
                _out.append(act[torch.arange(len(act)), _pos].detach().float().cpu())
            return act

        new = greedy(model.bridge, tokens, attention, n_new, [(hook, capture)]).tolist()
        states.append(captured[0])
        for p, ids in zip(batch, new, strict=True):
            p.first_token = ids[0]
            p.answer = model.tokenizer.decode(ids)
            p.correct = is_correct(p.value, p.answer)
    return torch.cat(states) if states else torch.zeros(0)


def pad_token(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def is_correct(value: str, completion: str) -> bool:
    """Whether a completion states the value: SAEBench's rule (the completion up to a quote,
    lower-cased and stripped, starts with the value, or is a prefix of it), with its special
    cases for the values this table holds (the United States/Kingdom, Korea, North America,
    Mandarin/Chinese)."""
    label = value.lower()
    out = completion.split('"')[0].strip(' "').replace("\\/", "/").lower()
    if not label or not out:
        return False
    if "united states" in label or "united kingdom" in label:
        out = out.replace("the ", "")
        return out.startswith(label) or out.startswith("england")
    if label == "south korea":
        return out.startswith("korea") or out.startswith("south korea")
    if label == "north america":
        return label in out or out == "na" or out.startswith("america")
    if label in ("mandarin", "chinese"):
        return out.startswith("chinese") or out.startswith("mandarin")
    return out.startswith(label) if len(label) < len(out) else label.startswith(out)
