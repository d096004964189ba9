"""Bias in Bios (`LabHC/bias_in_bios`) offline: a generated stand-in, and a local copy.

API (stable; the SCR, TPP and SHIFT evals build on it):

- `bios_texts(profession, gender, n, *, part="train", seed=0, path=None) -> list[str]`: n
  biographies of one profession and gender ("professor", "female"). The first n of a quadrant
  do not depend on anything else asked.
- `bios_dataset(split="biased"|"balanced", professions=("professor", "nurse"), n=1000, *,
  part="train", seed=0, path=None) -> LabelledTexts` with label columns "profession" and
  "gender" (names, as strings). Biased: n/2 of (professions[0], male) and n/2 of
  (professions[1], female), the two labels perfectly correlated (SAEBench's pairing: the first
  profession with "male"); balanced: n/4 of each profession × gender.
- `PROFESSIONS` (name -> the original's integer code), `GENDERS` ("male" 0, "female" 1),
  `STAND_IN_PROFESSIONS` (those the stand-in can write).

A local copy (`path`, see `common.read_table`) has the original's columns: `hard_text` (the
biography without its first sentence, which names the profession), `profession` (integer code
as in `PROFESSIONS`, or the name) and `gender` (0 male, 1 female, or the name).

The stand-in writes, like `hard_text`, no profession title: the profession shows only through
what the person does (cue sentences), some cues are shared by several professions, a third of
the bios mention a relative's or friend's different work (a distractor), and gender shows
through a first name (some unisex) and pronouns (a few bios have none). Its numbers cannot be
compared with SAEBench's published ones, which are on the real biographies and other models.
"""

from __future__ import annotations

import numpy as np

from saelab.base.errors import UserError
from saelab.evaluation.datasets.common import (
    LabelledTexts,
    check_columns,
    check_part,
    generate_part,
    read_table,
    sample_rows,
    stream_seed,
    two_label_split,
)

PROFESSIONS = {
    "accountant": 0, "architect": 1, "attorney": 2, "chiropractor": 3, "comedian": 4,
    "composer": 5, "dentist": 6, "dietitian": 7, "dj": 8, "filmmaker": 9,
    "interior_designer": 10, "journalist": 11, "model": 12, "nurse": 13, "painter": 14,
    "paralegal": 15, "pastor": 16, "personal_trainer": 17, "photographer": 18, "physician": 19,
    "poet": 20, "professor": 21, "psychologist": 22, "rapper": 23, "software_engineer": 24,
    "surgeon": 25, "teacher": 26, "yoga_teacher": 27,
}  # fmt: skip
"""Profession name -> its integer code in `LabHC/bias_in_bios` (as SAEBench's dataset_info)."""
GENDERS = {"male": 0, "female": 1}
COLUMNS = ("hard_text", "profession", "gender")

# -- the stand-in -----------------------------------------------------------------------------

