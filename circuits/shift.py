"""SHIFT (the Sparse Feature Circuits paper's "Spurious Human-interpretable Feature Trimming"):
remove a classifier's reliance on a spurious attribute by ablating the SAE features it uses
that a judge finds about that attribute.

biographies → splits (biased: profession ≡ gender; balanced train, judge, test) → a linear
probe for profession on the mean-pooled activation at `probe_hook`, trained on the biased split
→ attribution of its (wrong-class) logit to every latent of every spliced SAE (AtP, zero
ablation, summed over positions, mean over texts) → the top `candidates` → judged (LLM reading
explanations, else correlation with gender on held-out balanced texts) → the spurious ones
zero-ablated (error term kept) upstream of the probe → profession and gender accuracy of the
probe's predictions on the balanced test split, beside the paper's baselines: the oracle
(trained on balanced data), as many random latents ablated, the neuron version (the same
selection over the hooks' raw coordinates, mean-ablated) and SHIFT + retrain (the probe
retrained on the ablated biased split). 95% intervals: bootstrap over test examples.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.base.config import check_device, check_fields
from saelab.base.errors import UserError
from saelab.circuits import shift_acts as acts
from saelab.circuits.shift_data import ShiftData
from saelab.circuits.shift_judge import JUDGES, Verdict, by_correlation, by_llm, token_description
from saelab.resultstore.shift import METHOD_LABELS

METHODS = tuple(METHOD_LABELS)
"""The rows of a SHIFT result, in the paper's table order."""
INTERVAL = "bootstrap over test examples (percentile, 95%)"


@dataclass
class ShiftConfig:
    """A SHIFT experiment: which SAEs, which data, how features are chosen and judged."""

    sae: list[str]
    """SAE folders (one per hook, all at or before the probe's hook) or sweep folders."""
    db: str | None = None
    """DuckDB results file to store the run in (and whose stored explanations the LLM judge
    reads); None: nothing stored."""
    dataset: str | None = None
    """A local copy of Bias in Bios (columns hard_text, profession, gender); None: the
    generated stand-in."""
    professions: list[str] = field(default_factory=lambda: ["professor", "nurse"])
    """The two professions (label 0, label 1); the paper's pair: professor (mostly men in Bias
    in Bios) and nurse (mostly women)."""
    probe_hook: str | None = None
    """Where the classifier reads (mean-pooled over the text's tokens); None: the last SAE's
    hook. The paper reads Pythia-70M's layer 4 of 6; here the demo's SAEs end at blocks.8."""
    n_train: int = 200
    """Texts of the biased training split (and of the balanced one the oracle trains on)."""
    n_judge: int = 100
    """Balanced held-out texts for the correlation judge and the features' descriptions."""
    n_test: int = 200
    """Balanced test texts (every accuracy)."""
    attribution_texts: int = 64
    """Biased training texts the attribution averages over (the paper: 100)."""
    candidates: int = 50
    """Features with the largest positive effect that are judged (the paper kept effects above
    0.1 on Pythia-70M, a threshold in that model's logit units; a count carries over)."""
    judge: str = "auto"
    """auto (llm when `base_url` is given, else correlation), llm or correlation."""
    min_corr: float = 0.5
    """Correlation judge: |r(gender)| needed (and it must exceed |r(profession)|)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint of the LLM judge (e.g. `saelab llm-serve`'s)."""
    llm: str | None = None
    """Model name at the endpoint (None: the first it lists)."""
    api_key_env: str | None = None
    """Environment variable holding the endpoint's API key."""
    random_draws: int = 5
    """Random-latent baselines (each ablates as many latents as SHIFT, uniformly over the SAEs)."""
    neurons: bool = True
    """Run the neuron baseline."""
    retrain: bool = True
    """Run SHIFT + retrain."""
    bootstrap: int = 1000
    """Bootstrap resamples of the test examples for the 95% intervals."""
    batch_size: int = 16
    """Texts per forward pass."""
    max_length: int = 128
    """Tokens per text, BOS included (SAEBench's context length; the rest is cut)."""
    seed: int = 0
    """Seed of the splits, the stand-in's draws, the random baseline and the bootstrap."""
    model: str = "smollm2-135m"
    """Model spec (the model the SAEs were trained on)."""
    device: str = "cpu"
    """Torch device."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if not self.sae:
            raise UserError("give at least one SAE folder (`sae`)")
        if self.judge not in JUDGES:
            raise UserError(f"unknown judge {self.judge!r}: choose {', '.join(JUDGES)}")
        if self.judge == "llm" and not self.base_url:
            raise UserError(
                "the llm judge needs an endpoint: give `base_url` (e.g. `saelab llm-serve`'s), "
                "or use judge correlation"
            )
        if len(self.professions) != 2 or self.professions[0] == self.professions[1]:
            raise UserError(f"give two different professions, got {self.professions}")
        for name in ("n_train", "n_judge", "n_test"):
            if getattr(self, name) < 4:
                raise UserError(f"`{name}` must be at least 4 (one text per group), got "
                                f"{getattr(self, name)}")  # fmt: skip
        for name in ("attribution_texts", "candidates", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.random_draws < 0:
            raise UserError(f"`random_draws` must be >= 0, got {self.random_draws}")
        if self.bootstrap < 100:
            raise UserError(
                f"`bootstrap` must be at least 100 resamples (the stored 95% intervals come "
                f"from it), got {self.bootstrap}; the default is 1000"
            )
        if not (0 <= self.min_corr <= 1 and math.isfinite(self.min_corr)):
            raise UserError(f"`min_corr` must lie in [0, 1], got {self.min_corr}")
        if self.max_length < 2:
            raise UserError(
                f"`max_length` must be at least 2 (BOS and a token), got {self.max_length}"
            )
        check_device(self.device)


@dataclass
class Accuracy:
    method: str
    label: str
    """profession or gender: the probe's predictions scored against that label."""
    accuracy: float
    ci_low: float
    ci_high: float
    n_ablated: int
    """Latents (or neurons) ablated."""


