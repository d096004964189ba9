"""Example windows of a latent (from the results store), how they are split and how they are shown.

Each stored window is a run of token ids with the latent's activation on every token. A latent's
windows are split into a set the explainer sees (top and quantile windows) and disjoint scoring
sets (activating windows; windows where it is silent throughout), chosen with a seed.

Rendering keeps corpus text from forging the prompt's markup: `<` and `>` in corpus text become
`‹` and `›` (so only saelab writes the `<<…>>` marks), and line breaks become `⏎` (so an excerpt
stays on its own numbered line).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.resultstore.rows import FeatureExampleRow

MARK_OPEN, MARK_CLOSE = "<<", ">>"
_ESCAPES = str.maketrans({"<": "‹", ">": "›", "\n": "⏎", "\r": "⏎", "\t": " "})


@dataclass
class WindowConfig:
    """How many stored example windows each step uses (explanation and scoring sets are disjoint)."""

    explain_top: int = 8
    """Top-activating windows shown to the explainer."""
    explain_quantile: int = 4
    """Quantile-band windows shown to the explainer (spread over the bands, highest first)."""
    score_activating: int = 10
    """Activating windows (quantile, remaining top, random) for detection, fuzzing, embedding."""
    score_nonactivating: int = 10
    """Windows where the latent is silent throughout, for detection and embedding."""
    simulation_windows: int = 6
    """Windows the simulator predicts token by token (two thirds activating)."""
    batch_size: int = 5
    """Windows per detection / fuzzing request."""
    min_explain: int = 3
    """Below this many explanation windows a latent gets status insufficient_examples."""
    min_score: int = 4
    """Below this many activating (or silent) scoring windows: insufficient_examples."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        for name in ("explain_top", "score_activating", "score_nonactivating", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        for name in ("explain_quantile", "simulation_windows", "min_explain", "min_score"):
            if getattr(self, name) < 0:
                raise UserError(f"`{name}` must be at least 0, got {getattr(self, name)}")


@dataclass
class Window:
    """One excerpt: token strings and the latent's activation on each."""

    tokens: list[str]
    acts: np.ndarray
    kind: str
    """top, quantile, random or nonactivating (as stored)."""
    key: tuple
    """(kind, band, rank): identifies the stored row."""

    @property
    def active(self) -> np.ndarray:
        return self.acts > 0

    @property
    def max_act(self) -> float:
        return float(self.acts.max()) if len(self.acts) else 0.0


@dataclass
class LatentWindows:
    """A latent's windows, split for explaining and scoring."""

    explain: list[Window]
    activating: list[Window]
    silent: list[Window]
    max_act: float
    """The latent's largest activation over the whole store (scales the simulator's 0–10)."""

    def insufficient(self, cfg: WindowConfig, scoring: bool = True) -> str | None:
        """Why this latent cannot be explained (or, `scoring`, scored) fairly, or None."""
        if len(self.explain) < cfg.min_explain:
            return f"{len(self.explain)} explanation windows (need {cfg.min_explain})"
        if not scoring:
            return None
        if len(self.activating) < cfg.min_score:
            return f"{len(self.activating)} activating scoring windows (need {cfg.min_score})"
        if len(self.silent) < cfg.min_score:
            return f"{len(self.silent)} silent windows (need {cfg.min_score})"
        return None


def escape(text: str) -> str:
    return text.translate(_ESCAPES)


def render(window: Window, marked: np.ndarray | None = None) -> str:
    """The window's text, with runs of marked tokens wrapped in <<…>>."""
    if marked is None:
        return escape("".join(window.tokens))
    parts, inside = [], False
    for token, mark in zip(window.tokens, marked):
        if mark and not inside:
            parts.append(MARK_OPEN)
        elif not mark and inside:
            parts.append(MARK_CLOSE)
        inside = bool(mark)
        parts.append(escape(token))
    if inside:
        parts.append(MARK_CLOSE)
    return "".join(parts)


def numbered(lines: list[str]) -> str:
    return "\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))


def split_windows(
    rows: list[FeatureExampleRow],
    vocab: dict[int, str],
    max_act: float,
    cfg: WindowConfig,
    seed: int,
) -> LatentWindows:
    """Split one latent's stored example rows into the three sets."""
    by_kind: dict[str, list[Window]] = {
        "top": [],
        "quantile": [],
        "random": [],
        "nonactivating": [],
    }
    seen = set()
    for row in rows:
        identity = (row.seq, row.window_start)
        if identity in seen:  # a random pick may repeat a top window
            continue
        seen.add(identity)
        window = Window(
            tokens=[vocab.get(t, "") for t in row.tokens],
            acts=np.asarray(row.acts, dtype=np.float64),
            kind=row.kind,
            key=(row.kind, row.band, row.rank),
        )
        by_kind[row.kind].append(window)
    top = [w for w in by_kind["top"] if w.max_act > 0]
    quantile = sorted(by_kind["quantile"], key=lambda w: (-w.key[1], w.key[2]))
    explain = top[: cfg.explain_top] + _spread(quantile, cfg.explain_quantile)
    used = {id(w) for w in explain}
    rest = [w for w in quantile + top + by_kind["random"] if id(w) not in used and w.max_act > 0]
    rng = random.Random(seed)
    rng.shuffle(rest)
    silent = [w for w in by_kind["nonactivating"] if w.max_act == 0]
    rng.shuffle(silent)
    return LatentWindows(
        explain=explain,
        activating=rest[: cfg.score_activating],
        silent=silent[: cfg.score_nonactivating],
        max_act=max_act,
    )


def _spread(windows: list[Window], n: int) -> list[Window]:
    """n windows spread evenly over a list ordered from the highest band down."""
    if n <= 0 or not windows:
        return []
    picks = np.linspace(0, len(windows) - 1, min(n, len(windows))).round().astype(int)
    return [windows[i] for i in dict.fromkeys(picks.tolist())]
