"""What the data modules share: `LabelledTexts`, reading a local copy of a hub data set, and
building biased and balanced splits out of per-quadrant samples."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saelab.base.errors import UserError

PARTS = ("train", "test")
SPLITS = ("biased", "balanced")
LOCAL_TEST_FRACTION = 0.2
"""Share of a single-file local copy held out as its test part (a fixed permutation)."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts and, per label column, one value per text (strings, e.g. "nurse", "female")."""

    texts: list[str]
    labels: dict[str, np.ndarray]
    """Column name -> `[len(texts)]` array of label values."""
    source: str
    """Where the texts came from: "stand-in" (generated) or the local copy's path."""

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, idx: Sequence[int] | np.ndarray) -> LabelledTexts:
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledTexts(
            [self.texts[i] for i in idx], {k: v[idx] for k, v in self.labels.items()}, self.source
        )


def check_part(part: str) -> None:
    if part not in PARTS:
        raise UserError(f"unknown part {part!r}: choose {' or '.join(PARTS)}")


def stream_seed(seed: int, part: str, *keys: str) -> np.random.Generator:
    """A random stream of its own per (seed, part, quadrant): the first n texts of a quadrant
    do not depend on anything else asked."""
    import zlib

    return np.random.default_rng([seed, PARTS.index(part), *(zlib.crc32(k.encode()) for k in keys)])


GENERATED_TEST_SHARE = 4
"""A generated text belongs to the test part when the CRC-32 of its words is divisible by this
(a quarter of all possible texts), else to the train part: the parts can never share a text,
whatever the seeds."""


def generate_part(make: Callable[[np.random.Generator], str], n: int, part: str, rng) -> list[str]:
    """n texts from `make(rng)` that belong to `part` (see `GENERATED_TEST_SHARE`)."""
    import zlib

    want_test = part == "test"
    out: list[str] = []
    for _ in range(200 * (n + 10)):
        if len(out) == n:
            break
        text = make(rng)
        if (zlib.crc32(text.encode()) % GENERATED_TEST_SHARE == 0) == want_test:
            out.append(text)
    return out


@functools.lru_cache(maxsize=4)
def read_table(path: str) -> dict[str, object]:
    """A local copy as {"train": DataFrame, "test": DataFrame}.

    `path`: a folder saved by `datasets` (`save_to_disk`, with train and test splits); a folder
    holding files whose names contain "train" and "test" (.parquet, .csv, .json, .jsonl, as a hub
    snapshot's `data/` folder has); or one such file, whose rows are split into train and test
    by a fixed permutation (`LOCAL_TEST_FRACTION` held out).
    """
    import pandas as pd

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"dataset {path!r} does not exist; give a local copy's file or folder")
    if p.is_file():
        frame = _read_file(p)
        order = np.random.default_rng(0).permutation(len(frame))
        n_test = int(round(len(frame) * LOCAL_TEST_FRACTION))
        return {
            "train": frame.iloc[np.sort(order[n_test:])].reset_index(drop=True),
            "test": frame.iloc[np.sort(order[:n_test])].reset_index(drop=True),
        }
    if (p / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(p))
        missing = [s for s in PARTS if s not in dd]
        if missing:
            raise UserError(
                f"dataset {path!r} has no {missing[0]!r} split; it needs train and test"
            )
        return {s: dd[s].to_pandas() for s in PARTS}
    out = {}
    for part in PARTS:
        files = sorted(f for f in p.rglob(f"*{part}*") if f.is_file() and f.suffix in _READERS)
        if not files:
            raise UserError(
                f"dataset folder {path!r} has no {part} file (.parquet, .csv, .json or .jsonl "
                f"with {part!r} in its name); give a folder with train and test files or one file"
            )
        out[part] = pd.concat([_read_file(f) for f in files], ignore_index=True)
    return out


def _read_file(path: Path):
    reader = _READERS.get(path.suffix)
    if reader is None:
        raise UserError(
            f"cannot read {str(path)!r}: give a .parquet, .csv, .json or .jsonl file "
            "(or a folder saved by `datasets`)"
        )
    try:
        return reader(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {str(path)!r}: {err}") from None


def _pandas_reader(name: str, **kwargs) -> Callable:
    def read(path: Path):
        import pandas as pd

        return getattr(pd, name)(path, **kwargs)

    return read


_READERS = {
    ".parquet": _pandas_reader("read_parquet"),
    ".csv": _pandas_reader("read_csv"),
    ".json": _pandas_reader("read_json"),
    ".jsonl": _pandas_reader("read_json", lines=True),
}


def check_columns(frame, columns: Sequence[str], path: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path!r} is not a {what} copy: it lacks the column(s) {', '.join(missing)} "
            f"(needed: {', '.join(columns)}; found: {', '.join(map(str, frame.columns))})"
        )


def sample_rows(texts: list[str], n: int, rng: np.random.Generator, what: str, path: str):
    """n of `texts` without replacement (a clear error when the copy has too few)."""
    if len(texts) < n:
        raise UserError(
            f"{path!r} has only {len(texts)} texts of {what}, {n} are needed; "
            "ask for fewer examples (train/test sizes) or give a bigger copy"
        )
    return [texts[i] for i in rng.permutation(len(texts))[:n]]


def two_label_split(
    quadrant: Callable[[str, str, int], list[str]],
    columns: tuple[str, str],
    classes: tuple[str, str],
    spurious: tuple[str, str],
    split: str,
    n: int,
    source: str,
    seed: int,
) -> LabelledTexts:
    """A biased split (n/2 texts of (classes[0], spurious[0]) and n/2 of (classes[1],
    spurious[1]): the two labels perfectly correlated) or a balanced one (n/4 texts of each of
    the four quadrants), shuffled with `seed`. `quadrant(class, spurious, count)` gives texts."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose {' or '.join(SPLITS)}")
    if n < 4:
        raise UserError(f"a split needs at least 4 texts, got n={n}")
    if split == "biased":
        cells = [(classes[0], spurious[0], n // 2), (classes[1], spurious[1], n - n // 2)]
    else:
        sizes = [n // 4 + (1 if i < n % 4 else 0) for i in range(4)]
        pairs = [(c, s) for c in classes for s in spurious]
        cells = [(c, s, k) for (c, s), k in zip(pairs, sizes, strict=True)]
    texts, first, second = [], [], []
    for c, s, k in cells:
        got = quadrant(c, s, k)
        texts += got
        first += [c] * len(got)
        second += [s] * len(got)
    order = np.random.default_rng(seed).permutation(len(texts))
    return LabelledTexts(
        [texts[i] for i in order],
        {columns[0]: np.array(first)[order], columns[1]: np.array(second)[order]},
        source,
    )
