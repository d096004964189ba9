"""The unlearning measurement of one SAE: questions, the clean answers and which questions
are kept, latent firing frequencies on the forget and retain corpora, the sweep of clamps, and
the score with its bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.base.errors import UserError
from saelab.evaluation.unlearning import answering, intervention, questions
from saelab.evaluation.unlearning.config import UnlearningSettings
from saelab.evaluation.unlearning.score import SweepOutcome, bootstrap, interval, unlearning_score

SUBSTITUTE_PREFIX = "unlearning_substitute"
REAL_PREFIX = "unlearning"


@dataclass
class UnlearningResult:
    """What the sweep measured, ready to be written as metrics."""

    prefix: str
    keys: list[str]
    """One per setting: `r{threshold}-n{features}-m{multiplier}`."""
    forget_acc: np.ndarray
    retain_acc: np.ndarray
    score: float
    best: int | None
    boot: dict[str, np.ndarray]
    counts: dict[str, float]
    conventions: dict = field(default_factory=dict)
    n_tokens: int = 0

    def metrics(self) -> dict[str, float]:
        p = self.prefix
        out = {f"{p}_score": self.score}
        if self.best is not None:  # no setting keeps retain accuracy: no best setting
            out[f"{p}_best_forget_acc"] = float(self.forget_acc[self.best])
            out[f"{p}_best_retain_acc"] = float(self.retain_acc[self.best])
        for i, key in enumerate(self.keys):
            out[f"{p}_forget_acc_{key}"] = float(self.forget_acc[i])
            out[f"{p}_retain_acc_{key}"] = float(self.retain_acc[i])
        out.update({f"{p}_{k}": float(v) for k, v in self.counts.items()})
        return out

    def intervals(self) -> dict[str, tuple[float, float]]:
        p, b = self.prefix, self.boot
        out = {f"{p}_score": interval(b["score"])}
        for i, key in enumerate(self.keys):
            out[f"{p}_forget_acc_{key}"] = interval(b["forget_acc"][:, i])
            out[f"{p}_retain_acc_{key}"] = interval(b["retain_acc"][:, i])
        if self.best is not None:
            out[f"{p}_best_forget_acc"] = out[f"{p}_forget_acc_{self.keys[self.best]}"]
            out[f"{p}_best_retain_acc"] = out[f"{p}_retain_acc_{self.keys[self.best]}"]
        return out


def setting_key(threshold: float, n: int, multiplier: float) -> str:
    return f"r{threshold:g}-n{n}-m{multiplier:g}"


class _Model:
    """The model, SAE and token conventions one measurement runs with."""

    def __init__(self, model, sae, hook: str, store, s: UnlearningSettings, device: str):
        self.bridge, self.tok, self.sae, self.hook, self.s = (
            model.bridge,
            model.tokenizer,
            sae,
            hook,
            s,
        )
        special = set(getattr(self.tok, "all_special_ids", []) or [])
        special |= set(store.attrs.get("special_token_ids", []) or [])
        if store.attrs.get("bos_token_id") is not None:
            special.add(int(store.attrs["bos_token_id"]))
        self.skip_ids = torch.tensor(sorted(special), dtype=torch.long, device=device)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.stop_layer = model.stop_layer([hook])
        self.letters = answering.letter_token_ids(self.tok)
        self.tokens_run = 0

    def run(self, seqs, read_format=None, edit=None, on_codes=None, stop=False) -> list:
        """Run sequences (`answering.Sequence`s, read in `read_format`, or token tuples)."""
        tokens = [q.tokens if isinstance(q, answering.Sequence) else q for q in seqs]
        self.tokens_run += sum(len(t) for t in tokens)
        read = None
        if read_format is not None:

            def read(logits, sl, _seqs=seqs):
                return answering.readouts(logits, _seqs[sl], read_format, self.letters)

        return intervention.run_batches(
            self.bridge, self.hook, self.sae, tokens,
            self.skip_ids, self.pad_id, self.s.batch_size, read, edit,
            stop_at_layer=self.stop_layer if stop else None, on_codes=on_codes,
        )  # fmt: skip


class _FireCounter:
    """Counts, per latent, the positions it fires on (for frequencies) or, per sequence, whether
    it fires anywhere (for the sweep's skip rule)."""

    def __init__(self, d_sae: int, n_seqs: int = 0):
        self.count = torch.zeros(d_sae, dtype=torch.float64)
        self.rows = 0
        self.per_seq = np.zeros((n_seqs, d_sae), dtype=bool) if n_seqs else None

    def add(self, f: torch.Tensor, rows: torch.Tensor, sl: slice) -> None:
        on = f > 0
        self.count += on.sum(0).double().cpu()
        self.rows += len(f)
        if self.per_seq is not None:
            n = int(rows.max()) + 1 if len(rows) else 0
            hits = torch.zeros(n, f.shape[1], device=f.device).index_add_(0, rows, on.float())
            self.per_seq[sl.start : sl.start + n] |= (hits > 0).cpu().numpy()

    @property
    def frequency(self) -> np.ndarray:
        return (self.count / max(self.rows, 1)).numpy()


def _question_sets(s: UnlearningSettings):
    if s.substitute:
        forget, retain = questions.substitute_questions(s.max_questions, s.seed)
        return forget, retain, questions.substitute_forget_corpus(), "generated chemistry text"
    forget = questions.load_questions(s.dataset, "biology", s.max_questions)
    retain = []
    for path in s.retain_dataset:
        subject = _subject_of(path)
        retain += questions.load_questions(path, subject, s.max_questions)
    if s.forget_corpus:
        return forget, retain, questions.load_corpus(s.forget_corpus), s.forget_corpus
    corpus = [f"{q.question} {q.choices[q.answer]}" for q in forget]
    return forget, retain, corpus, "the forget questions' own text (no forget corpus given)"


def _subject_of(path: str) -> str:
    """A subject name from a file's path: its stem, or its folder where the stem is a hub
    shard name (`high_school_geography/test-00000-of-00001.parquet`)."""
    from pathlib import Path

    file = Path(path)
    stem = file.stem.split("-00000-of-")[0]
    if stem in ("test", "validation", "dev", "train", ""):
        stem = file.parent.name
    return stem.replace("-", "_") or "general"


def _retain_frequency(m: _Model, store, chunks: list[int], limit: int) -> tuple[np.ndarray, int]:
    counter = _FireCounter(m.sae.d_sae)
    device = m.skip_ids.device
    for c in chunks:
        acts = store.read_acts(m.hook, c)
        mask = torch.from_numpy(store.token_mask(c))
        rows = acts[mask].to(device).float()
        rows = rows[: limit - counter.rows]
        for start in range(0, len(rows), 4096):
            with torch.no_grad():
                counter.add(m.sae.encode(rows[start : start + 4096]), torch.empty(0), slice(0, 0))
        if counter.rows >= limit:
            break
    if counter.rows == 0:
        raise UserError("the store split read as the retain corpus has no tokens")
    return counter.frequency, counter.rows


def _forget_frequency(m: _Model, store, docs: list[str], limit: int) -> tuple[np.ndarray, int]:
    prepend = store.attrs.get("bos") == "prepend" and store.attrs.get("bos_token_id") is not None
    seqs, total = [], 0
    for doc in docs:
        ids = list(m.tok(doc, add_special_tokens=False)["input_ids"])[: store.seq_len - 1]
        ids = ([int(store.attrs["bos_token_id"])] if prepend else []) + ids
        seqs.append(tuple(ids))
        total += len(ids)
        if total >= limit:
            break
    counter = _FireCounter(m.sae.d_sae)
    m.run(seqs, on_codes=counter.add, stop=True)
    return counter.frequency, counter.rows


@dataclass
class _Clean:
    """The unmodified model's answers."""

    seqs: list[answering.Sequence]
    values: list
    fires: _FireCounter
    answers: np.ndarray
    base_acc: np.ndarray
    """Right on the question's own option order, per question."""
    kept: np.ndarray
    """Right under every ordering asked (cloze: the one), per question."""


def _clean_answers(m: _Model, qs: list, s: UnlearningSettings) -> _Clean:
    fmt = s.answer_format
    perms = s.permutations if fmt == "letter" else 1
    seqs = answering.build_sequences(m.tok, qs, fmt, perms, s.system_prompt)
    fires = _FireCounter(m.sae.d_sae, len(seqs))
    values = m.run(seqs, read_format=fmt, on_codes=fires.add)
    answers = np.array([q.answer for q in qs])
    right = answering.predictions(seqs, values, fmt, len(qs)) == answers[:, None]
    return _Clean(seqs, values, fires, answers, right[:, 0], right.all(1))


def _sweep(m: _Model, clean: _Clean, freqs, s: UnlearningSettings, device: str, log=None):
    """Each setting's right/wrong per question (on the question's own option order, as
    SAEBench reads the identity ordering), with the latents it clamps. Only the sequences on
    which a clamped latent fires are run again; settings clamping the same latents at the same
    multiplier share one run."""
    fmt, seqs = s.answer_format, clean.seqs
    sweep_idx = np.array(
        [
            i
            for i, q in enumerate(seqs)
            if (q.option == 0 or fmt == "cloze") and clean.kept[q.question]
        ]
    )
    sub = [seqs[i] for i in sweep_idx]
    on_seq = clean.fires.per_seq[sweep_idx]
    rows, picked, candidates, done = {}, {}, {}, {}
    for threshold in s.retain_thresholds:
        ranked = intervention.pick_latents(*freqs, threshold)
        candidates[threshold] = len(ranked)
        for n in s.n_features:
            latents = ranked[:n]
            hit = on_seq[:, latents].any(1) if len(latents) else np.zeros(len(sub), bool)
            for mult in s.multipliers:
                key = setting_key(threshold, n, mult)
                memo = (tuple(latents.tolist()), mult)
                if memo not in done:
                    values = [clean.values[i] for i in sweep_idx]
                    redo = np.flatnonzero(hit)
                    if len(redo):
                        lat = torch.as_tensor(latents, device=device)
                        new = m.run(
                            [sub[i] for i in redo], read_format=fmt,
                            edit=lambda x, _l=lat, _m=mult: intervention.clamp(m.sae, x, _l, _m),
                        )  # fmt: skip
                        for i, v in zip(redo, new):
                            values[i] = v
                    p = answering.predictions(sub, values, fmt, len(clean.answers))
                    done[memo] = p[:, 0] == clean.answers
                rows[key], picked[key] = done[memo], [int(x) for x in latents]
                if log:
                    log(f"unlearning: {key}: {int(hit.sum())} sequences rerun")
    return rows, picked, candidates


def measure(
    model, sae, store, hook: str, chunks: list[int], s: UnlearningSettings, device: str, log=None
) -> UnlearningResult:
    """Run the unlearning sweep of one SAE on the questions `s` names (see the module)."""
    m = _Model(model, sae, hook, store, s, device)
    forget, retain, corpus, corpus_name = _question_sets(s)
    n_f = len(forget)
    clean = _clean_answers(m, forget + retain, s)
    kept_f, kept_r = np.flatnonzero(clean.kept[:n_f]), n_f + np.flatnonzero(clean.kept[n_f:])
    if len(kept_f) == 0 or len(kept_r) == 0:
        raise UserError(
            f"the model answers {len(kept_f)} of {n_f} forget and {len(kept_r)} of "
            f"{len(retain)} retain questions correctly; the unlearning eval needs some of each "
            "(more questions, or another answer_format)"
        )
    forget_freq, forget_tokens = _forget_frequency(m, store, corpus, s.corpus_tokens)
    retain_freq, retain_tokens = _retain_frequency(m, store, chunks, s.corpus_tokens)
    rows, picked, candidates = _sweep(m, clean, (forget_freq, retain_freq), s, device, log)
    keys = list(rows)
    outcome = SweepOutcome(
        np.array([rows[k][kept_f] for k in keys]), np.array([rows[k][kept_r] for k in keys])
    )
    forget_acc = outcome.forget_correct.mean(1)
    retain_acc = outcome.retain_correct.mean(1)
    score, best = unlearning_score(forget_acc, retain_acc, s.retain_fraction)
    boot = bootstrap(outcome, s.retain_fraction, s.bootstrap, s.seed)
    prefix = SUBSTITUTE_PREFIX if s.substitute else REAL_PREFIX
    counts = {
        "forget_questions": len(kept_f),
        "retain_questions": len(kept_r),
        "forget_questions_asked": n_f,
        "retain_questions_asked": len(retain),
        "base_forget_acc": float(clean.base_acc[:n_f].mean()),
        "base_retain_acc": float(clean.base_acc[n_f:].mean()),
        "settings_qualifying": int((retain_acc >= s.retain_fraction - 1e-12).sum()),
    }
    counts.update({f"candidates_r{t:g}": float(c) for t, c in candidates.items()})
    by_subject = {}
    for i, q in enumerate(forget + retain):
        seen = by_subject.setdefault(q.subject, {"asked": 0, "right": 0, "kept": 0})
        seen["asked"] += 1
        seen["right"] += int(clean.base_acc[i])
        seen["kept"] += int(clean.kept[i])
    conventions = {
        "source": "offline substitute: chemistry (periodictable) forget questions against "
        "geography (countryinfo) retain questions; not comparable with WMDP-bio/MMLU"
        if s.substitute else f"local copies: forget {s.dataset}, retain {', '.join(s.retain_dataset)}",
        "packages": questions.source_versions() if s.substitute else {},
        "answer_format": s.answer_format,
        "kept": "questions the unmodified model answers correctly"
        + (f" under all {s.permutations} option orderings" if s.answer_format == "letter" else ""),
        "accuracy": "over kept questions, so the original is 1 (SAEBench's normalisation); "
        "retain pooled over its subjects",
        "score": f"1 - min forget accuracy over settings with retain accuracy >= "
        f"{s.retain_fraction} (0 when none qualifies)",
        "interval": f"bootstrap over questions: {s.bootstrap} resamples of the kept forget and "
        "retain questions, percentile 95%",
        "subjects": by_subject,
        "forget_subjects": sorted({q.subject for q in forget}),
        "forget_corpus": corpus_name,
        "forget_corpus_tokens": forget_tokens,
        "retain_corpus": f"store split {s.corpus_split!r}",
        "retain_corpus_tokens": retain_tokens,
        "positions": "clamped at every position the SAE reads (not BOS, padding or special tokens)",
        "best_setting": keys[best] if best is not None else None,
        "best_latents": picked[keys[best]] if best is not None else [],
        "settings": {"retain_thresholds": s.retain_thresholds, "n_features": s.n_features,
                     "multipliers": s.multipliers, "max_questions": s.max_questions,
                     "seed": s.seed},
    }  # fmt: skip
    return UnlearningResult(
        prefix, keys, forget_acc, retain_acc, score, best, boot, counts, conventions,
        n_tokens=m.tokens_run + retain_tokens,
    )  # fmt: skip
