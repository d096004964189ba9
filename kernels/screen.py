"""Exact top-k pre-activations through a bf16 screening product (CPU, native kernels).

A TopK step needs, per token, the k largest of `x @ W.T + b` over d_sae latents; nearly all
of its time is that product in fp32. On CPUs with bf16 dot-product instructions (avx512_bf16,
AMX) a bf16 product runs ~2.5x faster, and it can decide the top-k exactly:

1. `a = bf16(x) @ bf16(W).T` (fp32 accumulation, bf16 output), through torch.
2. For every entry, a rigorous bound `E` on `|v - (a + b)|`, v being the fp32 value this
   module returns (`_bound_terms`, derived below); lower `a + b - E`, upper `a + b + E`.
3. Per row, the candidates: entries whose upper bound reaches the k-th largest lower bound
   (every top-k entry of v is one; ~1.4-1.7k per row on real activations).
4. The candidates' v in fp32 (a dot product each, latent-major), and the top-k among them.

The result is the fp32 top-k (the same latents as the fp32 product's top-k, up to ties within
fp32 rounding, and values that differ from it by rounding only: they are dot products, not
GEMM outputs), whatever the thread count. A NaN or infinity anywhere makes the kernel decline
(the caller's fp32 path then runs), as does a CPU without bf16 instructions, a product the
bound does not hold for (`_self_check`, once per process), or `SAELAB_DISABLE_SCREEN=1`.

The bound. With u = 2^-24 (fp32), u_b = 2^-8 (bf16), γ = (d+2)u / (1 - (d+2)u), x̂ = bf16(x),
ŵ = bf16(w), r_x = x - x̂, r_w = w - ŵ (exact in fp32), and the product's s = fl32(x̂ · ŵ)
(bf16 products are exact in fp32), a = bf16(s):
- x · w - x̂ · ŵ = r_x · w + x̂ · r_w, at most ‖r_x‖‖w‖ + (1 + u_b)‖x‖‖r_w‖;
- |s - x̂ · ŵ| <= γ (1 + u_b)² ‖x‖‖w‖ (fp32 accumulation); |a - s| <= u_b / (1 - u_b) |a|;
- v = fl(fl(x · w) + b): within γ‖x‖‖w‖ + u(‖x‖‖w‖(1 + γ) + |b|) of x · w + b;
- forming a + b and the bounds in fp32 adds a few u of |a|, |b| and E;
- bf16 dot instructions flush denormals: at most 2^-126 √d (‖x‖ + ‖w‖) + d 2^-126.
`_bound_terms` adds these up with slack (3γ for the γ terms, 4u for the u terms, a 2^-12
relative margin on the whole), as `E = alpha[t] ‖w_j‖ + beta[t] ‖r_w_j‖ + c1 |a| + colc[j] +
rowc[t]`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from saelab.kernels import native

log = logging.getLogger(__name__)

DISABLE_ENV = "SAELAB_DISABLE_SCREEN"
MIN_LATENTS = 4096
"""Narrower encoders keep the fp32 product: the screening's fixed costs are not repaid."""
MAX_K_FRACTION = 1 / 64
"""Above k = d_sae / 64 the candidates (~1.5k a row) cost more than the fp32 product saves:
measured 1.18x at d_sae 4096, k 64, but 0.89x at k = d_sae / 32 (4096/128, 16384/512)."""
_U, _UB = 2.0**-24, 2.0**-8
_MARGIN = 1 + 2.0**-12
_TINY = 2.0**-126


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 dot-product instructions (else the bf16 product is slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def available() -> bool:
    """Whether `screened_topk` runs here: the native kernels, a CPU with bf16 instructions,
    not disabled by environment, and torch's bf16 product within the bound (checked once)."""
    return not disabled() and native.library() is not None and _cpu_has_bf16() and _self_check()


def pays(d_sae: int, k: int) -> bool:
    """Whether screening is worth it for this width and k (`MIN_LATENTS`, `MAX_K_FRACTION`)."""
    return d_sae >= MIN_LATENTS and k <= d_sae * MAX_K_FRACTION


def _bound_terms(xn: Tensor, rxn: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """Per-row `(alpha, beta, rowc)` and the constant `c1` of the bound (module docstring),
    from the rows' norms `xn` and their bf16 residuals' norms `rxn`."""
    gamma = (d + 2) * _U / (1 - (d + 2) * _U)
    alpha = rxn.double() + 3 * gamma * (1 + _UB) ** 2 * xn.double() + _TINY * math.sqrt(d)
    beta = (1 + _UB) * xn.double()
    rowc = _TINY * (math.sqrt(d) * xn.double() + d)
    c1 = _UB / (1 - _UB) + 4 * _U
    as_float = lambda t: (t * _MARGIN).float().contiguous()  # noqa: E731
    return as_float(alpha), as_float(beta), as_float(rowc), c1 * _MARGIN


def _bf16_rows(rows: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """`(bf16(rows), ‖rows‖, ‖rows - bf16(rows)‖)` per row, in one native pass; None when a
    value is not finite."""
    n, d = rows.shape
    out = torch.empty(n, d, dtype=torch.bfloat16)
    norm, rnorm = torch.empty(n), torch.empty(n)
    status = native.library().saelab_bf16_rows(
        rows.data_ptr(),
        out.data_ptr(),
        norm.data_ptr(),
        rnorm.data_ptr(),
        n,
        d,
        native.threads_for(rows.numel()),
    )
    return (out, norm, rnorm) if status == 0 else None


def screened_topk(
    x: Tensor,
    W_rows: Tensor,
    bias: Tensor | None,
    k: int,
    product: Tensor | None = None,
    cols: Tensor | None = None,
    cols_k: int = 0,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None] | None:
    """`(vals, idx, aux)`: `vals, idx [N, k]` every row's k largest of `x @ W_rows.T + bias`
    in fp32 (no particular order), or None where the screening does not apply (see
    `available`; a NaN or infinity; other dtypes or layouts). `x [N, d]`, `W_rows
    [d_sae, d]` float32 CPU; `product`, an optional bf16 `[N, d_sae]` buffer for the
    screening product.

    With `cols` (latents, AuxK's dead ones) and `cols_k > 0`, `aux = (vals, pos, count)`:
    each row's at most `cols_k` largest *positive* pre-activations among those latents
    (`[N, cols_k]`, positions in `cols`, a row's slots from `count[r]` on unwritten), found
    through the same screening (only entries whose upper bound is positive are computed);
    else `aux` is None."""
    if not available() or x.dim() != 2 or W_rows.dim() != 2 or x.shape[1] != W_rows.shape[1]:
        return None
    n, d = x.shape
    s = W_rows.shape[0]
    if not 1 <= k <= s or cols_k < 0:
        return None
    x, W_rows = x.detach().contiguous(), W_rows.detach().contiguous()
    if bias is not None:
        bias = bias.detach().contiguous()
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (x, W_rows)):
        return None
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (s,)):
        return None
    if cols is not None and cols_k > 0:
        if not native.valid_columns(cols, s):
            return None
        cols = cols.to(torch.int64).contiguous()
    else:
        cols, cols_k = None, 0
    xs, ws = _bf16_rows(x), _bf16_rows(W_rows)
    if xs is None or ws is None:
        return None
    if product is None or product.dtype != torch.bfloat16 or product.shape != (n, s):
        product = torch.empty(n, s, dtype=torch.bfloat16)
    torch.mm(xs[0], ws[0].t(), out=product)
    alpha, beta, rowc, c1 = _bound_terms(xs[1], xs[2], d)
    colc = (4 * _U * bias.abs() * _MARGIN) if bias is not None else torch.zeros(s)
    vals = torch.empty(n, k)
    idx = torch.empty(n, k, dtype=torch.int64)
    width = max(cols_k, 1)
    aux = (
        torch.empty(n, width),
        torch.empty(n, width, dtype=torch.int64),
        torch.zeros(n, dtype=torch.int64),
    )
    candidates = ctypes.c_int64(0)
    status = native.library().saelab_screened_topk(
        product.data_ptr(),
        x.data_ptr(),
        W_rows.data_ptr(),
        None if bias is None else bias.data_ptr(),
        alpha.data_ptr(),
        beta.data_ptr(),
        rowc.data_ptr(),
        ws[1].data_ptr(),
        ws[2].data_ptr(),
        colc.contiguous().data_ptr(),
        c1,
        n,
        s,
        d,
        k,
        vals.data_ptr(),
        idx.data_ptr(),
        None if cols is None else cols.data_ptr(),
        0 if cols is None else cols.numel(),
        cols_k,
        *(t.data_ptr() for t in aux),
        ctypes.addressof(candidates),
        native.threads_for(product.numel()),
    )
    screened_topk.last_candidates = candidates.value  # type: ignore[attr-defined]
    if status != 0:
        return None
    return vals, idx, (aux if cols is not None else None)


@functools.cache
def _self_check() -> bool:
    """torch's bf16 CPU product against the bound's assumptions (fp32 accumulation of exact
    bf16 products, one bf16 rounding), on random inputs: False (screening off, logged) when
    some entry lies outside `γ ‖x̂‖‖ŵ‖ + u_b |a| / (1 - u_b)`."""
    g = torch.Generator().manual_seed(0)
    d = 576
    xb = torch.randn(64, d, generator=g).bfloat16()
    wb = (torch.randn(512, d, generator=g) * torch.rand(512, 1, generator=g)).bfloat16()
    a = (xb @ wb.t()).double()
    exact = xb.double() @ wb.double().t()
    gamma = (d + 2) * _U / (1 - (d + 2) * _U)
    allowed = gamma * xb.double().norm(dim=1)[:, None] * wb.double().norm(dim=1)[None, :]
    allowed = allowed + _UB / (1 - _UB) * a.abs()
    ok = bool(((a - exact).abs() <= allowed).all())
    if not ok:
        log.warning("torch's bf16 product is outside the screening bound here: screening is off")
    return ok