@dataclass
class JudgedFeature:
    """A candidate: one latent (or neuron, `sae_id` None) the probe relies on, and its verdict."""

    kind: str
    """latent or neuron."""
    hook: str
    feature: int
    effect: float
    """Mean attributed effect on the probe's wrong-class logit of zero-ablating it (neurons:
    mean-ablating it); positive: it supports the probe's prediction."""
    verdict: Verdict
    sae_id: str | None = None

    @property
    def spurious(self) -> bool:
        return self.verdict.spurious


@dataclass
class ShiftResult:
    config: ShiftConfig
    accuracies: list[Accuracy]
    features: list[JudgedFeature]
    """Latent candidates, then neuron candidates, each largest effect first."""
    judge: str
    """What judged the latents: llm, correlation, or llm+correlation (some answers unparsable)."""
    probe_hook: str
    hooks: list[str]
    data_source: str
    n_texts: dict[str, int]
    train_accuracy: float
    """The biased probe's profession accuracy on its own (biased) training texts."""
    run_id: str | None = None
    seconds: float = 0.0

    def accuracy(self, method: str, label: str) -> Accuracy | None:
        return next((a for a in self.accuracies if a.method == method and a.label == label), None)

    @property
    def ablated(self) -> list[JudgedFeature]:
        return [f for f in self.features if f.kind == "latent" and f.spurious]


# -- the run ---------------------------------------------------------------------------------