_CUES = {
    "professor": [
        "{S} teaches graduate seminars on {field} and supervises doctoral theses.",
        "{P} research on {field} has appeared in several peer-reviewed journals.",
        "{S} joined the faculty of {univ} in {year} and now chairs {p} department.",
        "{S} received a national grant to study {field} with {p} lab group.",
        "Each semester {s} lectures to hundreds of undergraduates.",
        "{S} sits on the editorial board of a journal of {field}.",
    ],
    "nurse": [
        "{S} works twelve-hour night shifts on the cardiac ward of {hospital}.",
        "{S} looks after patients recovering from surgery and keeps their charts.",
        "{S} gives injections, changes dressings and checks vital signs every hour.",
        "{S} trained at a nursing school in {city} before moving to the emergency room.",
        "{S} coordinates discharge plans with families and the attending doctors.",
        "On the pediatric unit, {s} is known for calming frightened children.",
    ],
    "architect": [
        "{S} designs energy-efficient homes and public libraries.",
        "{P} drawings for a riverside museum won a regional design award.",
        "{S} spends {p} days on building sites and drafting floor plans.",
        "{S} leads a small studio in {city} that restores historic facades.",
        "{S} is licensed to sign off structural layouts for new schools.",
    ],
    "journalist": [
        "{S} covers city politics for a daily newspaper in {city}.",
        "{P} investigative reporting on housing won a press award.",
        "{S} files stories from courtrooms, protests and council meetings.",
        "{S} interviews sources on deadline and edits the weekend edition.",
        "{S} has reported from three continents for a news agency.",
    ],
    "surgeon": [
        "{S} performs knee and hip replacements at {hospital}.",
        "{S} operates several times a week and trains residents in the theatre.",
        "{S} specializes in minimally invasive procedures of the heart.",
        "{S} completed a fellowship in trauma operations after medical school.",
        "{P} team carried out the region's first robot-assisted transplant.",
    ],
    "psychologist": [
        "{S} treats adults with anxiety and depression in a private practice.",
        "{S} runs therapy groups and assesses children with learning difficulties.",
        "{P} clinical work focuses on trauma and grief counseling.",
        "{S} holds a doctorate in clinical practice and sees clients in {city}.",
        "{S} uses cognitive behavioral methods with {p} clients.",
    ],
    "attorney": [
        "{S} represents small businesses in contract disputes.",
        "{S} argues cases before the state appellate court.",
        "{S} was admitted to the bar in {year} and practices family law.",
        "{P} firm in {city} defends clients charged with white-collar crimes.",
        "{S} drafts wills and negotiates settlements for {p} clients.",
    ],
    "teacher": [
        "{S} teaches fourth grade at an elementary school in {city}.",
        "{S} plans lessons in reading and math for {p} classroom of twenty-eight pupils.",
        "{S} coaches the school debate team and meets parents every term.",
        "{S} has taught high school chemistry for {years} years.",
        "{S} grades homework every evening and runs the school garden club.",
    ],
    "accountant": [
        "{S} prepares tax returns and audits the books of local firms.",
        "{S} handles payroll, ledgers and quarterly filings for {p} clients.",
        "{S} is a certified public auditor with a practice in {city}.",
        "{S} reconciles accounts and forecasts budgets for a manufacturing company.",
        "During tax season {s} works long hours on balance sheets.",
    ],
    "dentist": [
        "{S} fills cavities, fits crowns and whitens teeth at a family practice.",
        "{S} runs a clinic in {city} that treats gum disease.",
        "{S} completed dental school in {year} and specializes in root canals.",
        "{P} patients come to {o} for cleanings and orthodontic checkups.",
        "{S} volunteers to check children's teeth at local schools.",
    ],
    "filmmaker": [
        "{S} directed a documentary about fishermen that premiered at a festival.",
        "{S} writes, shoots and edits independent feature films.",
        "{P} short film on migration won a jury prize in {city}.",
        "{S} is in post-production on {p} second feature.",
        "{S} works with a small crew of cinematographers and sound designers.",
    ],
}
"""Sentences that show a profession without naming it ({S}/{s} subject pronoun, {P}/{p}
possessive, {o} object pronoun)."""

_SHARED_CUES = [
    (("professor", "psychologist", "teacher"), "{S} enjoys mentoring students and young colleagues."),
    (("professor", "journalist", "filmmaker"), "{S} is working on a book about {field}."),
    (("nurse", "surgeon", "dentist", "psychologist"), "{S} cares deeply about {p} patients' wellbeing."),
    (("nurse", "surgeon"), "{S} works at {hospital}."),
    (("professor", "psychologist"), "{S} is affiliated with {univ}."),
    (("attorney", "accountant", "architect", "psychologist"), "{S} meets with clients most mornings."),
    (("architect", "filmmaker", "journalist"), "{P} work has been exhibited and reviewed widely."),
    (("teacher", "nurse", "dentist"), "{S} has served {p} community for over {years} years."),
    (("attorney", "accountant"), "{S} often reviews long contracts and financial records."),
    (("surgeon", "dentist"), "{S} is skilled at delicate work with fine instruments."),
]  # fmt: skip
"""Weak cues, each true of several professions."""

