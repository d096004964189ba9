"""`saelab demo`: the whole pipeline on the embedded model and corpus, offline.

harvest (three layers in one pass) → train a small sweep of TopK SAEs (three k, one pass over
the data) and one SAE at each of the two earlier layers (the circuit's) → evaluate all of them
into the results database, so every SAE the app lists has its statistics → compare (the
frontier plots) → explain latents from their examples and score a few through the embedded
model, served by saelab's local endpoint (a 135M model judges weakly and explains worse;
`saelab explain --base-url` points it at a strong model) → find and evaluate a subject-verb
agreement circuit across the three layers, and explain its nodes. Each step is timed; rerunning
the demo reuses a finished harvest and training.

The steps are the list `STEPS`: a later stage adds itself with `STEPS.append(Step(...))` (or
inserts before "explain"), each a function of the `Demo` state that may read the earlier
steps' outputs from it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.base.fs import disk_error
from saelab.commands.flags import add_fields, given


@dataclass
class DemoConfig:
    """What the demo runs on (the defaults finish in a few minutes on 2 CPU cores)."""

    out: str = "runs/demo"
    """Folder for every output."""
    tokens: int = 100_000
    """Tokens to harvest from the builtin corpus."""
    seq_len: int = 128
    """Tokens per harvested sequence."""
    chunk_seqs: int = 64
    """Sequences per store chunk (the eval holds out whole chunks: keep several)."""
    hook: str = "blocks.8.hook_resid_post"
    """Where activations are read."""
    circuit_hooks: tuple[str, ...] = ("blocks.4.hook_resid_post", "blocks.6.hook_resid_post")
    """Earlier layers harvested in the same pass, one SAE each, for the circuit (empty: skip)."""
    circuit_prompts: int = 32
    """Subject-verb agreement prompts the circuit is found and evaluated on."""
    circuit_node_threshold: float = 0.04
    """Nodes kept in the circuit: |mean effect| at least this (logit-difference units; the
    top nodes' effects are exact patching's)."""
    circuit_edge_threshold: float = 0.002
    """Edges kept (and so checked against patching): |direct effect| at least this."""
    circuit_steps: int = 5
    """Integrated-gradients steps of the edge scores (5 agree with patching to r > 0.9999 on
    the demo's SAEs, at half the time of `saelab circuit`'s 10)."""
    d_sae: int = 2304
    """Latents of every SAE of the sweep."""
    ks: tuple[int, ...] = (16, 32, 64)
    """The sweep: one TopK SAE per k, trained together in one pass."""
    explain: int = 64
    """Live latents of each evaluated SAE explained by the offline default explainer (no LLM;
    the first `SCORED_LATENTS` of `explain_sae`'s are also scored); 0 skips the step."""
    explain_sae: str | None = None
    """Which SAE of the sweep to score explanations on (default: the middle k)."""
    scorers: tuple[str, ...] = ("detection", "fuzzing", "embedding")
    """Scorers of the scored latents (simulation is left out: a small model writes up to 4
    tokens per window token, which alone takes minutes on a CPU; `saelab explain` runs it)."""
    loss_sequences: int = 32
    """Sequences the loss eval splices the SAEs into."""
    progress: bool = True
    """Progress bars."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        counts = {"tokens": self.tokens, "seq_len": self.seq_len, "chunk_seqs": self.chunk_seqs,
                  "d_sae": self.d_sae, "circuit_prompts": self.circuit_prompts,
                  "circuit_steps": self.circuit_steps,
                  "loss_sequences": self.loss_sequences}  # fmt: skip
        bad = next((k for k, v in counts.items() if v < 1), None)
        if bad:
            raise UserError(f"`{bad}` must be at least 1, got {counts[bad]}")
        if self.explain < 0:
            raise UserError(
                f"`explain` must be 0 (skip the step) or more latents, got {self.explain}"
            )
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.d_sae:
            raise UserError(
                f"every k must be between 1 and d_sae ({self.d_sae}), got {list(self.ks)}"
            )
        for name in ("circuit_node_threshold", "circuit_edge_threshold"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise UserError(f"`{name}` must be a finite number >= 0, got {value}")
        check_demo_folder(Path(self.out))


CONFIG_FILE = "demo.json"
"""The demo's resolved config, written into its folder: a folder holding one is a demo folder
(a rerun reuses its finished harvest and sweep)."""


DEMO_OUTPUTS = ("acts.zarr", "sweep.toml", "saes", "results.duckdb")
"""What a demo writes into its folder (a folder holding these without a `demo.json` was made
by a demo from before the file existed)."""


def check_demo_folder(folder: Path) -> None:
    """The output folder must be new, empty, or an earlier demo's: never a user's folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the demo's output {folder} is a file; give a folder with `out`")
    if not folder.is_dir() or not any(folder.iterdir()) or (folder / CONFIG_FILE).is_file():
        return
    if all((folder / name).exists() for name in DEMO_OUTPUTS[:2]):
        return  # an earlier demo's folder, from before demo.json
    raise UserError(
        f"{folder} is not empty and holds no earlier demo ({CONFIG_FILE}); give a new or "
        "empty folder with `out`, so the demo never mixes its files into yours"
    )


@dataclass
class Demo:
    """The demo's state: its config, its outputs' paths, and objects loaded once and shared."""

    cfg: DemoConfig
    model: object = None
    """A loaded `saelab.activations.models.LoadedModel` (loaded by the harvest when None)."""
    generator: object = None
    """A loaded `saelab.autointerp.server.Generator` for the local endpoint (loaded when None)."""
    times: dict[str, float] = field(default_factory=dict)
    """Seconds per finished step."""
    notes: dict[str, str] = field(default_factory=dict)
    """One line per step, printed with its time."""
    circuit: object = None
    """The circuit step's `circuits.run.CircuitResult`."""

    @property
    def folder(self) -> Path:
        return Path(self.cfg.out)

    @property
    def store(self) -> str:
        return str(self.folder / "acts.zarr")

    @property
    def saes(self) -> Path:
        return self.folder / "saes"

    @property
    def db(self) -> str:
        return str(self.folder / "results.duckdb")

    @property
    def compare_html(self) -> Path:
        return self.folder / "compare.html"

    @property
    def circuit_saes(self) -> Path:
        return self.folder / "circuit-saes"

    @property
    def circuit_html(self) -> Path:
        return self.folder / "circuit.html"

    @property
    def circuit_k(self) -> int:
        """k of the circuit SAEs: the sweep's middle k, as the explained SAE's."""
        ks = sorted(self.cfg.ks)
        return ks[len(ks) // 2]

    @property
    def explained_sae(self) -> str:
        return self.cfg.explain_sae or f"topk-{self.cfg.d_sae}-k{self.circuit_k}"

    def circuit_sae(self, hook: str) -> Path:
        """The folder of the circuit SAE at `hook`, named like the sweep's with its layer:
        `topk-2304-k32-L4` (the name the app and the results file show)."""
        layer = hook_layer(hook)
        suffix = f"-L{layer}" if layer is not None else "-" + hook.replace(".", "_")
        return self.circuit_saes / f"topk-{self.cfg.d_sae}-k{self.circuit_k}{suffix}"


def hook_layer(hook: str) -> int | None:
    """The block index of a `blocks.N....` hook name (None for other hooks)."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else None


@dataclass
class Step:
    name: str
    describe: Callable[[Demo], str]
    run: Callable[[Demo], None]
    enabled: Callable[[Demo], bool] = lambda demo: True


def _cli(argv: list[str]) -> None:
    from saelab.cli import main

    code = main(argv)
    if code:
        raise SystemExit(code)


def _train(demo: Demo, saes: list, out: Path, hook: str | None = None, sweep: str | None = None):
    """One training run through the one entry point (`saelab.sae.run.run_training`); a rerun
    continues (here: reuses) a finished one."""
    from saelab.commands.train import report
    from saelab.sae.checkpoint import STATE_FILE
    from saelab.sae.config import TrainConfig
    from saelab.sae.run import TrainRunConfig, run_training

    report(run_training(TrainRunConfig(
        acts=demo.store, saes=saes, sweep=sweep, hook=hook, out=str(out), batch_size=1024,
        resume=(out / STATE_FILE).exists(), train=TrainConfig(tokens=1, progress=demo.cfg.progress),
    )))  # fmt: skip


def harvest_step(demo: Demo) -> None:
    from saelab.activations.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        out=demo.store,
        hooks=[demo.cfg.hook, *demo.cfg.circuit_hooks],
        tokens=demo.cfg.tokens,
        seq_len=demo.cfg.seq_len,
        chunk_seqs=demo.cfg.chunk_seqs,
        batch_size=min(16, demo.cfg.chunk_seqs),
        resume=True,
        progress=demo.cfg.progress,
    )
    if demo.model is None:  # loaded once, shared by the eval and circuit steps
        from saelab.activations.models import load_model

        demo.model = load_model(cfg.model, device=cfg.device)
    result = harvest(cfg, model=demo.model)
    demo.notes["harvest"] = f"{result.tokens} new tokens"


def sweep_toml(demo: Demo) -> str:
    ks = ", ".join(str(k) for k in demo.cfg.ks)
    return (
        "# The demo's sweep: TopK SAEs at several k, trained together in one pass.\n"
        f'[train]\nhook = "{demo.cfg.hook}"\n\n[defaults]\nd_sae = {demo.cfg.d_sae}\n\n'
        f'[[sae]]\narchitecture = "topk"\ngrid = {{ k = [{ks}] }}\n'
    )


def train_step(demo: Demo) -> None:
    from saelab.sae.registry import make_config

    sweep = demo.folder / "sweep.toml"
    sweep.write_text(sweep_toml(demo))
    _train(demo, [], demo.saes, sweep=str(sweep))
    for hook in demo.cfg.circuit_hooks:
        folder = demo.circuit_sae(hook)
        if not (folder / "sae_weights.safetensors").is_file():
            cfg = make_config("topk", d_sae=demo.cfg.d_sae, k=demo.circuit_k)
            _train(demo, [cfg], folder, hook=hook)


def eval_step(demo: Demo) -> None:
    """Every SAE the demo trained, the circuit's too (the app's pickers list them all), with
    the demo's one loaded model."""
    from saelab.evaluation.runner import EvalConfig, evaluate

    folders = [demo.saes, *(demo.circuit_sae(h) for h in demo.cfg.circuit_hooks)]
    for folder in folders:
        cfg = EvalConfig(
            str(folder), demo.store, demo.db,
            settings={"loss": {"sequences": demo.cfg.loss_sequences}},
        )  # fmt: skip
        out = evaluate(cfg, model=demo.model)
        print(f"saelab eval: {len(out)} SAE(s) evaluated into {demo.db}")


def compare_step(demo: Demo) -> None:
    _cli(["compare", "--db", demo.db, "--html", str(demo.compare_html)])


SCORED_LATENTS = 3
"""Explained latents also scored by the embedded model, the `examples` explanation beside the
`baseline` one (about 12 s a latent on 2 cores). The embedded model's own explanations are
left out: they score at chance (docs/architecture.md, "Explanations"); `saelab explain
--explainers llm` asks for them."""
DEMO_WINDOWS = dict(explain_top=6, score_activating=4, score_nonactivating=4, simulation_windows=1)


def explain_latents(demo: Demo, sae: str, features: list[int] | None = None, store=None):
    """Explain `features` of `sae` (None: a seeded sample of `demo.cfg.explain` live latents)
    with the offline default explainer: no LLM, no scoring, a fraction of a second a latent.
    The hook for any SAE the demo wants named, the circuit's nodes included; `store`: the
    results file, when open already."""
    from saelab.autointerp.config import ExplainConfig, WindowConfig
    from saelab.autointerp.pipeline import explain_features
    from saelab.resultstore import ResultsStore

    chosen = {"sample": demo.cfg.explain} if features is None else {
        "features": ",".join(str(f) for f in sorted(set(features)))
    }  # fmt: skip
    cfg = ExplainConfig(
        db=demo.db, sae=sae, **chosen, explainers=["examples"], scorers=[],
        windows=WindowConfig(**DEMO_WINDOWS), progress=False,
    )  # fmt: skip
    return explain_features(cfg, store=store or ResultsStore(demo.db, mode="update"))


def explain_step(demo: Demo) -> None:
    from saelab import resultstore as results
    from saelab.autointerp.config import ExplainConfig, WindowConfig
    from saelab.autointerp.pipeline import explain_features
    from saelab.commands.explain import print_summary
    from saelab.resultstore import ResultsStore

    store = ResultsStore(demo.db, mode="update")
    evaluated = [
        s for s in results.list_saes(store) if results.feature_stats_exist(store, s.sae_id)
    ]
    main = None
    for sae in evaluated:
        summary = explain_latents(demo, sae.sae_id, store=store)
        print(f"explained {len(summary.features)} latents of {sae.name} from their examples")
        if sae.name == demo.explained_sae:
            main = summary
    if main is None:
        raise UserError(f"SAE {demo.explained_sae} has no feature examples in {demo.db}")
    cfg = ExplainConfig(
        db=demo.db,
        sae=demo.explained_sae,
        features=",".join(str(f) for f in main.features[:SCORED_LATENTS]),
        explainers=["examples", "baseline"],
        scorers=list(demo.cfg.scorers),
        windows=WindowConfig(**DEMO_WINDOWS),
        progress=demo.cfg.progress,
    )
    summary = explain_features(cfg, generator=demo.generator, store=store)
    print_summary(store, summary)


def circuit_step(demo: Demo) -> None:
    from saelab.circuits.run import CircuitConfig, run_circuit
    from saelab.commands.circuit import report

    folders = [str(demo.circuit_sae(hook)) for hook in demo.cfg.circuit_hooks]
    folders.append(str(demo.saes / demo.explained_sae))
    result = run_circuit(
        CircuitConfig(
            sae=folders,
            task="sva",
            n_prompts=demo.cfg.circuit_prompts,
            acts=demo.store,
            db=demo.db,
            html=str(demo.circuit_html),
            node_threshold=demo.cfg.circuit_node_threshold,
            edge_threshold=demo.cfg.circuit_edge_threshold,
            steps=demo.cfg.circuit_steps,
            progress=demo.cfg.progress,
        ),
        model=demo.model,
    )
    demo.circuit = result
    print(report(result))
    _explain_circuit_nodes(demo, result.circuit_id)


def _explain_circuit_nodes(demo: Demo, circuit_id: str | None) -> None:
    """Name every latent node the circuit stored (the Circuits page labels its nodes with their
    explanations), with the offline explainer; SAEs without feature examples are skipped."""
    from saelab import resultstore as results

    if circuit_id is None:
        return
    store = results.ResultsStore(demo.db, mode="update")
    by_sae: dict[str, set[int]] = {}
    for node in results.circuit_nodes(store, circuit_id):
        if not node.is_error:
            by_sae.setdefault(node.sae_id, set()).add(node.feature)
    for sae_id, features in by_sae.items():
        if results.feature_stats_exist(store, sae_id):
            explain_latents(demo, sae_id, sorted(features), store=store)
    named = sum(len(f) for f in by_sae.values())
    print(f"saelab demo: named the circuit's {named} latent nodes from their examples")


STEPS: list[Step] = [
    Step(
        "harvest",
        lambda d: f"harvest {d.cfg.tokens} tokens of smollm2-135m at {d.cfg.hook} -> {d.store}",
        harvest_step,
    ),
    Step(
        "train",
        lambda d: (
            f"train TopK SAEs (d_sae {d.cfg.d_sae}, k {', '.join(map(str, d.cfg.ks))}) "
            f"in one pass -> {d.saes}"
            + (
                f"; one at each of {', '.join(d.cfg.circuit_hooks)} -> {d.circuit_saes}"
                if d.cfg.circuit_hooks
                else ""
            )
        ),
        train_step,
    ),
    Step("eval", lambda d: f"evaluate them into {d.db}", eval_step),
    Step("compare", lambda d: f"compare them -> {d.compare_html}", compare_step),
    Step(
        "explain",
        lambda d: (
            f"explain {d.cfg.explain} latents of each evaluated SAE from their examples; score "
            f"{SCORED_LATENTS} of {d.explained_sae}'s with the embedded model, served locally"
        ),
        explain_step,
        enabled=lambda d: d.cfg.explain > 0,
    ),
    Step(
        "circuit",
        lambda d: (
            f"find and evaluate a subject-verb agreement circuit across the SAEs at "
            f"{', '.join(d.cfg.circuit_hooks)} and {d.explained_sae} -> {d.circuit_html}"
        ),
        circuit_step,
        enabled=lambda d: bool(d.cfg.circuit_hooks),
    ),
]


def run_demo(cfg: DemoConfig, model=None, generator=None) -> Demo:
    """Run every enabled step in order, printing each one's time; returns the demo's state."""
    import torch

    from saelab.autointerp.server import free_cores

    cfg.validate()
    demo = Demo(cfg, model=model, generator=generator)
    created = not demo.folder.exists()
    fresh = created or not any(demo.folder.iterdir())
    try:
        demo.folder.mkdir(parents=True, exist_ok=True)
        (demo.folder / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    except OSError as err:
        raise disk_error(err, str(demo.folder / CONFIG_FILE)) from None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(free_cores())  # on a busy machine, more threads than cores crawl
    try:
        steps = [s for s in STEPS if s.enabled(demo)]
        for i, step in enumerate(steps, start=1):
            print(
                f"\nsaelab demo: step {i}/{len(steps)} ({step.name}): {step.describe(demo)}",
                flush=True,
            )
            started = time.monotonic()
            step.run(demo)
            demo.times[step.name] = time.monotonic() - started
            note = f" ({demo.notes[step.name]})" if step.name in demo.notes else ""
            print(f"saelab demo: {step.name} took {demo.times[step.name]:.1f} s{note}", flush=True)
    except BaseException:
        if fresh:  # a demo that failed before writing anything leaves no folder behind
            _remove_if_only_config(demo.folder, remove_folder=created)
        raise
    finally:  # the calling process (a notebook, a test run) keeps its own setting
        torch.set_num_threads(threads_before)
    total = sum(demo.times.values())
    print(
        "\nsaelab demo: step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in demo.times.items())
    )
    print(
        f"saelab demo: done in {total:.0f} s. Store {demo.store}, SAEs {demo.saes}, "
        f"results {demo.db}, comparison {demo.compare_html}"
    )
    print(f"saelab demo: browse the results with: saelab app --db {demo.db}")
    return demo


def _remove_if_only_config(folder: Path, remove_folder: bool) -> None:
    if [p.name for p in folder.iterdir()] != [CONFIG_FILE]:
        return
    (folder / CONFIG_FILE).unlink()
    if remove_folder:
        folder.rmdir()


HELP = "run the pipeline end to end on the embedded defaults"


def ON_INTERRUPT(args: argparse.Namespace) -> str:
    return (
        f"the steps finished so far are kept in {args.out or DemoConfig().out}; rerun "
        "`saelab demo` with the same --out to continue (finished steps are reused)"
    )


def configure(p: argparse.ArgumentParser) -> None:
    flags = add_fields(
        p, DemoConfig, only=("out", "tokens", "seq_len", "hook", "d_sae", "ks", "explain", "progress"),
        names={"ks": "--k"},
        helps={"ks": "k of each TopK SAE", "explain": "latents to explain (0 skips)"},
    )  # fmt: skip
    p.set_defaults(flags=flags)


def run(args: argparse.Namespace) -> int:
    run_demo(DemoConfig(**given(args, args.flags)))
    return 0