def run_shift(
    cfg: ShiftConfig, model=None, data: ShiftData | None = None, log=print, spliced=None
) -> ShiftResult:
    """Run SHIFT end to end (see the module docstring); store it when `cfg.db` is set.

    `model` (a loaded model) and `data` (the splits) skip loading them; `spliced` (a
    `SplicedModel`, e.g. hand-built SAEs in tests) replaces the SAE folders of `cfg.sae`."""
    from saelab import resultstore as results
    from saelab.circuits.splice import hook_order, load_spliced

    cfg.validate()
    start = time.perf_counter()
    store = results.ResultsStore(cfg.db, mode="write") if cfg.db else None
    if spliced is None:  # before the model: a wrong folder fails at once
        from saelab.circuits.splice import sae_folders

        sae_folders(cfg.sae)
    if data is None:  # so does bad data
        from saelab.circuits.shift_data import load_shift_data

        data = load_shift_data(cfg)
    if spliced is None:
        if model is None:
            from saelab.activations.models import load_model

            model = load_model(cfg.model, device=cfg.device)
        spliced = load_spliced(model, cfg.sae, device=cfg.device, selection="reselect")
    model = spliced.model
    probe_hook = cfg.probe_hook or spliced.hooks[-1]
    model.validate_hooks([probe_hook])
    hook_order(probe_hook)
    late = [h for h in spliced.hooks if hook_order(h) > hook_order(probe_hook)]
    if late:
        raise UserError(
            f"the SAE at {late[0]} lies after the probe's hook {probe_hook}, so it cannot change "
            "what the probe reads: drop it or give a later `probe_hook`"
        )
    run = _Runner(cfg, spliced, probe_hook, data)
    result = run.all(log)
    result.seconds = time.perf_counter() - start
    if store is not None:
        from saelab.circuits.shift_store import store_shift

        result.run_id = store_shift(
            store, result, spliced, model, data_hash(data), config_dict(cfg), INTERVAL
        )
    return result