_FILLER = [
    "{S} lives in {city} with {p} two dogs.",
    "In {p} free time {s} hikes, cooks and plays the piano.",
    "{S} grew up in a small town and studied at {univ}.",
    "{S} is an avid runner and has finished several marathons.",
    "{S} speaks three languages and loves to travel.",
    "{S} volunteers at a food bank on weekends.",
    "{P} favorite book is a collection of short stories.",
    "{S} enjoys gardening and photography.",
]
_RELATIVES = {
    "male": ["brother", "father", "uncle", "son"],
    "female": ["sister", "mother", "aunt", "daughter"],
}
_SPOUSE = {"male": "wife", "female": "husband"}
_NAMES = {
    "male": ["James", "Michael", "David", "Robert", "Daniel", "Thomas", "Mark", "Steven", "Paul",
             "Andrew", "Kevin", "Brian", "George", "Edward", "Henry", "Omar", "Raj", "Luis"],
    "female": ["Mary", "Jennifer", "Linda", "Susan", "Karen", "Emily", "Laura", "Anna", "Sarah",
               "Rachel", "Helen", "Nicole", "Grace", "Julia", "Fatima", "Priya", "Sofia", "Mei"],
}  # fmt: skip
_UNISEX = ["Alex", "Jordan", "Taylor", "Casey", "Morgan", "Sam", "Jamie", "Robin", "Kim", "Avery"]
_SURNAMES = ["Smith", "Garcia", "Chen", "Patel", "Okafor", "Muller", "Rossi", "Novak", "Kim",
             "Haddad", "Silva", "Brown", "Nguyen", "Cohen", "Ivanova", "Lopez"]  # fmt: skip
_FIELDS = ["medieval history", "marine biology", "economics", "linguistics", "climate science",
           "urban poverty", "public health", "ancient philosophy", "immigration"]  # fmt: skip
_CITIES = ["Chicago", "Toronto", "Leeds", "Austin", "Melbourne", "Denver", "Dublin", "Seattle"]
_UNIVS = ["the state university", "a small liberal arts college", "a university in Ohio",
          "an institute of technology"]  # fmt: skip
_HOSPITALS = ["a regional hospital", "the county medical center", "a children's hospital",
              "a university hospital"]  # fmt: skip
_PRONOUNS = {
    "male": dict(s="he", o="him", p="his"),
    "female": dict(s="she", o="her", p="her"),
    "none": dict(s="they", o="them", p="their"),
}

DISTRACTOR_RATE = 0.35
"""Share of stand-in bios that mention another profession's work (a relative's or friend's)."""
WEAK_RATE = 0.4
"""Share of stand-in bios whose only profession cue is one shared with other professions."""
NO_PRONOUN_RATE = 0.12
"""Share of stand-in bios that refer to the person by name only, with a unisex first name."""
STAND_IN_PROFESSIONS = tuple(_CUES)
"""The professions the stand-in writes."""


def _fill(template: str, pron: dict, rng: np.random.Generator) -> str:
    slots = {
        "s": pron["s"], "S": pron["s"].capitalize(), "o": pron["o"], "p": pron["p"],
        "P": pron["p"].capitalize(), "field": rng.choice(_FIELDS), "city": rng.choice(_CITIES),
        "univ": rng.choice(_UNIVS), "hospital": rng.choice(_HOSPITALS),
        "year": int(rng.integers(1988, 2020)), "years": int(rng.integers(3, 30)),
    }  # fmt: skip
    return template.format(**slots)


