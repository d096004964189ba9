"""Prompt templates, one versioned file each (`prompts/<task>.v<N>.txt`).

A file holds the system message, a line `=== user ===`, then the user message. Placeholders
are `$name` (string.Template), filled once: text from the corpus or an LLM is never
re-interpreted as a placeholder. The version recorded with every result is the file's name plus
a hash of its content, so an edited prompt never passes for the old one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

FOLDER = Path(__file__).with_name("prompts")
CURRENT = {"explain": "explain.v1", "detection": "detection.v1", "fuzzing": "fuzzing.v1",
           "simulation": "simulation.v1", "intervention": "intervention.v1",
           "detection_one": "detection_one.v1", "fuzzing_one": "fuzzing_one.v1"}  # fmt: skip
SEPARATOR = "=== user ==="


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    system: str
    user: Template

    def messages(self, **values: str) -> list[dict]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.substitute(**values)},
        ]


@cache
def prompt(task: str) -> Prompt:
    name = CURRENT[task]
    text = (FOLDER / f"{name}.txt").read_text()
    system, user = (part.strip() for part in text.split(SEPARATOR, 1))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Prompt(name, f"{name}+{digest}", system, Template(user))