class _Runner:
    """The steps of one run, sharing the model, the data and the progress bar."""

    def __init__(self, cfg: ShiftConfig, spliced, probe_hook: str, data: ShiftData):
        self.cfg, self.spliced, self.probe_hook, self.data = cfg, spliced, probe_hook, data
        self.tok = spliced.model.tokenizer
        self.test_prof = np.array([b.profession for b in data.test])
        self.test_gender = np.array([b.gender for b in data.test])

    def batches(self, bios):
        return acts.batches(
            self.tok, [b.text for b in bios], self.cfg.batch_size, self.cfg.max_length
        )

    def pooled(self, bios, what: str, edits=None) -> np.ndarray:
        bar = tqdm(total=len(bios), desc=f"shift: {what}", disable=not self.cfg.progress,
                   leave=False)  # fmt: skip
        try:
            out = acts.pooled(self.spliced, self.batches(bios), self.probe_hook, edits, bar.update)
        finally:
            bar.close()
        if not torch.isfinite(out).all():
            raise UserError(f"activations at {self.probe_hook} are NaN or infinite ({what})")
        return out.numpy()

    def all(self, log) -> ShiftResult:
        from saelab.evaluation.probing.probes import accuracy as probe_accuracy
        from saelab.evaluation.probing.probes import fit_probe

        cfg, data = self.cfg, self.data
        biased_y = np.array([b.profession for b in data.biased_train])
        x_biased = self.pooled(data.biased_train, "biased train")
        x_balanced = self.pooled(data.balanced_train, "balanced train")
        x_test = self.pooled(data.test, "test")
        probe = fit_probe(x_biased, biased_y)
        oracle = fit_probe(x_balanced, np.array([b.profession for b in data.balanced_train]))
        train_acc = probe_accuracy(probe, x_biased, biased_y)
        linear = raw_probe(probe)
        preds = {"original": probe.predict(x_test), "oracle": oracle.predict(x_test)}
        log(
            f"probe at {self.probe_hook}: {len(biased_y)} biased texts (train accuracy "
            f"{train_acc:.3f}); test profession accuracy {_acc(preds['original'], self.test_prof):.3f}, "
            f"gender {_acc(preds['original'], self.test_gender):.3f}"
        )

        effects = self.latent_effects(linear)
        candidates = top_candidates(effects, cfg.candidates)
        if not candidates:
            raise UserError(
                "no latent supports the probe's predictions (every attributed effect is <= 0); "
                "check the SAEs and the probe's hook"
            )
        verdicts, judge = self.judge_latents(candidates)
        sae_ids = self.sae_ids()
        features = [
            JudgedFeature("latent", h, f, e, v, sae_ids.get(h))
            for (h, f, e), v in zip(candidates, verdicts)
        ]
        spurious = [f for f in features if f.spurious]
        if not spurious:
            raise UserError(
                f"no gender-related feature among the top {len(candidates)} the probe relies on "
                f"(judge {judge}); raise `candidates`"
                + (", or lower `min_corr`" if "correlation" in judge else "")
            )
        log(f"{len(spurious)} of {len(candidates)} candidate latents judged spurious ({judge})")
        edits = self.latent_edits([(f.hook, f.feature) for f in spurious])
        x_test_abl = self.pooled(data.test, "test, SHIFT", edits)
        preds["shift"] = probe.predict(x_test_abl)
        n = {m: len(spurious) for m in ("shift", "shift_retrain", "random")}
        if cfg.retrain:
            x_biased_abl = self.pooled(data.biased_train, "biased train, SHIFT", edits)
            preds["shift_retrain"] = fit_probe(x_biased_abl, biased_y).predict(x_test_abl)
        if cfg.random_draws:
            preds["random"] = np.stack(
                [probe.predict(self.pooled(data.test, f"test, random {i + 1}", self.random_edits(
                    len(spurious), cfg.seed + i))) for i in range(cfg.random_draws)]
            )  # fmt: skip
        if cfg.neurons:
            neuron_feats, neuron_preds = self.neuron_baseline(linear, probe)
            features += neuron_feats
            n["neurons"] = sum(f.spurious for f in neuron_feats)
            preds["neurons"] = neuron_preds
        accuracies = []
        for method in METHODS:
            if method not in preds:
                continue
            for label, y in (("profession", self.test_prof), ("gender", self.test_gender)):
                value, low, high = bootstrap_accuracy(preds[method], y, cfg.bootstrap, cfg.seed)
                accuracies.append(Accuracy(method, label, value, low, high, n.get(method, 0)))
        return ShiftResult(
            config=cfg, accuracies=accuracies, features=features, judge=judge,
            probe_hook=self.probe_hook, hooks=list(self.spliced.hooks), data_source=data.source,
            n_texts={"biased_train": len(data.biased_train), "balanced_train":
                     len(data.balanced_train), "judge": len(data.judge), "test": len(data.test),
                     "attribution": min(cfg.attribution_texts, len(data.biased_train))},
            train_accuracy=train_acc,
        )  # fmt: skip

    # -- latents -----------------------------------------------------------------------------

    def latent_effects(self, probe: acts.LinearProbe) -> dict[str, torch.Tensor]:
        bios = self.data.biased_train[: self.cfg.attribution_texts]
        totals: dict[str, torch.Tensor] = {}
        bar = tqdm(total=len(bios), desc="shift: attribution", disable=not self.cfg.progress,
                   leave=False)  # fmt: skip
        for start, batch in zip(range(0, len(bios), self.cfg.batch_size), self.batches(bios)):
            labels = torch.tensor([b.profession for b in bios[start : start + len(batch.tokens)]])
            part = acts.attribute_latents(self.spliced, batch, labels, probe, self.probe_hook)
            for h, v in part.items():
                totals[h] = totals.get(h, 0) + v
            bar.update(len(batch.tokens))
        bar.close()
        out = {h: v / len(bios) for h, v in totals.items()}
        if not all(torch.isfinite(v).all() for v in out.values()):
            raise UserError("an attributed effect is NaN or infinite; check the SAEs and model")
        return out

    def judge_latents(self, candidates) -> tuple[list[Verdict], str]:
        wanted: dict[str, list[int]] = {}
        for h, f, _ in candidates:
            wanted.setdefault(h, []).append(f)
        pooled, peak_tokens = self.latent_activity(wanted)
        columns = np.stack([pooled[h][:, wanted[h].index(f)] for h, f, _ in candidates], 1)
        gender = np.array([b.gender for b in self.data.judge])
        prof = np.array([b.profession for b in self.data.judge])
        verdicts = by_correlation(columns, gender, prof, self.cfg.min_corr)
        stored = self.stored_explanations(wanted)
        descriptions = [
            stored.get((h, f)) or token_description(peak_tokens[(h, f)]) for h, f, _ in candidates
        ]
        for v, d in zip(verdicts, descriptions):
            v.description = d
        use_llm = self.cfg.judge == "llm" or (self.cfg.judge == "auto" and self.cfg.base_url)
        if not use_llm:
            return verdicts, "correlation"
        bar = tqdm(total=len(candidates), desc="shift: LLM judge", disable=not self.cfg.progress,
                   leave=False)  # fmt: skip
        verdicts = by_llm(descriptions, verdicts, self.llm_config(), bar.update)
        bar.close()
        return verdicts, judge_label([v.judge for v in verdicts])

    def latent_activity(self, wanted: dict[str, list[int]]):
        """Pooled activations `[N, n]` per hook and each latent's top tokens on the judge split."""
        idx = {h: torch.tensor(f) for h, f in wanted.items()}
        pooled: dict[str, list] = {h: [] for h in wanted}
        peaks: dict[str, list] = {h: [] for h in wanted}
        tokens: list = []
        for batch in self.batches(self.data.judge):
            p, pk = acts.pooled_latents(self.spliced, batch, idx)
            for h in wanted:
                pooled[h].append(p[h])
                peaks[h].append(pk[h][0])
            tokens.append(batch.tokens.reshape(-1))
        ids = torch.cat(tokens)
        out = {h: torch.cat(v).numpy() for h, v in pooled.items()}
        top: dict[tuple[str, int], list[str]] = {}
        for h, feats in wanted.items():
            vals = torch.cat(peaks[h])
            for j, f in enumerate(feats):
                col = vals[:, j]
                order = torch.argsort(col, descending=True)[:20]
                words: list[str] = []
                for r in order.tolist():
                    if col[r] <= 0:
                        break
                    word = self.tok.decode([int(ids[r])])
                    if word not in words:
                        words.append(word)
                top[(h, f)] = words[:8] or ["(never fires on these texts)"]
        return out, top

    def latent_edits(self, latents: list[tuple[str, int]]) -> dict:
        by_hook: dict[str, list[int]] = {}
        for h, f in latents:
            by_hook.setdefault(h, []).append(f)
        return {
            h: acts.zero_latents(self.spliced.saes[h], torch.tensor(f)) for h, f in by_hook.items()
        }

    def random_edits(self, n: int, seed: int) -> dict:
        """n latents drawn uniformly (without replacement) from every latent of every SAE."""
        sizes = [self.spliced.saes[h].d_sae for h in self.spliced.hooks]
        g = torch.Generator().manual_seed(seed)
        picks = torch.randperm(sum(sizes), generator=g)[:n].tolist()
        bounds = np.cumsum([0, *sizes])
        chosen = []
        for p in picks:
            i = int(np.searchsorted(bounds, p, side="right") - 1)
            chosen.append((self.spliced.hooks[i], p - int(bounds[i])))
        return self.latent_edits(chosen)

    def sae_ids(self) -> dict[str, str]:
        """Hook → the store's id of its SAE (none for SAEs built in memory)."""
        if not self.spliced.folders:
            return {}
        from saelab.circuits.run import _records

        return {h: r.sae_id for h, r in _records(self.spliced, self.spliced.model).items()}

    def stored_explanations(self, wanted: dict[str, list[int]]) -> dict[tuple[str, int], str]:
        if not self.cfg.db or not Path(self.cfg.db).exists():
            return {}
        from saelab import resultstore as results

        store = results.ResultsStore(self.cfg.db, mode="read")
        ids = self.sae_ids()
        out = {}
        for h, feats in wanted.items():
            for f, text in results.explanation_texts(store, ids.get(h, ""), feats).items():
                if text:
                    out[(h, f)] = text
        return out

    def llm_config(self):
        from saelab.autointerp.client import LLMConfig

        return LLMConfig(
            base_url=self.cfg.base_url, model=self.cfg.llm, api_key_env=self.cfg.api_key_env,
            seed=self.cfg.seed,
        )  # fmt: skip

    # -- neurons -----------------------------------------------------------------------------

    def neuron_baseline(self, linear: acts.LinearProbe, probe):
        """The same selection over the SAE hooks' raw coordinates: attribution (mean ablation),
        the top `candidates`, judged by correlation (a neuron has no explanation), the spurious
        ones set to their mean over the biased training texts."""
        cfg, data, hooks = self.cfg, self.data, list(self.spliced.hooks)
        means = acts.neuron_means(self.spliced, self.batches(data.biased_train), hooks)
        bios = data.biased_train[: cfg.attribution_texts]
        totals: dict[str, torch.Tensor] = {}
        for start, batch in zip(range(0, len(bios), cfg.batch_size), self.batches(bios)):
            labels = torch.tensor([b.profession for b in bios[start : start + len(batch.tokens)]])
            part = acts.attribute_neurons(
                self.spliced, batch, labels, linear, self.probe_hook, hooks, means
            )
            for h, v in part.items():
                totals[h] = totals.get(h, 0) + v
        effects = {h: v / len(bios) for h, v in totals.items()}
        candidates = top_candidates(effects, cfg.candidates)
        pooled: dict[str, list] = {h: [] for h in hooks}
        with torch.no_grad():
            for batch in self.batches(data.judge):
                captured: dict = {}
                edits = {h: acts._capture(captured, h) for h in hooks}
                acts._forward(self.spliced, batch.tokens, edits, hooks[-1])
                for h in hooks:
                    pooled[h].append(acts.mean_pool(captured[h].float(), batch.mask))
        x = {h: torch.cat(v).numpy() for h, v in pooled.items()}
        columns = np.stack([x[h][:, f] for h, f, _ in candidates], 1) if candidates else None
        gender = np.array([b.gender for b in data.judge])
        prof = np.array([b.profession for b in data.judge])
        verdicts = by_correlation(columns, gender, prof, cfg.min_corr) if candidates else []
        feats = [JudgedFeature("neuron", h, f, e, v) for (h, f, e), v in zip(candidates, verdicts)]
        by_hook: dict[str, list[int]] = {}
        for f in feats:
            if f.spurious:
                by_hook.setdefault(f.hook, []).append(f.feature)
        edits = {
            h: acts.set_neurons(torch.tensor(d), means[h][torch.tensor(d)])
            for h, d in by_hook.items()
        }
        preds = probe.predict(self.pooled(data.test, "test, neurons", edits))
        return feats, preds


