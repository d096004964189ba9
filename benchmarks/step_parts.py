"""Each part of a TopK training step against its own roofline (CPU).

    python benchmarks/step_parts.py                     # d_sae 18432, k 64, batch 4096
    python benchmarks/step_parts.py --d-sae 4608 --k 32

The step is cut into the parts it runs, each timed on its own (best of `--reps`, in one
process, same inputs) with the native kernels on and off where they apply:

- `encoder_gemm`: x @ W_enc into the reused workspace (no bias);
- `select`: the top-k of each row of the product, with the bias added (native: inside the
  selection; torch: the bias broadcast `addmm` writes before its GEMM, approximated by a
  broadcast copy and an add, plus the chunked top-k);
- `decode`: the sparse decode's forward (embedding_bag);
- `backward`: the decoder's and the encoder's weight gradients and the values' gradient
  (torch: a gather-dot and two segment sums over one shared sort; native: the decoder's two
  in one latent-major pass, `torch_ops.decode_grads`);
- `unit_norm`: removing the decoder gradient's radial part and renormalising the rows;
- `adam`: torch's fused Adam over both weight matrices and biases;
- `screened_encoder` (CPUs with bf16 instructions): the bf16-screened exact top-k
  (`kernels/screen.py`), which replaces `encoder_gemm` + `select`.

Each part's floor is what its bytes or FLOPs cost at the machine's own rates, measured here:
the sgemm rate (the encoder's shape) for FLOPs, and a streaming read rate (a sum over 1 GB)
for bytes. `fraction_of_roofline` = floor / measured (1.0 = at the limit). Writes
benchmarks/results/step-parts-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]


def best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stream_read_rate(reps: int) -> float:
    """Bytes per second of a sum over 1 GiB of float32 (the machine's streaming read rate)."""
    import torch

    data = torch.randn(1 << 28, generator=torch.Generator().manual_seed(1))
    return data.numel() * 4 / best(data.sum, reps)


AUXK_DEAD = (500, 1000, 2000, 3000, 5000)
"""Dead-set sizes at which AuxK's forward + backward is timed on each path."""


def auxk_costs(x, d_sae: int, d_in: int, k: int, reps: int) -> dict:
    """AuxK's forward and backward (k_aux = d_in / 2) over `AUXK_DEAD` dead latents of a
    random SAE (every k_aux slot of a row positive: the worst case), on each path, forced:
    the CPU's entry list (`entries`), and the padded selection through the sparse kernels
    (`padded_sparse`) or through products over the used dead latents' `[N, n_used]` block
    (`padded_dense`). `aux_k_dead` takes the entry list only where the positive entries fill
    less than half the padded slots (not here: there, the padded paths)."""
    import torch

    from saelab.sae import make_config, ops
    from saelab.sae.registry import build_sae

    sae = build_sae(make_config("topk", d_sae=d_sae, k=k), d_in=d_in)
    g = torch.Generator().manual_seed(2)
    residual = torch.randn(x.shape[0], d_in, generator=g)
    pre = ops.preacts(sae.center(x), sae.W_enc, sae.b_enc)
    out: dict = {"k_aux": sae.cfg.resolved_aux_k()}
    saved = ops.DENSE_FRACTION
    # ops takes its dense path when k > DENSE_FRACTION * n: 0 forces it, 1 never
    paths = (
        ("entries", sae._aux_k_entries, saved),
        ("padded_sparse", sae._aux_k_padded, 1.0),
        ("padded_dense", sae._aux_k_padded, 0.0),
    )
    for n_dead in AUXK_DEAD:
        dead = torch.randperm(d_sae, generator=g)[:n_dead].sort().values
        top = ops.positive_top(pre[:, dead].contiguous(), sae._k_aux(dead))
        row = {"positive_fraction": float((top.vals > 0).float().mean())}
        for path, method, fraction in paths:
            ops.DENSE_FRACTION = fraction

            def run(method=method, dead=dead, top=top):
                sae.zero_grad(set_to_none=True)
                method(x, dead, top, residual).backward()

            try:
                row[f"{path}_seconds"] = best(run, reps)
            finally:
                ops.DENSE_FRACTION = saved
        out[str(n_dead)] = row
        print(
            f"auxk {n_dead:5d} dead: "
            + ", ".join(f"{p} {1e3 * row[p + '_seconds']:.0f} ms" for p, _, _ in paths)
        )
    return out


def screened_costs(x, enc, b_enc, k: int, reps: int, parts: dict) -> dict:
    """The bf16-screened encoder (`kernels/screen.py`), which replaces `encoder_gemm` +
    `select`: its bf16 product alone and the whole call (conversions, product, bounds,
    candidates' fp32 dot products, selection)."""
    import torch

    from saelab.kernels import screen

    n, s = x.shape[0], enc.shape[0]
    product = torch.empty(n, s, dtype=torch.bfloat16)
    xb, wb = x.bfloat16(), enc.bfloat16()
    bf16_s = best(lambda: torch.mm(xb, wb.t(), out=product), reps)
    whole_s = best(lambda: screen.screened_topk(x, enc, b_enc, k, product), reps)
    fp32_s = parts["encoder_gemm"]["torch_seconds"] + parts["select"]["native_seconds"]
    out = {
        "bf16_product_seconds": bf16_s,
        "screened_seconds": whole_s,
        "candidates_per_row": screen.screened_topk.last_candidates / n,
        "fp32_product_and_native_select_seconds": fp32_s,
        "speedup": fp32_s / whole_s,
    }
    print(
        f"screened     bf16 product {1e3 * bf16_s:.1f} ms, whole {1e3 * whole_s:.1f} ms "
        f"({out['candidates_per_row']:.0f} candidates a row) vs fp32 product + select "
        f"{1e3 * fp32_s:.1f} ms: {out['speedup']:.2f}x"
    )
    return out


def with_native(on: bool) -> None:
    if on:
        os.environ.pop("SAELAB_DISABLE_NATIVE", None)
    else:
        os.environ["SAELAB_DISABLE_NATIVE"] = "1"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=18432)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step-parts-cpu.json"))
    args = p.parse_args()

    import torch

    from benchmarks.machine import machine_info
    from saelab.kernels import fused, native, screen, torch_ops
    from saelab.sae import ops

    n, d, s, k = args.batch, args.d_in, args.d_sae, args.k
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    enc = torch.randn(s, d, generator=g) / d**0.5
    b_enc = torch.randn(s, generator=g) * 0.1
    W_dec = torch.randn(s, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    grad_out = torch.randn(n, d, generator=g)
    work = torch.empty(n, s)

    # the machine's rates
    gemm_s = best(lambda: torch.mm(x, enc.t(), out=work), args.reps)
    gemm_flops = 2 * n * d * s
    sgemm_rate = gemm_flops / gemm_s
    read_rate = stream_read_rate(args.reps)

    parts: dict[str, dict] = {}

    def part(name: str, floor_s: float, **timings: float) -> None:
        parts[name] = {"floor_seconds": floor_s, **{f"{m}_seconds": t for m, t in timings.items()}}
        for m, t in timings.items():
            parts[name][f"{m}_fraction_of_roofline"] = floor_s / t
        shown = ", ".join(f"{m} {1e3 * t:.1f} ms ({floor_s / t:.0%})" for m, t in timings.items())
        print(f"{name:13s} floor {1e3 * floor_s:7.1f} ms | {shown}")

    part("encoder_gemm", gemm_s, torch=gemm_s)

    torch.mm(x, enc.t(), out=work)

    def select_native():
        found = native.topk_rows(work, k, b_enc)
        assert found is not None

    product = work.clone()

    def select_torch():
        with_native(False)
        try:
            work.copy_(b_enc.expand(n, s))  # addmm's bias broadcast, before its GEMM adds in
            work.add_(product)
            fused.topk_select(work, k)
        finally:
            with_native(True)

    timings = {"torch": best(select_torch, args.reps)}
    if native.library() is not None:
        timings["native"] = best(select_native, args.reps)
    part("select", n * s * 4 / read_rate, **timings)

    vals, idx = fused.topk_select(work, k)
    vals = vals.relu().contiguous()
    rows_bytes = n * k * d * 4
    part(
        "decode",
        rows_bytes / read_rate,
        torch=best(lambda: torch_ops.weighted_rows(idx, vals, W_dec), args.reps),
    )

    shared = torch_ops.SharedSegments(idx.contiguous(), s)

    def backward(on: bool):
        def run():
            with_native(on)
            try:
                plan = torch_ops.SharedSegments(idx.contiguous(), s)
                gv, _ = torch_ops.decode_grads(idx, vals, grad_out, W_dec, plan)
                torch_ops.scatter_rows(idx, gv, x, s, plan)
            finally:
                with_native(True)

        return run

    del shared
    timings = {"torch": best(backward(False), args.reps)}
    if native.library() is not None:
        timings["native"] = best(backward(True), args.reps)
    part("backward", 3 * rows_bytes / read_rate, **timings)

    grad = torch.randn(s, d, generator=g)
    weights = W_dec.clone()

    def unit_norm(on: bool):
        def run():
            with_native(on)
            try:
                ops.project_out_rows_(grad, weights)
                ops.normalize_rows_(weights)
            finally:
                with_native(True)

        return run

    # two passes over grad and W (read + write each), two over W again
    unit_bytes = 6 * s * d * 4
    timings = {"torch": best(unit_norm(False), args.reps)}
    if native.library() is not None:
        timings["native"] = best(unit_norm(True), args.reps)
    part("unit_norm", unit_bytes / read_rate, **timings)

    params = [torch.nn.Parameter(enc.clone()), torch.nn.Parameter(W_dec.clone())]
    params += [torch.nn.Parameter(b_enc.clone()), torch.nn.Parameter(torch.zeros(d))]
    for q in params:
        q.grad = torch.randn_like(q)
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)
    adam_bytes = sum(q.numel() for q in params) * 4 * 7  # param, grad, m, v read; three written
    part("adam", adam_bytes / read_rate, torch=best(opt.step, args.reps))

    parts["auxk"] = auxk_costs(x, s, d, k, args.reps)
    if screen.available():
        parts["screened_encoder"] = screened_costs(x, enc, b_enc, k, args.reps, parts)

    steps = {name: p for name, p in parts.items() if name not in ("auxk", "screened_encoder")}
    total = {
        m: sum(p.get(f"{m}_seconds", p["torch_seconds"]) for p in steps.values())
        for m in ("torch", "native")
    }
    if "screened_encoder" in parts:  # the screening replaces the fp32 product and selection
        total["screened"] = (
            total["native"]
            - parts["encoder_gemm"]["torch_seconds"]
            - parts["select"]["native_seconds"]
            + parts["screened_encoder"]["screened_seconds"]
        )
    record = {
        "benchmark": "step_parts",
        "machine": machine_info(),
        "config": {
            "batch": n,
            "d_in": d,
            "d_sae": s,
            "k": k,
            "reps": args.reps,
            "dtype": "float32",
        },
        "rates": {"sgemm_gflops": sgemm_rate / 1e9, "stream_read_gb_s": read_rate / 1e9},
        "native_kernels": native.library() is not None,
        "parts": parts,
        "sum_of_parts_seconds": total,
        "gemm_fraction_of_sum": {m: gemm_s / t for m, t in total.items()},
        "load_avg_1min_before": os.getloadavg()[0],
    }
    print(
        f"sgemm {sgemm_rate / 1e9:.0f} GFLOP/s, read {read_rate / 1e9:.1f} GB/s; sum of parts "
        + ", ".join(f"{m} {1e3 * t:.0f} ms (GEMM {gemm_s / t:.0%})" for m, t in total.items())
    )
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
