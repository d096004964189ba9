"""Training throughput of saelab's SAEs, against the encoder-matmul limit and peers.

    python benchmarks/train.py                      # all measurements, ~10 min on 2 cores
    python benchmarks/train.py --quick              # d_sae 4608 only, fewer steps
    python benchmarks/train.py --peers-python /tmp/peers-venv/bin/python   # + SAELens, sparsify
    python benchmarks/train.py --skip arches,dense,sweep --peers-python ...  # TopK 18432 only

Every measurement runs in its own subprocess (clean peak memory, no cross-talk) on the same
activations: synthetic sparse combinations of a random dictionary at d_in = 576, saved once
to a temporary file that the peers load too. Throughput is reported as tokens/s and as a
fraction of the encoder-matmul limit: the sgemm rate for [batch, d_in] x [d_in, d_sae]
(into a preallocated output) divided by 2 * d_in * d_sae FLOP per token. Each child times
that sgemm itself, before and after its steps, so the fraction (= sgemm time / step time)
does not drift with the load of a shared machine; the separate sgemm child gives the
headline rate. The `fused` section runs TopK at the large size with the fused CPU matmul +
top-k (kernels/fused.py) off and on, alternately, for a before/after ratio in one run; the
`native` section does the same for the native C kernels (kernels/native.py). The `auxk`
section times AuxK: with the dead set held at 2000 and 3000 random latents (alive ones, so
every one of the k_aux slots is positive: the worst case), and over the latents that died
while a TopK SAE trained 150 steps (their pre-activations are mostly negative, and AuxK runs
over the positive ones only).
ReLU, JumpReLU and Gated are measured from their reference start (about half
the latents active: dense steps) and from a sparse start (`init_l0 = k`, the L0 they train
towards), the latter being the step time of most of a run. FVU is measured on a held-out
batch after the same number of training tokens, in raw units, with each tool's defaults.
Results are printed and saved as JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

from benchmarks.children import (  # noqa: E402
    ensure_kernels,
    fvu,
    peak_rss_mb,
    peer_sys_path,
    run_child,
)

D_IN = 576
ARCHES = ["topk", "batchtopk", "matryoshka", "jumprelu", "relu", "gated"]
THRESHOLD_ARCHES = ["jumprelu", "relu", "gated"]
"""Measured twice: from the reference (dense) start, and with `init_l0 = k` (sparse start)."""
DEAD_WINDOW = 10_000_000
"""Tokens without firing before a latent counts as dead in saelab's measured runs: sparsify's
`dead_feature_threshold` (and SAELens's comparable window), so that in a few timed steps no
tool has dead latents and none runs AuxK. saelab's own default scales the window down to a
tenth of a short run, which would have it run AuxK over thousands of latents that merely
missed one batch while the peers run none; that cost is measured on its own
(`saelab_topk_auxk_many_dead` in the peers section)."""


# -- children: one measurement each ------------------------------------------------------


def sgemm_seconds(batch: int, d_sae: int, reps: int = 5) -> float:
    """Fastest of `reps` timings of the encoder's product `[batch, d_in] x [d_in, d_sae]` into
    a preallocated output: the machine's sgemm rate, without allocation costs. No bias: an
    `addmm` broadcasts it into the output first (a whole extra pass, ~6% of the product on a
    2-core EPYC), which the native selection spares, so the limit is the bare product (before
    2026-12-07 it included that pass)."""
    import torch

    x = torch.randn(batch, D_IN)
    w = torch.randn(d_sae, D_IN)
    out = torch.empty(batch, d_sae)
    torch.mm(x, w.t(), out=out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(x, w.t(), out=out)
        times.append(time.perf_counter() - t0)
    return min(times)


def _with_sgemm(spec: dict, measure) -> dict:
    """Run `measure()` between two sgemm timings of the same shape, in the same process, so
    its fraction of the matmul limit is immune to the machine's drift between children."""
    before = sgemm_seconds(spec["batch"], spec["d_sae"])
    result = measure()
    after = sgemm_seconds(spec["batch"], spec["d_sae"])
    gemm = (before + after) / 2
    result["sgemm_seconds"] = gemm
    result["sgemm_gflops"] = 2 * spec["batch"] * D_IN * spec["d_sae"] / gemm / 1e9
    result["fraction_of_matmul_limit"] = gemm / result["step_seconds"]
    return result


def _timed_steps(spec: dict, batches: list, step) -> dict:
    """Run `step(i, batch)` over the batches; the mean time of those after the warm-up,
    between two sgemm timings (`_with_sgemm`)."""

    def measure() -> dict:
        times = []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            step(i, batch)
            times.append(time.perf_counter() - t0)
        timed = times[spec["warmup"] :]
        return {"step_seconds": sum(timed) / len(timed)}

    return _with_sgemm(spec, measure)


def child_sgemm(spec: dict) -> dict:
    dt = sgemm_seconds(spec["batch"], spec["d_sae"], spec.get("reps", 5))
    return {"seconds": dt, "gflops": 2 * spec["batch"] * D_IN * spec["d_sae"] / dt / 1e9}


def child_saelab(spec: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    kernels_impl = ensure_kernels()
    from saelab.sae import TrainConfig, Trainer, make_config, ops
    from saelab.sae.trainer import folded_copy

    if spec.get("unfused"):
        os.environ["SAELAB_DISABLE_FUSED"] = "1"  # the dense product + a separate top-k
    if spec.get("no_native"):
        os.environ["SAELAB_DISABLE_NATIVE"] = "1"  # torch's selection and row updates
    if spec.get("no_screen"):
        os.environ["SAELAB_DISABLE_SCREEN"] = "1"  # the fp32 product, no bf16 screening
    if spec.get("dense"):
        ops.DENSE_FRACTION = 0.0  # every gather/decode through dense matmuls
    batches, held_out = _load_acts(spec["acts"])
    configs = []
    for arch in spec["arches"]:
        if arch in ("topk", "batchtopk", "matryoshka"):
            kw = {"k": spec["k"]}
        else:
            kw = {"init_l0": float(spec["k"])} if spec.get("sparse_start") else {}
        configs.append(make_config(arch, d_sae=spec["d_sae"], **kw))
    cfg = TrainConfig(
        tokens=sum(b.shape[0] for b in batches),
        progress=False,
        init_tokens=4096,
        dead_window_tokens=spec.get("dead_window_tokens", DEAD_WINDOW),
    )
    trainer = Trainer(configs, iter(batches), cfg)
    trainer.setup()
    if spec.get("forced_dead"):
        _force_dead(trainer, spec["forced_dead"])
    step = _timed_steps(spec, batches, lambda i, batch: trainer.train_step(batch))
    with torch.no_grad():
        fvus = {
            m.name: fvu(held_out, folded_copy(m.sae, trainer.scale)(held_out))
            for m in trainer.members
        }
    from saelab.kernels import native, screen

    return {
        **step,
        "kernels": kernels_impl,
        "fused_topk": not spec.get("unfused", False),
        "native_kernels": native.library() is not None,
        "screened": screen.available() and screen.pays(spec["d_sae"], spec["k"]),
        "forced_dead": spec.get("forced_dead", 0),
        "tokens_per_s": batches[0].shape[0] / step["step_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "fvu": fvus,
        "l0": {
            m.name: float(m.sae.encode_sparse(held_out * trainer.scale).l0().mean())
            for m in trainer.members
        },
        "dead_latents_at_end": {m.name: int(m.dead.dead_mask().sum()) for m in trainer.members},
    }


def _force_dead(trainer, n_dead: int) -> None:
    """Hold every member's dead set at `n_dead` latents (fixed, random, seed 0), so that each
    step runs AuxK over exactly that many: the cost of AuxK, measured apart from how many
    latents a short run happens to leave idle."""
    import torch

    for m in trainer.members:
        g = torch.Generator().manual_seed(0)
        mask = torch.zeros(m.sae.d_sae, dtype=torch.bool)
        mask[torch.randperm(m.sae.d_sae, generator=g)[:n_dead]] = True
        m.dead.dead_mask = lambda mask=mask: mask


def child_native_interleaved(spec: dict) -> dict:
    """The native kernels off and on, step by step in one process on one trainer (the
    kernels read `SAELAB_DISABLE_NATIVE` at each call), so the machine's drift falls on both
    alike: the median of the per-pair step-time ratios."""
    sys.path.insert(0, str(ROOT))
    from saelab.sae import TrainConfig, Trainer, make_config

    batches, _ = _load_acts(spec["acts"])
    cfg = TrainConfig(
        tokens=spec["batch"] * 1000,
        progress=False,
        init_tokens=spec["batch"],
        dead_window_tokens=DEAD_WINDOW,
    )
    trainer = Trainer([make_config("topk", d_sae=spec["d_sae"], k=spec["k"])], iter(batches), cfg)
    trainer.setup()
    trainer.train_step(batches[0])
    times: dict[str, list] = {"torch": [], "native": []}
    for i in range(spec["pairs"]):
        for name in ("torch", "native"):
            if name == "torch":
                os.environ["SAELAB_DISABLE_NATIVE"] = "1"
            else:
                os.environ.pop("SAELAB_DISABLE_NATIVE", None)
            t = time.perf_counter()
            trainer.train_step(batches[i % len(batches)])
            times[name].append(time.perf_counter() - t)
    ratios = sorted(a / b for a, b in zip(times["torch"], times["native"]))
    median = {n: sorted(ts)[len(ts) // 2] for n, ts in times.items()}
    return {
        "pairs": spec["pairs"],
        "times": times,
        "median_step_seconds": median,
        "median_speedup": ratios[len(ratios) // 2],
        "sgemm_seconds": sgemm_seconds(spec["batch"], spec["d_sae"]),
    }


def child_auxk_trained(spec: dict) -> dict:
    """AuxK's cost over latents that died in training: a TopK SAE trained `train_steps` steps
    on fresh synthetic batches (a dead window of `dead_window_tokens`), then timed steps
    alternate between its own dead set (AuxK on) and an empty one (AuxK off), same batches."""
    import torch

    sys.path.insert(0, str(ROOT))
    from saelab.sae import TrainConfig, Trainer, make_config, ops
    from saelab.sae.synthetic import SyntheticActivations

    data = SyntheticActivations(
        d_in=D_IN,
        n_features=spec.get("n_features", 8 * D_IN),
        batch_size=spec["batch"],
        active=32,
        noise=0.05,
        seed=0,
        offset=1.0,
    )
    cfg = TrainConfig(
        tokens=spec["batch"] * spec["schedule_steps"],
        progress=False,
        init_tokens=spec["batch"],
        dead_window_tokens=spec["dead_window_tokens"],
    )
    configs = [make_config("topk", d_sae=spec["d_sae"], k=spec["k"])]
    trainer = Trainer(configs, iter([data.batch(0)]), cfg)
    trainer.setup()
    t0 = time.perf_counter()
    for i in range(spec["train_steps"]):
        trainer.train_step(data.batch(i))
    train_seconds = time.perf_counter() - t0
    m = trainer.members[0]
    dead_mask = m.dead.dead_mask().clone()
    dead = dead_mask.nonzero().squeeze(1)
    none = torch.zeros_like(dead_mask)
    timed = [data.batch(spec["train_steps"] + i) for i in range(spec["steps"])]
    # what AuxK runs over: the positive part of each row's top-k_aux dead pre-activations
    x = timed[0] * trainer.scale
    pre_dead = ops.preacts(m.sae.center(x), m.sae.W_enc, m.sae.b_enc)[:, dead]
    positives = (pre_dead > 0).sum(1).float()
    times: dict[str, list] = {"auxk": [], "none": []}
    for batch in timed:
        for name, mask in (("auxk", dead_mask), ("none", none)):
            m.dead.dead_mask = lambda mask=mask: mask
            t = time.perf_counter()
            trainer.train_step(batch)
            times[name].append(time.perf_counter() - t)
    out = {
        name: sorted(ts[spec["warmup"] :])[len(ts[spec["warmup"] :]) // 2]
        for name, ts in times.items()
    }
    # each AuxK step against the step without it right after it (the machine drifts)
    paired = sorted(
        a / b for a, b in zip(times["auxk"][spec["warmup"] :], times["none"][spec["warmup"] :])
    )
    return {
        "n_features": spec.get("n_features", 8 * D_IN),
        "paired_median_overhead": paired[len(paired) // 2] - 1,
        "trained_tokens": spec["batch"] * spec["train_steps"],
        "train_seconds": train_seconds,
        "dead_latents": int(dead.numel()),
        "k_aux": m.sae.cfg.resolved_aux_k(),
        "positive_dead_preacts_per_row_mean": float(positives.mean()),
        "positive_dead_preacts_per_row_max": float(positives.max()),
        "step_seconds_auxk": out["auxk"],
        "step_seconds_none": out["none"],
        "auxk_overhead": out["auxk"] / out["none"] - 1,
        "times": times,
    }


def child_saelens(spec: dict) -> dict:
    peer_sys_path()
    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    batches, held_out = _load_acts(spec["acts"])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=spec["d_sae"], k=spec["k"]))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))  # SAELens defaults
    fired_steps = torch.zeros(spec["d_sae"])

    def step(i, x):
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=sae.get_coefficients() if hasattr(sae, "get_coefficients") else {},
                dead_neuron_mask=fired_steps > 1000,
                n_training_steps=i,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            fired_steps.add_(1)
            fired_steps[(out.feature_acts > 0).any(0)] = 0

    result = _timed_steps(spec, batches, step)
    with torch.no_grad():
        sae.eval()
        x_hat = sae.decode(sae.encode(held_out))
    import sae_lens

    return {
        **result,
        "version": sae_lens.__version__,
        "tokens_per_s": batches[0].shape[0] / result["step_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "fvu": fvu(held_out, x_hat),
    }


def child_sparsify(spec: dict) -> dict:
    peer_sys_path()
    from importlib.metadata import version

    import torch
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    batches, held_out = _load_acts(spec["acts"])
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=spec["d_sae"], k=spec["k"]))
    # sparsify's default optimiser ("signum"): schedule-free SignSGD, lr 5e-3/sqrt(m/2^14)
    opt = ScheduleFreeWrapper(
        SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (spec["d_sae"] / 2**14) ** 0.5}]),
        momentum=0.95,
    )
    opt.train()
    sae.b_dec.data = batches[0].mean(0)  # sparsify initialises b_dec from the first batch
    steps_since = torch.zeros(spec["d_sae"], dtype=torch.long)

    def step(i, x):
        out = sae(x, dead_mask=steps_since > 10_000_000)
        out.fvu.backward()  # auxk_alpha defaults to 0
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            steps_since.add_(x.shape[0])
            steps_since[out.latent_indices.flatten()] = 0

    result = _timed_steps(spec, batches, step)
    opt.eval()
    with torch.no_grad():
        x_hat = sae(held_out).sae_out
    return {
        **result,
        "version": version("eai-sparsify"),
        "tokens_per_s": batches[0].shape[0] / result["step_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "fvu": fvu(held_out, x_hat),
    }


def _load_acts(path: str):
    import torch

    data = torch.load(path)
    return data["train"], data["held_out"]


CHILDREN = {
    "sgemm": child_sgemm,
    "saelab": child_saelab,
    "auxk_trained": child_auxk_trained,
    "native_interleaved": child_native_interleaved,
    "saelens": child_saelens,
    "sparsify": child_sparsify,
}


# -- parent ---------------------------------------------------------------------------------


def make_acts(path: Path, batches: int, batch: int) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from saelab.sae.synthetic import SyntheticActivations

    data = SyntheticActivations(
        d_in=D_IN, n_features=8 * D_IN, batch_size=batch, active=32, noise=0.05, seed=0, offset=1.0
    )
    torch.save(
        {"train": [data.batch(i) for i in range(batches)], "held_out": data.batch(10_000)}, path
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    p.add_argument("--quick", action="store_true", help="d_sae 4608 only")
    p.add_argument("--peers-python", help="python of a scratch venv with sae-lens and eai-sparsify")
    p.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: arches,fused,screen,native,auxk,dense,sweep,peers",
    )
    p.add_argument("--out", help="result JSON (default benchmarks/results/train-<date>.json)")
    args = p.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return

    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import machine_info

    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="saelab-bench-"))
    acts = tmp / "acts.pt"
    make_acts(acts, args.steps, args.batch)
    sizes = [(4608, 32)] if args.quick else [(4608, 32), (18432, 64)]
    base = {"acts": str(acts), "warmup": args.warmup, "batch": args.batch}
    py = sys.executable
    results: dict = {
        "sgemm": {},
        "arches": {},
        "fused_vs_unfused": {},
        "screen_vs_fp32": {},
        "native_vs_torch": {},
        "auxk": {},
        "dense_vs_sparse": {},
        "sweep": {},
        "peers": {},
    }

    def limit(d_sae: int) -> float:
        return results["sgemm"][str(d_sae)]["gflops"] * 1e9 / (2 * D_IN * d_sae)

    for d_sae, _ in sizes:
        results["sgemm"][str(d_sae)] = run_child(__file__, py, "sgemm", {**base, "d_sae": d_sae})
        print(
            f"sgemm d_sae={d_sae}: {results['sgemm'][str(d_sae)]['gflops']:.1f} GFLOP/s "
            f"-> encoder-matmul limit {limit(d_sae):,.0f} tok/s"
        )

    if "arches" not in skip:
        for d_sae, k in sizes:
            runs = [(arch, False) for arch in ARCHES] + [(a, True) for a in THRESHOLD_ARCHES]
            for arch, sparse_start in runs:
                spec = {**base, "arches": [arch], "d_sae": d_sae, "k": k}
                key = f"{arch}-{d_sae}-k{k}" + ("-sparse-start" if sparse_start else "")
                results["arches"][key] = run_child(
                    __file__, py, "saelab", {**spec, "sparse_start": sparse_start}
                )
                _show(key, results["arches"][key])
            topk = results["arches"].get(f"topk-{d_sae}-k{k}", {})
            for key, r in results["arches"].items():
                if (
                    key.split("-")[1] == str(d_sae)
                    and "step_seconds" in r
                    and "step_seconds" in topk
                ):
                    r["step_time_vs_topk"] = r["step_seconds"] / topk["step_seconds"]
                    # the same ratio with each step in units of its own process's sgemm time
                    r["step_time_vs_topk_sgemm_units"] = (
                        topk["fraction_of_matmul_limit"] / r["fraction_of_matmul_limit"]
                    )

    d_big, k_big = sizes[-1]
    if "fused" not in skip:
        _fused_section(py, {**base, "arches": ["topk"], "d_sae": d_big, "k": k_big}, results)

    if "screen" not in skip:
        _ab_section(
            py,
            {**base, "arches": ["topk"], "d_sae": d_big, "k": k_big},
            results,
            "screen_vs_fp32",
            ("fp32_product", {"no_screen": True}),
            ("screened", {}),
        )

    if "native" not in skip:
        _ab_section(
            py,
            {**base, "arches": ["topk"], "d_sae": d_big, "k": k_big},
            results,
            "native_vs_torch",
            ("torch", {"no_native": True}),
            ("native", {}),
        )

    if "native" not in skip:
        r = run_child(
            __file__,
            py,
            "native_interleaved",
            {**base, "d_sae": d_big, "k": k_big, "pairs": 12},
        )
        results["native_vs_torch"]["interleaved"] = r
        if "median_speedup" in r:
            print(
                f"native vs torch, interleaved step by step ({r['pairs']} pairs): "
                f"{r['median_speedup']:.3f}x median step-time ratio "
                f"(torch {r['median_step_seconds']['torch']:.3f} s, "
                f"native {r['median_step_seconds']['native']:.3f} s)"
            )

    if "auxk" not in skip:
        _auxk_section(py, {**base, "arches": ["topk"], "d_sae": d_big, "k": k_big}, results)

    if "dense" not in skip:
        for dense in (False, True):
            r = run_child(
                __file__,
                py,
                "saelab",
                {**base, "arches": ["topk"], "d_sae": d_big, "k": k_big, "dense": dense},
            )
            results["dense_vs_sparse"]["dense" if dense else "sparse"] = r
            _show(f"topk-{d_big} {'dense' if dense else 'sparse'} decode", r)

    if "sweep" not in skip:
        four = ["topk", "batchtopk", "jumprelu", "matryoshka"]
        sweep = run_child(__file__, py, "saelab", {**base, "arches": four, "d_sae": 4608, "k": 32})
        separate = [
            run_child(__file__, py, "saelab", {**base, "arches": [a], "d_sae": 4608, "k": 32})
            for a in four
        ]
        ok = "error" not in sweep and all("error" not in s for s in separate)
        results["sweep"] = {
            "arches": four,
            "d_sae": 4608,
            "sweep": sweep,
            "separate": separate,
            "sweep_step_seconds": sweep.get("step_seconds"),
            "separate_step_seconds_total": sum(s.get("step_seconds", 0) for s in separate)
            if ok
            else None,
        }
        if ok:
            results["sweep"]["speedup"] = (
                results["sweep"]["separate_step_seconds_total"] / sweep["step_seconds"]
            )
            print(
                f"sweep of 4 (d_sae 4608): {sweep['step_seconds']:.3f} s/step vs 4 separate runs "
                f"{results['sweep']['separate_step_seconds_total']:.3f} s/step "
                f"({results['sweep']['speedup']:.2f}x)"
            )

    if args.peers_python and "peers" not in skip:
        # saelab's TopK runs again right before and after the peers, so that the speed-ups
        # compare measurements minutes apart, not a quarter of an hour
        spec = {**base, "d_sae": d_big, "k": k_big}
        topk = {**spec, "arches": ["topk"]}
        ours_runs = [run_child(__file__, py, "saelab", topk)]
        fp32_runs = [run_child(__file__, py, "saelab", {**topk, "no_screen": True})]
        for name in ("sparsify", "saelens"):
            r = run_child(__file__, args.peers_python, name, spec)
            results["peers"][name] = r
            _show(f"{name} topk-{d_big}-k{k_big}", r)
        fp32_runs.append(run_child(__file__, py, "saelab", {**topk, "no_screen": True}))
        ours_runs.append(run_child(__file__, py, "saelab", topk))
        results["peers"]["saelab_topk_fp32_product_runs"] = fp32_runs
        # What AuxK adds when many latents are dead: a window of one batch marks every latent
        # idle in the last batch as dead (thousands here; about 13% of the latents are dead at
        # the end of a 1M-token learning run)
        auxk = run_child(
            __file__,
            py,
            "saelab",
            {**spec, "arches": ["topk"], "dead_window_tokens": args.batch},
        )
        results["peers"]["saelab_topk_auxk_many_dead"] = auxk
        _show(f"saelab topk-{d_big}-k{k_big} with AuxK over the idle latents", auxk)
        results["peers"]["saelab_topk_runs"] = ours_runs
        fp32_ok = [r for r in fp32_runs if "tokens_per_s" in r]
        sparsify = results["peers"]["sparsify"]
        if fp32_ok and "tokens_per_s" in sparsify:
            fp32_tps = sum(r["tokens_per_s"] for r in fp32_ok) / len(fp32_ok)
            sparsify["saelab_fp32_product_speedup"] = fp32_tps / sparsify["tokens_per_s"]
            print(
                f"saelab topk with the fp32 product (no screening) vs sparsify: "
                f"{sparsify['saelab_fp32_product_speedup']:.2f}x tokens/s"
            )
        ok = [r for r in ours_runs if "tokens_per_s" in r]
        if ok:
            ours_tps = sum(r["tokens_per_s"] for r in ok) / len(ok)
            ours_frac = sum(r["fraction_of_matmul_limit"] for r in ok) / len(ok)
            print(f"saelab topk-{d_big}-k{k_big} beside the peers: {ours_tps:,.0f} tok/s")
            for name in ("sparsify", "saelens"):
                r = results["peers"][name]
                if "tokens_per_s" in r:
                    r["saelab_speedup"] = ours_tps / r["tokens_per_s"]
                    # the same, each run in units of its own process's sgemm time
                    r["saelab_speedup_sgemm_units"] = ours_frac / r["fraction_of_matmul_limit"]
                    print(
                        f"saelab topk vs {name}: {r['saelab_speedup']:.2f}x tokens/s "
                        f"({r['saelab_speedup_sgemm_units']:.2f}x in sgemm units)"
                    )

    record = {
        "benchmark": "train",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "config": {
            "d_in": D_IN,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "sizes": sizes,
            "dtype": "float32",
            "data": "synthetic: 4608 unit directions, "
            "~32 active per token, noise 0.05, offset mean",
        },
        "results": results,
    }
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / "benchmarks"
        / "results"
        / (f"train-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out}")


