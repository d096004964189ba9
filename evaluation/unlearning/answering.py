"""How the instruct model answers a question: the token sequences it reads and how an answer
is read off its logits, in the two formats.

- cloze: one sequence per option, the chat prompt with the question followed by the option's
  text; the option with the highest summed log-likelihood is the answer. The options are not
  shown, so the answer does not depend on their order.
- letter (SAEBench's): the options listed as A-D under a subject line, then "Answer: (" after
  the assistant turn opens; the answer is the letter with the highest probability (the larger
  of "A" and " A", and so on), on a question's own option order or a permutation of it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from saelab.evaluation.unlearning.questions import N_CHOICES, Question

LETTERS = "ABCD"
PERMUTATIONS = list(itertools.permutations(range(N_CHOICES)))
"""SAEBench's 24 orderings, identity first."""


@dataclass(frozen=True)
class Sequence:
    """One model input and where its answer is read."""

    tokens: tuple[int, ...]
    question: int
    """Index of its question."""
    option: int
    """cloze: the option it scores; letter: the index of its permutation in `PERMUTATIONS`."""
    span_start: int
    """cloze: first token of the option's text; letter: unused (the last position is read)."""


def chat_prompt(tokenizer, content: str, system: str | None = "") -> str:
    """The instruct model's chat prompt with one user turn, the assistant's turn opened;
    `system`: the system turn's text (None: the template's default, if any)."""
    turns = [] if system is None else [{"role": "system", "content": system}]
    turns.append({"role": "user", "content": content})
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def letter_prompt(tokenizer, q: Question, order: tuple[int, ...], system: str | None = "") -> str:
    """SAEBench's prompt: subject line, question, options A-D in `order`, "Answer: (" opened."""
    subject = q.subject.replace("_", " ")
    body = f"The following are multiple choice questions (with answers) about {subject}.\n"
    body += q.question + "".join(f"\n{LETTERS[i]}. {q.choices[j]}" for i, j in enumerate(order))
    return chat_prompt(tokenizer, body, system) + "Answer: ("


def build_sequences(
    tokenizer,
    questions: list[Question],
    answer_format: str,
    permutations: int = 1,
    system: str | None = "",
) -> list[Sequence]:
    """Every sequence the questions need (letter: their first `permutations` orderings)."""
    out = []
    for qi, q in enumerate(questions):
        if answer_format == "cloze":
            prompt = _ids(tokenizer, chat_prompt(tokenizer, q.question, system))
            for ci, choice in enumerate(q.choices):
                out.append(Sequence(prompt + _ids(tokenizer, choice), qi, ci, len(prompt)))
        else:
            for pi, order in enumerate(PERMUTATIONS[:permutations]):
                text = letter_prompt(tokenizer, q, order, system)
                out.append(Sequence(_ids(tokenizer, text), qi, pi, 0))
    return out


def _ids(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def letter_token_ids(tokenizer) -> np.ndarray:
    """`[2, 4]`: the ids of "A".."D" and of " A".." D" (each a single token)."""
    rows = []
    for prefix in ("", " "):
        ids = [_ids(tokenizer, prefix + letter) for letter in LETTERS]
        rows.append([i[-1] for i in ids])
    return np.array(rows)


def readouts(logits: torch.Tensor, batch: list[Sequence], answer_format: str, letters) -> list:
    """Per sequence of the batch: cloze, the option's summed log-probability (a float);
    letter, the probabilities `[4]` of A-D (the larger of each letter's two spellings)."""
    out = []
    for row, seq in enumerate(batch):
        end = len(seq.tokens)
        if answer_format == "cloze":
            logp = logits[row, seq.span_start - 1 : end - 1].double().log_softmax(-1)
            target = torch.tensor(seq.tokens[seq.span_start :], device=logp.device)
            out.append(float(logp.gather(-1, target[:, None]).sum()))
        else:
            probs = logits[row, end - 1].double().softmax(-1)
            pick = probs[torch.as_tensor(letters, device=probs.device)]
            out.append(pick.max(0).values.cpu().numpy())
    return out


def predictions(sequences: list[Sequence], values: list, answer_format: str, n_questions: int):
    """The chosen option per (question, ordering): cloze `[n_questions, 1]` (the option with
    the highest log-likelihood), letter `[n_questions, n_orderings]` (mapped back to the
    question's own option index)."""
    if answer_format == "cloze":
        scores = np.full((n_questions, N_CHOICES), -np.inf)
        for seq, v in zip(sequences, values):
            scores[seq.question, seq.option] = v
        return scores.argmax(1)[:, None]
    n_orders = max(s.option for s in sequences) + 1
    out = np.zeros((n_questions, n_orders), dtype=int)
    for seq, v in zip(sequences, values):
        out[seq.question, seq.option] = PERMUTATIONS[seq.option][int(np.argmax(v))]
    return out
