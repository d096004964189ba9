"""Contrastive prompt sets: built-in templates (offline) and user JSONL files.

Each example has a clean prompt, a patch prompt of the same token length that flips the
answer, and the correct and wrong answer (single tokens). The metric is
m = logit(correct) − logit(wrong) at the last position of the clean prompt.

Built-in tasks are generated from word lists, keeping only words whose forms are single tokens
under the model's tokenizer (so every clean/patch pair has equal length):
- `sva`: "The author" → is / are (subject–verb agreement);
- `sva-rc`: "The author that the guards liked" → is / are (across a relative clause);
- `sva-within-rc`: "The author that the guards" → like / likes (inside a relative clause: the
  verb agrees with the clause's own subject, which the patch flips);
- `sva-pp`: "The author near the guards" → is / are (across a prepositional phrase);
- `ioi`: "When Mary and John went to the store, John gave a book to" → Mary / John.
Half of the SVA examples have a singular subject, half a plural one.

A JSONL file has one object per line with `clean`, `correct`, `wrong` and optionally `patch`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saelab.base.errors import UserError

BUILTIN_TASKS = ("sva", "sva-rc", "sva-within-rc", "sva-pp", "ioi")
TASK_VERSION = 1
"""Bump when the templates or word lists change (recorded with every circuit)."""

_NOUNS = (
    "author teacher doctor farmer student parent manager friend boy girl king dog player "
    "officer driver writer artist pilot senator customer lawyer nurse singer dancer soldier "
    "worker cat horse bird engineer minister guard judge actor painter"
).split()
_IRREGULAR = {"child": "children", "woman": "women", "man": "men"}
_VERBS = [(" is", " are"), (" was", " were")]
_RC_VERBS = "liked saw met hated helped".split()
_RC_PRESENT = [(" likes", " like"), (" knows", " know"), (" sees", " see"), (" hates", " hate"),
               (" loves", " love"), (" helps", " help")]  # fmt: skip
_PREPS = "near behind beside".split()
_NAMES = (
    "Mary John Tom James Sarah Anna David Paul Lisa Kate Mark Emma Michael Robert Laura Peter "
    "Alice Jack Susan Daniel Rachel Steve"
).split()
_PLACES = "store park school office".split()
_OBJECTS = "drink book ball gift".split()


@dataclass
class Example:
    clean: str
    patch: str | None
    correct: str
    wrong: str


@dataclass
class TaskBatch:
    """A task tokenised: every prompt has the same length (BOS first)."""

    name: str
    examples: list[Example]
    clean: Tensor
    """Clean prompts `[n, T]` (int64)."""
    patch: Tensor | None
    """Patch prompts `[n, T]`, or None when the task has none."""
    correct: Tensor
    """Correct answer token per prompt `[n]`."""
    wrong: Tensor
    """Wrong answer token per prompt `[n]`."""

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, rows) -> TaskBatch:
        rows = list(rows)
        return TaskBatch(
            self.name,
            [self.examples[i] for i in rows],
            self.clean[rows],
            None if self.patch is None else self.patch[rows],
            self.correct[rows],
            self.wrong[rows],
        )


def _single(tokenizer, word: str) -> bool:
    return len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1


def _nouns(tokenizer) -> list[tuple[str, str]]:
    pairs = [(n, _IRREGULAR.get(n, n + "s")) for n in _NOUNS]
    return [(s, p) for s, p in pairs if _single(tokenizer, " " + s) and _single(tokenizer, " " + p)]


def builtin_examples(name: str, tokenizer, n: int, seed: int = 0) -> list[Example]:
    """`n` examples of a built-in task, seeded; words filtered to single tokens."""
    if name not in BUILTIN_TASKS:
        raise UserError(
            f"unknown task {name!r}: choose {', '.join(BUILTIN_TASKS)} or give a JSONL file"
        )
    rng = random.Random(f"{name}:{seed}")
    out: list[Example] = []
    if name == "ioi":
        names = [w for w in _NAMES if _single(tokenizer, " " + w)]
        for _ in range(n):
            a, b = rng.sample(names, 2)
            place, obj = rng.choice(_PLACES), rng.choice(_OBJECTS)
            stem = f"When {a} and {b} went to the {place}, "
            out.append(
                Example(
                    clean=f"{stem}{b} gave a {obj} to",
                    patch=f"{stem}{a} gave a {obj} to",
                    correct=" " + a,
                    wrong=" " + b,
                )
            )
        return out
    nouns = _nouns(tokenizer)
    if len(nouns) < 4:
        raise UserError(f"too few single-token nouns for {name} under this tokenizer")
    for i in range(n):
        (sing, plur), (sing2, plur2) = rng.sample(nouns, 2)
        plural = i % 2 == 1
        subj, other = (plur, sing) if plural else (sing, plur)
        verb_sg, verb_pl = rng.choice(_VERBS)
        correct, wrong = (verb_pl, verb_sg) if plural else (verb_sg, verb_pl)
        tail = ""
        if name == "sva-within-rc":
            verbs = [v for v in _RC_PRESENT if all(_single(tokenizer, w) for w in v)]
            if not verbs:
                raise UserError(
                    f"no single-token present-tense verbs for {name} under this tokenizer"
                )
            rc_sg, rc_pl = sing2, plur2
            main = rng.choice([sing, plur])
            verb_sg, verb_pl = rng.choice(verbs)
            rc, other = (rc_pl, rc_sg) if plural else (rc_sg, rc_pl)
            correct, wrong = (verb_pl, verb_sg) if plural else (verb_sg, verb_pl)
            out.append(
                Example(f"The {main} that the {rc}", f"The {main} that the {other}", correct, wrong)
            )
            continue
        if name == "sva-rc":
            tail = f" that the {rng.choice([sing2, plur2])} {rng.choice(_RC_VERBS)}"
        elif name == "sva-pp":
            tail = f" {rng.choice(_PREPS)} the {rng.choice([sing2, plur2])}"
        out.append(Example(f"The {subj}{tail}", f"The {other}{tail}", correct, wrong))
    return out


def read_jsonl(path: str | Path) -> list[Example]:
    """Examples from a JSONL file; a bad row is a one-line error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} does not exist")
    out: list[Example] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected an object with clean, correct, wrong")
        missing = [k for k in ("clean", "correct", "wrong") if not isinstance(row.get(k), str)]
        if missing:
            raise UserError(
                f"{path}:{lineno}: missing or non-string field(s) {', '.join(missing)}; each "
                'line needs {"clean": ..., "correct": ..., "wrong": ...} and optionally "patch"'
            )
        patch = row.get("patch")
        if patch is not None and not isinstance(patch, str):
            raise UserError(f"{path}:{lineno}: field patch must be a string")
        out.append(Example(row["clean"], patch, row["correct"], row["wrong"]))
    if not out:
        raise UserError(f"task file {path} holds no examples")
    return out