def _one_bio(profession: str, gender: str, rng: np.random.Generator) -> str:
    no_pronoun = rng.random() < NO_PRONOUN_RATE
    first = rng.choice(_UNISEX if no_pronoun or rng.random() < 0.1 else _NAMES[gender])
    name = f"{first} {rng.choice(_SURNAMES)}"
    pron = _PRONOUNS[gender]
    if no_pronoun:
        # Name only: the subject is the name, possessives "Name's".
        pron = dict(s=first, o=first, p=f"{first}'s")
    weak = [t for owners, t in _SHARED_CUES if profession in owners]
    if weak and rng.random() < WEAK_RATE:
        cues = [rng.choice(weak)]
    else:
        own = _CUES[profession]
        cues = list(rng.choice(own, size=1 + int(rng.random() < 0.3), replace=False))
        if weak and rng.random() < 0.5:
            cues.append(rng.choice(weak))
    sentences = [_fill(t, pron, rng) for t in cues]
    for _ in range(int(rng.integers(1, 3))):
        sentences.append(_fill(rng.choice(_FILLER), pron, rng))
    if rng.random() < DISTRACTOR_RATE:
        other = rng.choice([p for p in _CUES if p != profession])
        rel_gender = ("male", "female")[int(rng.integers(2))]
        if rng.random() < 0.5 and not no_pronoun:
            who = f"{pron['p'].capitalize()} {_SPOUSE[gender]}"
            rel_gender = "female" if gender == "male" else "male"
        else:
            who = f"{pron['p'].capitalize()} {rng.choice(_RELATIVES[rel_gender])}"
        if no_pronoun:
            who = f"{first}'s {rng.choice(_RELATIVES[rel_gender])}"
        rel = _fill(rng.choice(_CUES[other]), _PRONOUNS[rel_gender], rng)
        sentences.append(f"{who}, meanwhile, is busy elsewhere: {rel[0].lower()}{rel[1:]}")
    order = rng.permutation(len(sentences))
    body = " ".join(sentences[i] for i in order)
    return f"{name}: {body}" if rng.random() < 0.5 else body


def _stand_in(profession: str, gender: str, n: int, part: str, seed: int) -> list[str]:
    if profession not in _CUES:
        raise UserError(
            f"the Bias in Bios stand-in has no profession {profession!r}: choose from "
            f"{', '.join(STAND_IN_PROFESSIONS)} (or give a local copy with --dataset)"
        )
    rng = stream_seed(seed, part, "bios", profession, gender)
    return generate_part(lambda r: _one_bio(profession, gender, r), n, part, rng)


# -- a local copy -----------------------------------------------------------------------------


def _names(values, codes: dict[str, int]) -> np.ndarray:
    """Label values (integer codes or names) as names."""
    by_code = {v: k for k, v in codes.items()}
    return np.array([by_code.get(v, v) if not isinstance(v, str) else v for v in values])


def _local(profession: str, gender: str, n: int, part: str, seed: int, path: str) -> list[str]:
    frame = read_table(path)[part]
    check_columns(frame, COLUMNS, path, "Bias in Bios")
    prof = _names(frame["profession"].tolist(), PROFESSIONS)
    gen = _names(frame["gender"].tolist(), GENDERS)
    texts = frame["hard_text"].astype(str).to_numpy()[(prof == profession) & (gen == gender)]
    rng = stream_seed(seed, part, "bios", profession, gender)
    return sample_rows(list(texts), n, rng, f"{profession}/{gender} ({part})", path)


# -- the API ----------------------------------------------------------------------------------


def bios_texts(
    profession: str,
    gender: str,
    n: int,
    *,
    part: str = "train",
    seed: int = 0,
    path: str | None = None,
) -> list[str]:
    """n biographies of one profession and gender, generated (`path=None`) or sampled from a
    local copy."""
    check_part(part)
    if profession not in PROFESSIONS:
        raise UserError(f"unknown profession {profession!r}: choose from {', '.join(PROFESSIONS)}")
    if gender not in GENDERS:
        raise UserError(f"unknown gender {gender!r}: choose male or female")
    if path is None:
        return _stand_in(profession, gender, n, part, seed)
    return _local(profession, gender, n, part, seed, path)


def bios_dataset(
    split: str = "biased",
    professions: tuple[str, str] = ("professor", "nurse"),
    n: int = 1000,
    *,
    part: str = "train",
    seed: int = 0,
    path: str | None = None,
) -> LabelledTexts:
    """A biased or balanced split of two professions, labels "profession" and "gender"."""
    return two_label_split(
        lambda c, s, k: bios_texts(c, s, k, part=part, seed=seed, path=path),
        ("profession", "gender"),
        tuple(professions),
        ("male", "female"),
        split,
        n,
        path or "stand-in",
        seed,
    )
