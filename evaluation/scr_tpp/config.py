"""Settings of the SCR and TPP evals (SAEBench 0.6's `ScrAndTppEvalConfig`, field by field).

The defaults are SAEBench's. At those sizes the embedded model must run over 7,500 texts per
SCR class pair and 12,500 per TPP data set for each repetition (about 60,000 texts per
repetition for SCR's 8 pairs): an hour or more on a laptop CPU, minutes on a GPU. Model
activations and the model-side probes are cached in-process, so the SAEs of one sweep pay that
once. For a quick look pass e.g. `--scr-train-size 400 --scr-test-size 200 --scr-pairs 1`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saelab.base.config import check_fields
from saelab.base.errors import UserError

DATASETS = ("bios", "reviews")
N_VALUES = (2, 5, 10, 20, 50, 100, 500)

SCR_PAIRS = {
    "bios": (
        ("professor", "nurse"),
        ("architect", "journalist"),
        ("surgeon", "psychologist"),
        ("attorney", "teacher"),
    ),
    "reviews": (
        ("Books", "CDs_and_Vinyl"),
        ("Software", "Electronics"),
        ("Pet_Supplies", "Office_Products"),
        ("Industrial_and_Scientific", "Toys_and_Games"),
    ),
}
"""SAEBench's class pairs per data set (`column1_vals_lookup`), in its order."""
SPURIOUS = {"bios": ("male", "female"), "reviews": ("1.0", "5.0")}
"""The second label's two values (SAEBench's `COLUMN2_VALS_LOOKUP`): the first goes with the
first class of a pair in the biased set."""
TPP_CLASSES = {
    "bios": ("accountant", "architect", "attorney", "dentist", "filmmaker"),
    "reviews": (
        "Toys_and_Games",
        "Cell_Phones_and_Accessories",
        "Industrial_and_Scientific",
        "Musical_Instruments",
        "Electronics",
    ),
}
"""SAEBench's TPP classes (`chosen_classes_per_dataset`: bias_in_bios_class_set1 codes 0 1 2 6
9; Amazon codes 1 2 3 5 6)."""


@dataclass
class ScrTppSettings:
    """What SCR and TPP share: the data, the probes, the ablation sizes and the repetitions."""

    datasets: tuple[str, ...] = DATASETS
    """Which data sets: "bios" (Bias in Bios) and/or "reviews" (Amazon reviews); each is the
    generated stand-in unless `dataset` gives a local copy of it."""
    dataset: str | None = None
    """A local copy of Bias in Bios (columns hard_text, profession, gender) or of SAEBench's
    Amazon reviews (text, category, rating): a file or folder (see
    `saelab.evaluation.datasets.common.read_table`). It replaces that data set's stand-in (the
    kind is told by its columns)."""
    train_size: int = 4000
    """Training examples of each probe (SAEBench: 4000)."""
    test_size: int = 1000
    """Test examples of each probe (SAEBench: 1000)."""
    n_values: tuple[int, ...] = N_VALUES
    """Numbers of latents ablated (those above the SAE's width are skipped)."""
    repeats: int = 3
    """Repetitions R, each with its own seed for the texts (a new sample of a local copy, new
    generated texts) and for the probes' initialisation and batches; every metric is the mean
    over them, with a 95% t-interval (SAEBench runs once: R = 1 cannot give an interval)."""
    seed: int = 42
    """Seed of the first repetition (SAEBench's random_seed); repetition r uses seed + r."""
    context_length: int = 128
    """Tokens per text, BOS included; longer texts are cut (SAEBench: 128)."""
    probe_batch_size: int = 16
    """Probe training batch size. SAEBench fixes it at 16 on purpose: the batch size changes
    how much of the spurious signal the biased probe learns."""
    probe_epochs: int = 20
    """Probe training epochs (SAEBench: 20)."""
    probe_lr: float = 1e-3
    """Probe learning rate (AdamW; SAEBench: 1e-3)."""
    probe_l1: float = 1e-3
    """L1 penalty on the probe's weights, added to the loss as l1 · Σ|w| (SAEBench: 1e-3)."""
    llm_batch_size: int = 32
    """Texts per forward pass of the model."""
    sae_batch_size: int = 4096
    """Tokens per SAE encoding batch."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        unknown = [d for d in self.datasets if d not in DATASETS]
        if not self.datasets or unknown:
            raise UserError(
                f"unknown data set {unknown[0] if unknown else 'none'!r}: choose from "
                f"{', '.join(DATASETS)}"
            )
        if self.train_size < 8 or self.test_size < 8:
            raise UserError(
                f"train_size and test_size must be at least 8 (two per quadrant and class), got "
                f"{self.train_size} and {self.test_size}"
            )
        if self.dataset is not None and not Path(self.dataset).expanduser().exists():
            raise UserError(
                f"dataset {self.dataset!r} does not exist; give a local copy of Bias in Bios or "
                "Amazon reviews (a file or folder), or leave it out for the generated stand-ins"
            )
        if not self.n_values or min(self.n_values) < 1:
            raise UserError(f"n_values must be positive integers, got {self.n_values}")
        if self.repeats < 2:
            raise UserError(
                f"repeats must be at least 2 (the confidence interval needs two), got "
                f"{self.repeats}"
            )
        if self.probe_epochs < 1 or self.probe_batch_size < 1 or self.probe_lr <= 0:
            raise UserError("probe_epochs and probe_batch_size must be >= 1 and probe_lr > 0")
        if self.probe_l1 < 0 or self.context_length < 2:
            raise UserError("probe_l1 must be >= 0 and context_length >= 2")


@dataclass
class ScrSettings(ScrTppSettings):
    """SCR: which class pairs of each data set."""

    pairs: int = 4
    """Class pairs per data set, the first of SAEBench's four (bios: professor/nurse,
    architect/journalist, surgeon/psychologist, attorney/teacher; reviews: Books/CDs_and_Vinyl,
    Software/Electronics, Pet_Supplies/Office_Products, Industrial_and_Scientific/
    Toys_and_Games)."""

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.pairs <= 4:
            raise UserError(f"pairs must be 1 to 4, got {self.pairs}")


@dataclass
class TppSettings(ScrTppSettings):
    """TPP: SAEBench's five classes of each data set."""

    classes: int = field(default=5)
    """Classes per data set, the first of SAEBench's five (bios: accountant, architect,
    attorney, dentist, filmmaker; reviews: Toys_and_Games, Cell_Phones_and_Accessories,
    Industrial_and_Scientific, Musical_Instruments, Electronics)."""

    def validate(self) -> None:
        super().validate()
        if not 2 <= self.classes <= 5:
            raise UserError(f"classes must be 2 to 5, got {self.classes}")