def _fused_section(py: str, spec: dict, results: dict) -> None:
    """TopK with the fused matmul + top-k off, on, off, on."""
    _ab_section(
        py, spec, results, "fused_vs_unfused", ("unfused", {"unfused": True}), ("fused", {})
    )


def _ab_section(py: str, spec: dict, results: dict, key: str, before: tuple, after: tuple) -> None:
    """The same TopK run with a feature off (`before`: name, spec changes) and on (`after`),
    alternately, twice: the before/after ratio of the step time, and of the fraction of the
    matmul limit (each run's own sgemm time)."""
    runs: dict[str, list] = {before[0]: [], after[0]: []}
    for _ in range(2):
        for name, change in (before, after):
            r = run_child(__file__, py, "saelab", {**spec, **change})
            runs[name].append(r)
            _show(f"topk-{spec['d_sae']} {name}", r)
    out: dict = dict(runs)
    ok = {n: [r for r in rs if "step_seconds" in r] for n, rs in runs.items()}
    b, a = before[0], after[0]
    if ok[b] and ok[a]:
        for name, rs in ok.items():
            out[f"{name}_fraction_of_matmul_limit"] = sum(
                r["fraction_of_matmul_limit"] for r in rs
            ) / len(rs)
            out[f"{name}_step_seconds"] = sum(r["step_seconds"] for r in rs) / len(rs)
        out["speedup"] = out[f"{b}_step_seconds"] / out[f"{a}_step_seconds"]
        out["speedup_sgemm_units"] = (
            out[f"{a}_fraction_of_matmul_limit"] / out[f"{b}_fraction_of_matmul_limit"]
        )
        print(
            f"{key}: {100 * out[f'{b}_fraction_of_matmul_limit']:.0f}% -> "
            f"{100 * out[f'{a}_fraction_of_matmul_limit']:.0f}% of the matmul limit "
            f"({out['speedup']:.2f}x step time, {out['speedup_sgemm_units']:.2f}x in sgemm units)"
        )
    results[key] = out