def load_task(task: str, tokenizer, bos_id: int, n: int = 32, seed: int = 0) -> TaskBatch:
    """A built-in task by name, or a JSONL file, tokenised and checked."""
    if task in BUILTIN_TASKS:
        examples, name, source = builtin_examples(task, tokenizer, n, seed), task, task
    elif Path(task).suffix in (".jsonl", ".json") or Path(task).exists():
        examples, name, source = read_jsonl(task)[:n], Path(task).stem, str(task)
    else:
        raise UserError(
            f"unknown task {task!r}: choose {', '.join(BUILTIN_TASKS)} or give a JSONL file"
        )
    return tokenize(name, examples, tokenizer, bos_id, source)


def tokenize(name: str, examples: list[Example], tokenizer, bos_id: int, source: str) -> TaskBatch:
    def ids(text: str) -> list[int]:
        return [bos_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    def answer(text: str, i: int, field: str) -> int:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise UserError(
                f"{source}: example {i + 1}: the {field} answer {text!r} is {len(toks)} tokens; "
                "answers must be single tokens (mind the leading space)"
            )
        return toks[0]

    has_patch = [e.patch is not None for e in examples]
    if any(has_patch) and not all(has_patch):
        raise UserError(f"{source}: give a patch prompt for every example or for none")
    clean, patch, correct, wrong = [], [], [], []
    for i, ex in enumerate(examples):
        correct.append(answer(ex.correct, i, "correct"))
        wrong.append(answer(ex.wrong, i, "wrong"))
        if correct[-1] == wrong[-1]:
            raise UserError(f"{source}: example {i + 1}: correct and wrong are the same token")
        clean.append(ids(ex.clean))
        if ex.patch is not None:
            patch.append(ids(ex.patch))
            if len(patch[-1]) != len(clean[-1]):
                raise UserError(
                    f"{source}: example {i + 1}: clean and patch prompts have different token "
                    f"lengths ({len(clean[-1])} vs {len(patch[-1])}); they must align position "
                    "by position"
                )
    lengths = {len(c) for c in clean}
    if len(lengths) > 1:
        raise UserError(
            f"{source}: prompts have different token lengths ({sorted(lengths)}); a circuit "
            "compares positions, so give prompts of one length (split the file by length)"
        )
    return TaskBatch(
        name,
        examples,
        torch.tensor(clean),
        torch.tensor(patch) if patch else None,
        torch.tensor(correct),
        torch.tensor(wrong),
    )
