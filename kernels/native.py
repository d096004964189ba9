"""saelab's native CPU kernels (`csrc/*.c`), built with the system C compiler at
first use and called through ctypes.

The C files need no Python or torch headers, so they build in about a second with any `cc`;
the shared library is cached under `$SAELAB_NATIVE_CACHE` (default
`~/.cache/saelab/native`), keyed by the source, the compiler and the CPU (it is built with
`-march=native`), and written atomically, so concurrent first uses are safe. When there is no
compiler, the build fails, or `SAELAB_DISABLE_NATIVE=1` is set, `library()` is None and every
caller keeps its torch path (same results). ctypes releases the GIL during a call; each
kernel splits its rows over `torch.get_num_threads()` threads (one for small inputs), on
torch's own OpenMP runtime where the compiler has OpenMP.
`make install` builds it once ahead of use.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

DISABLE_ENV = "SAELAB_DISABLE_NATIVE"
CACHE_ENV = "SAELAB_NATIVE_CACHE"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = sorted(CSRC.glob("*.c"))
"""Compiled together into one shared library; `common.h` holds their shared helpers."""
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread", "-std=c99", "-fopenmp"]
"""With `-fopenmp` the kernels run on the OpenMP runtime torch loaded (`parallel_for` in
`csrc/common.h`); a compiler without OpenMP gets the same flags less that one (pthreads)."""
BUILD_TIMEOUT_S = 120
"""A compiler that takes longer is given up on (the torch paths run)."""

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_SIGNATURES = {
    "saelab_topk_rows": [
        _PTR,
        _PTR,
        _I64,
        _I64,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        _I64,
        _PTR,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        ctypes.c_int,
    ],
    "saelab_segment_rows": [
        _PTR,
        _PTR,
        _I64,
        _I64,
        _PTR,
        _PTR,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        ctypes.c_int,
    ],
    "saelab_screened_topk": [
        *[_PTR] * 10,
        ctypes.c_float,
        *[_I64] * 4,
        _PTR,
        _PTR,
        _PTR,
        _I64,
        _I64,
        *[_PTR] * 4,
        ctypes.c_int,
    ],
    "saelab_bf16_rows": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, ctypes.c_int],
    "saelab_project_rows": [_PTR, _PTR, _I64, _I64, ctypes.c_int],
    "saelab_normalize_rows": [_PTR, _I64, _I64, ctypes.c_float, ctypes.c_int],
}


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saelab" / "native"


def _build(cc: str) -> Path:
    source = b"".join(p.read_bytes() for p in [*SOURCES, CSRC / "common.h"])
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        b"\0".join([source, version.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"saelab_native-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        try:
            _compile(cc, FLAGS, tmp)
        except subprocess.CalledProcessError:  # no OpenMP here: pthreads
            _compile(cc, [f for f in FLAGS if f != "-fopenmp"], tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _compile(cc: str, flags: list[str], out: str) -> None:
    subprocess.run(
        [cc, *flags, "-o", out, *map(str, SOURCES), "-lm"],
        check=True,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )


@functools.cache
def _load() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found: saelab's native CPU kernels are off (torch paths run)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("saelab's native CPU kernels did not build (%s); torch paths run", detail[:300])
        return None
    return bind(lib)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the entry points' argument and return types on a loaded library."""
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (no compiler, a failed build, or disabled)."""
    return None if disabled() else _load()


SERIAL_BELOW = 1 << 18
"""Inputs with fewer elements run on the calling thread alone: starting a thread costs tens
of microseconds, more than such a call's whole work."""


def threads_for(numel: int) -> int:
    """Threads for a call over `numel` elements (see `SERIAL_BELOW`)."""
    return 1 if numel < SERIAL_BELOW else torch.get_num_threads()


