"""Fused sparse encode/decode ops for SAEs: Triton on CUDA, torch everywhere else.

    sparse_decode(idx, vals, W_dec, b_dec)      out[n] = b_dec + Σ_j vals[n,j] W_dec[idx[n,j]]
    banded_decode(idx, vals, W_dec, bounds)     the same sum split by latent band: [N, L, d_in]
    decode_probe(idx, vals, W_dec, mask)        zeros whose backward gives vals the decode's gradient
    gather_preacts(x, W_enc, b_enc, idx, pre, shift)   ((x - shift) @ W_enc + b_enc) at idx
    encode_topk(x, W_enc, b_enc, k)             the TopK encoder: (vals, idx), differentiable
    topk_preacts(x, W_enc, b_enc, k, cols)      matmul + top-k fused (CPU): (vals, idx, pre[:, cols])
    shared_segments(idx, n_rows)                one sort of a selection for all its backward scatters
    project_rows_(grad, w) / normalize_rows_(w) unit-norm rows in one native pass (False: not applicable)
    topk_select / threshold_select / batch_topk_select   selections (padded layout for variable k)
    split_selection(idx, mask, first)           one padded selection split in two
    backend(device)                             "triton" or "torch" (SAELAB_DISABLE_TRITON=1)

Padded layout (variable k): `idx [N, kmax]` plus a bool `mask`; padded slots hold idx 0 and
must carry vals 0, so they add nothing to the output nor to any weight gradient (the backward
skips zero-weight entries altogether).

Imports nothing from the rest of saelab. Bad input raises ValueError.
"""

if __name__ == "kernels":
    # Found under the folder's own name: Python was started in the repository root, which is then
    # first on sys.path. That name belongs to an installed package (Hugging Face's `kernels`,
    # which transformers imports): hand it over rather than shadow it.
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    _root = Path(__file__).resolve().parents[1]
    _path = [p for p in sys.path if Path(p or ".").resolve() != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _path)
    if _spec is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
else:
    from saelab.kernels.api import (
        banded_decode,
        decode_probe,
        encode_topk,
        gather_preacts,
        shared_segments,
        sparse_decode,
    )
    from saelab.kernels.dispatch import backend
    from saelab.kernels.fused import fused_available, release_workspace, topk_preacts
    from saelab.kernels.native import normalize_rows_, project_rows_
    from saelab.kernels.select import (
        batch_topk_select,
        pad_active,
        split_selection,
        threshold_select,
        topk_select,
    )

    __all__ = [
        "backend",
        "banded_decode",
        "batch_topk_select",
        "decode_probe",
        "encode_topk",
        "fused_available",
        "gather_preacts",
        "normalize_rows_",
        "pad_active",
        "project_rows_",
        "release_workspace",
        "shared_segments",
        "sparse_decode",
        "split_selection",
        "threshold_select",
        "topk_preacts",
        "topk_select",
    ]
