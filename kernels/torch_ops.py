"""The three sparse primitives in plain torch, fast on CPU.

With `idx [N, k]` latent indices and `vals [N, k]` their weights:
- `weighted_rows(idx, vals, table)`: out[n] = Σ_j vals[n, j] · table[idx[n, j]]     `[N, d]`
- `gather_dot(idx, a, table)`:       out[n, j] = a[n] · table[idx[n, j]]            `[N, k]`
- `scatter_rows(idx, vals, a, n)`:   out[r] = Σ_{idx[n, j] = r} vals[n, j] · a[n]     `[n, d]`

Sparse decode is `weighted_rows` forward, `gather_dot` and `scatter_rows` backward; the sparse
encoder is the same three with the encoder's rows as the table. On CPU they map onto
`embedding_bag`, a CSR `sampled_addmm` and a CSR matmul (a sort-and-segment reduction, no
atomics), measured fastest among the torch options. Half-precision inputs are computed in
float32 (the CPU sparse routines do not take them) and cast back.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
_FAST = (torch.float32, torch.float64)


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    return dtype if dtype in _FAST else torch.float32


def weighted_rows(idx: Tensor, vals: Tensor, table: Tensor) -> Tensor:
    dtype = _work_dtype(table)
    out = F.embedding_bag(idx, table.to(dtype), per_sample_weights=vals.to(dtype), mode="sum")
    return out.to(table.dtype)


def gather_dot(idx: Tensor, a: Tensor, table: Tensor) -> Tensor:
    n, k = idx.shape
    dtype = _work_dtype(table)
    if n == 0 or k == 0:
        return a.new_zeros(n, k)
    if a.device.type != "cpu":  # CSR sampled_addmm is CPU/CUDA-sparse only; stay generic elsewhere
        return torch.einsum("nkd,nd->nk", table.to(dtype)[idx], a.to(dtype)).to(a.dtype)
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    pattern = torch.sparse_csr_tensor(
        crow,
        idx.reshape(-1),
        torch.zeros(n * k, dtype=dtype),
        size=(n, table.shape[0]),
        check_invariants=False,
    )
    out = torch.sparse.sampled_addmm(
        pattern, a.to(dtype).contiguous(), table.to(dtype).t(), beta=0.0
    )
    return out.values().view(n, k).to(a.dtype)


def scatter_rows(idx: Tensor, vals: Tensor, a: Tensor, n_rows: int) -> Tensor:
    n, k = idx.shape
    dtype = _work_dtype(a)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    owner = torch.arange(n, device=idx.device).repeat_interleave(k)[order]
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    matrix = torch.sparse_csr_tensor(
        crow, owner, vals.reshape(-1)[order].to(dtype), size=(n_rows, n), check_invariants=False
    )
    return (matrix @ a.to(dtype).contiguous()).to(a.dtype)
