"""The question sets: the offline substitute (generated from two PyPI packages) and local
copies of WMDP-bio and MMLU (the columns question, choices, answer).

The substitute stands in for WMDP-bio against MMLU: chemistry (the forget topic) against
geography (the retain topics), four options per question, the distractors drawn (seeded) from
the same relation's other values.

| set     | relation                  | source (licence)                        |
|---------|---------------------------|-----------------------------------------|
| forget  | element -> symbol         | periodictable (public domain)           |
| forget  | symbol -> element         | periodictable                           |
| retain  | country -> capital        | countryinfo (MIT), most populous first  |
| retain  | country -> demonym        | countryinfo                             |
| retain  | country -> world region   | countryinfo                             |

The forget corpus the latents are picked on is generated from the same table: one short
paragraph per element (symbol, atomic number, weight, density, isotopes), as WMDP's
bio-forget-corpus is text on the topic of its questions rather than the questions.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from saelab.base.errors import UserError

N_CHOICES = 4
FORGET_SUBJECT = "chemistry"
SUBSTITUTE_SUBJECTS = ("capitals", "demonyms", "regions")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right choice."""
    subject: str


def _multiple_choice(
    pairs: list[tuple[str, str]], limit: int, template: str, subject: str, rng: random.Random
) -> list[Question]:
    """A question for each of the first `limit` (subject, value) pairs; three distractors from
    the relation's other values (all pairs')."""
    values = sorted({v for _, v in pairs})
    out = []
    for about, value in pairs[:limit]:
        wrong = rng.sample([v for v in values if v != value], N_CHOICES - 1)
        choices = [*wrong, value]
        rng.shuffle(choices)
        out.append(Question(template.format(about), tuple(choices), choices.index(value), subject))
    return out


def _elements() -> list:
    import periodictable

    return [e for e in periodictable.elements if e.number >= 1]


def _countries() -> list[dict]:
    import countryinfo

    if hasattr(countryinfo, "all_countries"):  # countryinfo 1.x
        rows = [c.info() for c in countryinfo.all_countries()]
    else:  # 0.1.x: one dict keyed by country
        rows = list(countryinfo.CountryInfo().all().values())
    rows = [r for r in rows if r.get("name") and r.get("population")]
    rows.sort(key=lambda r: (-int(r["population"]), r["name"]))
    seen, out = set(), []
    for r in rows:  # one entry per capital (the package lists Burma and Myanmar both)
        if isinstance(r.get("capital"), str) and r["capital"] not in seen:
            seen.add(r["capital"])
            out.append(r)
    return out


def substitute_questions(per_relation: int, seed: int) -> tuple[list[Question], list[Question]]:
    """The substitute's forget (chemistry) and retain (geography) questions, `per_relation`
    of each relation."""
    rng = random.Random(seed)
    elements = _elements()
    forget = _multiple_choice(
        [(e.name.capitalize(), e.symbol) for e in elements], per_relation,
        "What is the chemical symbol of {}?", FORGET_SUBJECT, rng,
    ) + _multiple_choice(
        [(e.symbol, e.name.capitalize()) for e in elements], per_relation,
        "Which chemical element has the symbol {}?", FORGET_SUBJECT, rng,
    )  # fmt: skip
    countries = _countries()
    retain = []
    for subject, key, template in (
        ("capitals", "capital", "What is the capital of {}?"),
        ("demonyms", "demonym", "What do you call a person from {}?"),
        ("regions", "region", "In which region of the world is {}?"),
    ):
        pairs = [(c["name"], c[key]) for c in countries if isinstance(c.get(key), str) and c[key]]
        retain += _multiple_choice(pairs, per_relation, template, subject, rng)
    return forget, retain


def source_versions() -> dict[str, str]:
    """The installed versions of the substitute's two packages (their data can change)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("periodictable", "countryinfo")}


def substitute_forget_corpus() -> list[str]:
    """One paragraph of chemistry per element, the substitute's forget corpus."""
    docs = []
    for e in _elements():
        name = e.name.capitalize()
        text = (
            f"{name} is a chemical element with the symbol {e.symbol} and atomic number "
            f"{e.number}. Its standard atomic weight is about {e.mass:.4g}."
        )
        if e.density:
            text += f" The density of {e.name} is {e.density:.4g} grams per cubic centimetre."
        if e.isotopes:
            text += f" It has {len(e.isotopes)} known isotopes, with mass numbers from "
            text += f"{min(e.isotopes)} to {max(e.isotopes)}."
        text += f" In chemical formulas, {e.name} is written {e.symbol}."
        docs.append(text)
    return docs


def load_questions(path: str, subject: str, limit: int) -> list[Question]:
    """The first `limit` questions of a local file with the columns question, choices, answer
    (WMDP's and MMLU's layout: choices a list of strings, answer its index); `subject` where
    the file has no `subject` column (it names the topic in the letter prompt)."""
    rows = _read_rows(Path(path))
    out = []
    for i, row in enumerate(rows[:limit]):
        missing = [c for c in ("question", "choices", "answer") if c not in row]
        if missing:
            raise UserError(
                f"{path}: row {i} lacks the column(s) {', '.join(missing)}; the file needs "
                "question, choices (a list of strings) and answer (the right choice's index)"
            )
        choices = row["choices"]
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise UserError(
                    f"{path}: row {i}: choices {choices[:60]!r} is not a JSON list of strings"
                ) from None
        choices = tuple(str(c) for c in choices)
        answer = row["answer"]
        if isinstance(answer, str) and answer.strip().upper() in "ABCD" and answer.strip():
            answer = "ABCD".index(answer.strip().upper())
        try:
            answer = int(answer)
        except (TypeError, ValueError):
            raise UserError(f"{path}: row {i}: answer {answer!r} is not a choice index") from None
        if len(choices) != N_CHOICES or not 0 <= answer < N_CHOICES:
            raise UserError(
                f"{path}: row {i} has {len(choices)} choices and answer {answer}; each question "
                f"needs {N_CHOICES} choices and an answer in 0..{N_CHOICES - 1}"
            )
        named = row.get("subject")  # MMLU's own column, where the copy kept it
        out.append(Question(str(row["question"]), choices, answer, str(named or subject)))
    if not out:
        raise UserError(f"{path} holds no questions")
    return out


def load_corpus(path: str, limit_docs: int = 100_000) -> list[str]:
    """Documents of a local corpus: .jsonl (a `text` field per line) or plain text (one a line)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"the forget corpus {path!r} is not a file")
    docs = []
    with file.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if file.suffix == ".jsonl":
                try:
                    line = str(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}: a line is not JSON with a `text` field") from None
            docs.append(line)
            if len(docs) >= limit_docs:
                break
    if not docs:
        raise UserError(f"the forget corpus {path!r} is empty")
    return docs


def _read_rows(file: Path) -> list[dict]:
    if not file.is_file():
        raise UserError(f"question file {str(file)!r} does not exist (give a local copy)")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    if suffix == ".jsonl":
        with file.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if suffix == ".json":
        data = json.loads(file.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", data.get("rows", []))
    if suffix == ".csv":
        with file.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    raise UserError(f"{file}: read .parquet, .jsonl, .json or .csv files, got {suffix or 'none'}")
