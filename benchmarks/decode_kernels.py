"""Sparse kernels vs dense baselines: decode forward+backward and whole training steps.

- decode: `sparse_decode` forward + backward (grads to vals and W_dec) vs the dense
  `codes @ W_dec` on the same codes, and the sparse time against its memory-traffic floor:
  the k gathered rows per token read in forward, read again for the vals gradient and
  written (accumulated) into the W_dec gradient, plus the [N, d_in] output written and the
  incoming gradient read twice, at the measured copy bandwidth.
- TopK and JumpReLU training steps (encoder matmul, selection, gather, decode, MSE, backward):
  sparse kernels vs a dense decoder AND a dense encoder gradient (the same step written with
  dense [N, d_sae] codes).

Times are the minimum over --repeats runs after one warm-up; every ratio comes from this run.

    python benchmarks/decode_kernels.py              # CPU: fp32, batch 4096, d_in 576, d_sae 18432, k 64
    python benchmarks/decode_kernels.py --device cuda --dtype bfloat16 --d-in 2304 --d-sae 65536  # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab import kernels  # noqa: E402
from saelab.kernels.reference import dense_codes  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and Triton compilation)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(64 << 20, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), device, 5)
    return 2 * src.numel() * 4 / t


def make_inputs(args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=g).to(device, dtype)
    enc = (
        (torch.randn(args.d_sae, args.d_in, generator=g) / args.d_in**0.5)
        .to(device, dtype)
        .requires_grad_()
    )
    b_enc = torch.zeros(args.d_sae, device=device, dtype=dtype, requires_grad=True)
    W_dec = (
        (torch.randn(args.d_sae, args.d_in, generator=g) / args.d_in**0.5)
        .to(device, dtype)
        .requires_grad_()
    )
    b_dec = torch.zeros(args.d_in, device=device, dtype=dtype, requires_grad=True)
    return x, enc, b_enc, W_dec, b_dec


def bench_decode(args, device, dtype) -> dict:
    x, enc, b_enc, W_dec, b_dec = make_inputs(args, device, dtype)
    with torch.no_grad():
        vals, idx = kernels.topk_select(torch.addmm(b_enc, x, enc.t()).relu(), args.k)
    vals = vals.detach().requires_grad_()
    grad = torch.randn(args.batch, args.d_in, device=device, dtype=dtype)

    def sparse():
        W_dec.grad = vals.grad = None
        kernels.sparse_decode(idx, vals, W_dec, b_dec).backward(grad)

    def sparse_forward():
        with torch.no_grad():
            kernels.sparse_decode(idx, vals, W_dec, b_dec)

    def dense():
        W_dec.grad = vals.grad = None
        (dense_codes(idx, vals, args.d_sae) @ W_dec + b_dec).backward(grad)

    t_sparse, t_dense = timeit(sparse, device, args.repeats), timeit(dense, device, args.repeats)
    t_forward = timeit(sparse_forward, device, args.repeats)
    elem = torch.finfo(dtype).bits // 8
    floor_bytes = 3 * args.batch * args.k * args.d_in * elem + 3 * args.batch * args.d_in * elem
    bandwidth = copy_bandwidth(device)
    return {
        "sparse_s": t_sparse,
        "sparse_forward_s": t_forward,
        "dense_s": t_dense,
        "speedup": t_dense / t_sparse,
        "floor_bytes": floor_bytes,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "floor_s": floor_bytes / bandwidth,
        "fraction_of_floor": floor_bytes / bandwidth / t_sparse,
    }


def topk_step(x, enc, b_enc, W_dec, b_dec, k, sparse: bool):
    if sparse:
        vals, idx = kernels.encode_topk(x - b_dec, enc.t(), b_enc, k)
        x_hat = kernels.sparse_decode(idx, vals, W_dec, b_dec)
    else:
        pre = torch.relu(torch.addmm(b_enc, x - b_dec, enc.t()))
        top = pre.topk(k, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        x_hat = f @ W_dec + b_dec
    loss = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
    loss.backward()


def jumprelu_step(x, enc, b_enc, W_dec, b_dec, theta, sparse: bool):
    if sparse:
        with torch.no_grad():
            pre = torch.addmm(b_enc, x - b_dec, enc.t())
            idx, mask = kernels.threshold_select(pre, theta)
        vals = kernels.gather_preacts(x - b_dec, enc.t(), b_enc, idx, pre=pre).relu() * mask
        x_hat = kernels.sparse_decode(idx, vals, W_dec, b_dec)
    else:
        pre = torch.addmm(b_enc, x - b_dec, enc.t())
        f = pre * (pre > theta)
        x_hat = f @ W_dec + b_dec
    loss = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
    loss.backward()


def bench_steps(args, device, dtype) -> dict:
    x, enc, b_enc, W_dec, b_dec = make_inputs(args, device, dtype)
    params = (enc, b_enc, W_dec, b_dec)
    with torch.no_grad():  # a per-latent threshold that keeps about k latents per token
        m = min(args.batch, 1024)
        pre = torch.addmm(b_enc, x[:m], enc.t()).float()
        rank = max(1, min(m, m - round(m * args.k / args.d_sae)))
        theta = pre.kthvalue(rank, dim=0).values.to(dtype)
        del pre

    def run(step, *extra, sparse):
        def fn():
            for p in params:
                p.grad = None
            step(x, *params, *extra, sparse=sparse)

        return timeit(fn, device, args.repeats)

    out = {}
    for name, step, extra in (
        ("topk", topk_step, (args.k,)),
        ("jumprelu", jumprelu_step, (theta,)),
    ):
        s, d = run(step, *extra, sparse=True), run(step, *extra, sparse=False)
        out[name] = {
            "sparse_s": s,
            "dense_s": d,
            "speedup": d / s,
            "tokens_per_s_sparse": args.batch / s,
        }
    with torch.no_grad():
        pre = torch.addmm(b_enc, x - b_dec, enc.t())
        out["jumprelu"]["mean_l0"] = (pre > theta).sum(1).float().mean().item()
        del pre
    out["jumprelu_over_topk_step"] = out["jumprelu"]["sparse_s"] / out["topk"]["sparse_s"]
    return out


def check_targets(result: dict, device: torch.device) -> dict:
    """Which targets this run meets (only those that apply to its device)."""
    t, step, dec = result["targets"], result["train_step"], result["decode"]
    if device.type == "cpu":
        return {"cpu_topk_step_speedup": step["topk"]["speedup"] >= t["cpu_topk_step_speedup"]}
    return {
        "gpu_decode_speedup": dec["speedup"] >= t["gpu_decode_speedup"],
        "gpu_fraction_of_floor": dec["fraction_of_floor"] >= t["gpu_fraction_of_floor"],
        "gpu_topk_step_speedup": step["topk"]["speedup"] >= t["gpu_topk_step_speedup"],
        "jumprelu_over_topk_step_max": step["jumprelu_over_topk_step"]
        <= t["jumprelu_over_topk_step_max"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=18432)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--out", help="JSON path (default benchmarks/results/kernels-<device>.json)"
    )
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "kernels",
        "machine": machine_info(),
        "config": {**vars(args), "backend": kernels.backend(device)},
        "decode": bench_decode(args, device, dtype),
        "train_step": bench_steps(args, device, dtype),
        "targets": {
            "cpu_topk_step_speedup": 3.5,
            "gpu_decode_speedup": 10,
            "gpu_fraction_of_floor": 0.6,
            "gpu_topk_step_speedup": 3,
            "jumprelu_over_topk_step_max": 1.5,
        },
    }
    result["checks"] = check_targets(result, device)
    out = Path(args.out or f"benchmarks/results/kernels-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