def _usable(*tensors: Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


def valid_columns(cols: Tensor, d: int) -> bool:
    """`cols` a 1-D CPU integer tensor of columns in `0..d-1` (the C code trusts it)."""
    if cols.dim() != 1 or cols.device.type != "cpu" or cols.is_floating_point():
        return False
    return cols.numel() == 0 or (int(cols.min()) >= 0 and int(cols.max()) < d)


def topk_rows(
    pre: Tensor, k: int, bias: Tensor | None = None, cols: Tensor | None = None, cols_k: int = 0
) -> tuple[Tensor, Tensor, Any] | None:
    """Each row's k largest entries `(vals, idx, extra)` (in no particular order) of
    `pre + bias` (`pre` a contiguous float32 CPU `[N, d]` matrix, `bias` `[d]` or None), or
    None where the native path does not apply (no library, another dtype or device, or a NaN
    or infinity: torch's top-k ranks those). The bias and the columns are taken row by row
    while the row is in cache, sparing the caller two passes over the whole matrix (`addmm`'s
    bias broadcast, `index_select`).

    `extra`: None without `cols`; with `cols` and `cols_k == 0`, `(pre + bias)[:, cols]`;
    with `cols_k > 0`, `(vals, pos, count)`: each row's at most `cols_k` largest positive
    entries among the columns, `vals, pos [N, cols_k]` (positions in `cols`; a row's slots
    from `count[r]` on are unwritten) and `count [N]`."""
    lib = library()
    pre = pre.detach()
    if lib is None or not _usable(pre) or pre.dim() != 2 or cols_k < 0:
        return None
    if bias is not None:
        bias = bias.detach()
        if not _usable(bias) or tuple(bias.shape) != (pre.shape[1],):
            return None
    if cols is not None and not valid_columns(cols, pre.shape[1]):
        return None
    n, d = pre.shape
    vals = torch.empty(n, k, dtype=pre.dtype)
    idx = torch.empty(n, k, dtype=torch.int64)
    if cols is not None:
        cols = cols.to(torch.int64).contiguous()
    positive = cols is not None and cols_k > 0
    dense = None if cols is None or positive else torch.empty(n, cols.numel(), dtype=pre.dtype)
    aux = (
        (
            torch.empty(n, cols_k, dtype=pre.dtype),
            torch.empty(n, cols_k, dtype=torch.int64),
            torch.zeros(n, dtype=torch.int64),
        )
        if positive
        else None
    )
    extra = aux if positive else dense
    if n == 0:
        return vals, idx, extra
    status = lib.saelab_topk_rows(
        pre.data_ptr(),
        None if bias is None else bias.data_ptr(),
        n,
        d,
        k,
        vals.data_ptr(),
        idx.data_ptr(),
        None if cols is None else cols.data_ptr(),
        0 if cols is None else cols.numel(),
        None if dense is None else dense.data_ptr(),
        cols_k if positive else 0,
        None if aux is None else aux[0].data_ptr(),
        None if aux is None else aux[1].data_ptr(),
        None if aux is None else aux[2].data_ptr(),
        threads_for(pre.numel()),
    )
    return (vals, idx, extra) if status == 0 else None


def segment_rows(
    starts: Tensor,
    order: Tensor,
    k: int,
    w: Tensor,
    a: Tensor,
    table: Tensor | None = None,
) -> tuple[Tensor, Tensor | None] | None:
    """Latent-major sums over a selection sorted by latent (`torch_ops.SharedSegments`'s or
    `segment_plan`'s sort): latent r's entries are `order[starts[r]:starts[r + 1]]`, flat
    positions in an `[N, k]` selection (token `p // k`). Returns `(out, dots)`:
    `out[r] = Σ_e w.flat[p_e] · a[p_e // k]` (`[n_rows, d]`, summed in entry order, so the
    result is deterministic) and, with `table [n_rows, d]`, `dots.flat[p] = a[p // k] ·
    table[r]` at every sorted position (`[N, k]`; positions not in the sort are 0). One
    read of each `a` row serves both: the decoder's weight and value gradients in one pass.
    None where the native path does not apply (then nothing was computed)."""
    lib = library()
    tensors = [w, a] + ([] if table is None else [table])
    if lib is None or not _usable(*tensors) or a.dim() != 2 or k < 1:
        return None
    n_rows = starts.numel() - 1
    if table is not None and (table.dim() != 2 or tuple(table.shape) != (n_rows, a.shape[1])):
        return None
    if w.numel() != a.shape[0] * k or starts.dtype != torch.int64 or order.dtype != torch.int64:
        return None
    if starts.device.type != "cpu" or order.device.type != "cpu":
        return None
    starts, order = starts.contiguous(), order.contiguous()
    out = torch.empty(n_rows, a.shape[1], dtype=a.dtype)
    dots = None if table is None else torch.zeros(a.shape[0], k, dtype=a.dtype)
    lib.saelab_segment_rows(
        starts.data_ptr(),
        order.data_ptr(),
        n_rows,
        k,
        w.data_ptr(),
        a.data_ptr(),
        a.shape[1],
        out.data_ptr(),
        None if table is None else table.data_ptr(),
        None if dots is None else dots.data_ptr(),
        threads_for(order.numel() * a.shape[1]),
    )
    return out, dots


def project_rows_(grad: Tensor, w: Tensor) -> bool:
    """`grad[r] -= (grad[r] · w[r]) w[r]` in place (float32 CPU, contiguous, same shape):
    True when done, False where the native path does not apply (then nothing changed)."""
    lib = library()
    if lib is None or not _usable(grad, w) or grad.shape != w.shape or grad.dim() != 2:
        return False
    lib.saelab_project_rows(
        grad.data_ptr(), w.data_ptr(), grad.shape[0], grad.shape[1], threads_for(grad.numel())
    )
    torch.autograd.graph.increment_version(grad)  # written behind autograd's back
    return True


def normalize_rows_(w: Tensor, eps: float = 1e-12) -> bool:
    """`w[r] /= max(‖w[r]‖, eps)` in place (float32 CPU, contiguous): True when done, False
    where the native path does not apply (then nothing changed)."""
    lib = library()
    if lib is None or not _usable(w) or w.dim() != 2:
        return False
    lib.saelab_normalize_rows(w.data_ptr(), w.shape[0], w.shape[1], eps, threads_for(w.numel()))
    torch.autograd.graph.increment_version(w)  # so a graph that saved w refuses to run
    return True