AUXK_DEAD = (0, 2000, 3000)
"""Dead-set sizes of the AuxK section (0: no AuxK)."""
AUXK_TRAIN_STEPS = 150
"""Training steps before the AuxK section times its trained SAE's own dead latents."""
AUXK_TRAINED_STEPS = 24
"""Timed steps of each kind (AuxK on, off; alternating) over the trained SAE's dead latents:
the overhead is a few percent of a step, so a handful of pairs on a shared 2-core machine
cannot resolve it."""
AUXK_TRUE_FEATURES = 2 * D_IN
"""True directions of the synthetic data the `auxk_trained` SAE learns: with 18432 latents
for 1152 directions, 2000-3500 latents die within 150 steps (8x d_in left ~800 dead)."""


def _auxk_section(py: str, spec: dict, results: dict) -> None:
    """TopK with the dead set held at 0, 2000 and 3000 latents (`_force_dead`), alternately,
    twice: AuxK's share of the step, in seconds and in each run's sgemm units."""
    runs: dict[int, list] = {n: [] for n in AUXK_DEAD}
    for _ in range(2):
        for n in AUXK_DEAD:
            r = run_child(__file__, py, "saelab", {**spec, "forced_dead": n})
            runs[n].append(r)
            _show(f"topk-{spec['d_sae']} with {n} dead", r)
    out: dict = {"runs": {str(n): rs for n, rs in runs.items()}}
    ok = {n: [r for r in rs if "step_seconds" in r] for n, rs in runs.items()}
    if all(ok.values()):
        mean = {n: sum(r["step_seconds"] for r in rs) / len(rs) for n, rs in ok.items()}
        frac = {n: sum(r["fraction_of_matmul_limit"] for r in rs) / len(rs) for n, rs in ok.items()}
        for n in AUXK_DEAD[1:]:
            out[f"overhead_{n}_dead"] = mean[n] / mean[0] - 1
            out[f"overhead_{n}_dead_sgemm_units"] = frac[0] / frac[n] - 1
            print(
                f"AuxK over {n} dead latents: +{100 * out[f'overhead_{n}_dead']:.1f}% step time "
                f"(+{100 * out[f'overhead_{n}_dead_sgemm_units']:.1f}% in sgemm units)"
            )
    trained = run_child(
        __file__,
        py,
        "auxk_trained",
        {
            **spec,
            "steps": AUXK_TRAINED_STEPS,
            "train_steps": AUXK_TRAIN_STEPS,
            # the learning-rate schedule's length, fixed (it decides how many latents die);
            # the timed steps past its end run at learning rate 0, at the same cost
            "schedule_steps": AUXK_TRAIN_STEPS + 24,
            "dead_window_tokens": 15 * spec["batch"],
            # fewer true directions than 8x d_in: 2000-3000 of the 18432 latents die
            "n_features": AUXK_TRUE_FEATURES,
        },
    )
    out["trained"] = trained
    if "auxk_overhead" in trained:
        print(
            f"AuxK over the {trained['dead_latents']} latents dead after "
            f"{trained['trained_tokens']:,} training tokens: "
            f"+{100 * trained['auxk_overhead']:.1f}% step time, "
            f"{100 * trained['paired_median_overhead']:+.1f}% paired "
            f"({trained['positive_dead_preacts_per_row_mean']:.1f} positive dead "
            f"pre-activations per row, at most {trained['positive_dead_preacts_per_row_max']:.0f})"
        )
    results["auxk"] = out


def _show(label: str, r: dict) -> None:
    if "error" in r:
        print(f"{label}: ERROR {r['error']}")
        return
    fvu = r.get("fvu")
    fvu_s = f"{fvu:.3f}" if isinstance(fvu, float) else ", ".join(f"{v:.3f}" for v in fvu.values())
    extra = (
        f" {100 * r['fraction_of_matmul_limit']:.0f}% of limit"
        if "fraction_of_matmul_limit" in r
        else ""
    )
    dead = sum(r.get("dead_latents_at_end", {}).values())
    print(
        f"{label}: {r['tokens_per_s']:,.0f} tok/s ({r['step_seconds']:.3f} s/step){extra}, "
        f"peak RSS {r['peak_rss_mb']:,.0f} MB, FVU {fvu_s}" + (f", {dead} dead" if dead else "")
    )


if __name__ == "__main__":
    main()