# -- helpers ---------------------------------------------------------------------------------


def judge_label(judges: list[str]) -> str:
    """The run's judge from the per-feature ones: llm, correlation, or llm+correlation (the
    LLM's unparsable answers fell back to correlation)."""
    asked = sum(j == "llm" for j in judges)
    if asked == len(judges):
        return "llm"
    return "llm+correlation" if asked else "correlation (every llm answer unparsable)"


def raw_probe(pipeline) -> acts.LinearProbe:
    """A fitted `fit_probe` pipeline (scaler + logistic regression) as w · x + b in the raw
    activation space (the same logit, so the same predictions)."""
    scaler, reg = pipeline[0], pipeline[-1]
    w = reg.coef_[0] / scaler.scale_
    b = float(reg.intercept_[0] - (w * scaler.mean_).sum())
    return acts.LinearProbe(torch.tensor(w, dtype=torch.float32), b)


def top_candidates(effects: dict[str, torch.Tensor], n: int) -> list[tuple[str, int, float]]:
    """The n (hook, feature, effect) with the largest positive effect, largest first; effects
    below `RELATIVE_FLOOR` of the largest are float noise, not reliance, and are left out."""
    rows = []
    for h, v in effects.items():
        k = min(n, v.numel())
        vals, idx = torch.topk(v, k)
        rows += [(h, int(i), float(e)) for e, i in zip(vals, idx) if e > 0]
    rows.sort(key=lambda r: -r[2])
    floor = rows[0][2] * RELATIVE_FLOOR if rows else 0.0
    return [r for r in rows[:n] if r[2] > floor]


RELATIVE_FLOOR = 1e-3
"""Candidates need an effect above this share of the largest one."""


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


def bootstrap_accuracy(
    pred: np.ndarray, y: np.ndarray, resamples: int, seed: int
) -> tuple[float, float, float]:
    """Accuracy and its 95% percentile-bootstrap interval over test examples. `pred` `[N]`, or
    `[draws, N]` (several random ablations: each example's correctness is averaged over the
    draws, then examples are resampled)."""
    correct = (np.atleast_2d(pred) == y[None, :]).mean(0)
    value = float(correct.mean())
    if resamples == 0:
        return value, value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(resamples, len(correct)))
    means = correct[idx].mean(1)
    return value, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def config_dict(cfg: ShiftConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in ("progress", "db", "device")}


def data_hash(data: ShiftData) -> str:
    payload = json.dumps(
        [[asdict(b) for b in split] for split in
         (data.biased_train, data.balanced_train, data.judge, data.test)], sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
