"""Server-side render time of the web app's pages on a synthetic results file.

    python benchmarks/app.py                 # 18,432-latent SAE, 50 random latents, 50 SAEs

A real DuckDB file is filled with synthetic rows shaped like the pipeline's (per latent: top,
quantile and random windows of 32 tokens, histograms, 2 x 10 logit effects; explanations and
scores for a tenth of the latents; a real safetensors checkpoint for the decoder neighbours),
plus 50 SAEs with core and loss metrics. Each render is one Streamlit script run in AppTest
(a fresh browser session, so the per-latent queries are not cached; the tokenizer and decoder
are, as in a running server after its first page), timed inside the script thread: the
server-side render, without AppTest's own start-up (it scans installed packages for
components) or the browser. Target: feature page p95 < 300 ms.
Results are printed and saved as JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from saelab import resultstore as results  # noqa: E402

WINDOW, VOCAB, D_IN = 32, 49152, 576
SCRIPT = (
    "import time\nimport saelab.app.main as m\nt = time.perf_counter()\nm.run_page({page!r})\n"
    "m.LAST_RENDER_S = time.perf_counter() - t\n"
)


def _lists(values: np.ndarray, pa_type):
    import pyarrow as pa

    n, w = values.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa_type))


def build(folder: Path, d_sae: int, n_saes: int, seed: int) -> tuple[str, str]:
    import pyarrow as pa
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    db = folder / "results.duckdb"
    ckpt = folder / "sae"
    ckpt.mkdir()
    save_file(
        {"W_dec": rng.normal(size=(d_sae, D_IN)).astype(np.float32)},
        str(ckpt / "sae_weights.safetensors"),
    )
    sha = "synthetic-model"
    weights = results.file_sha256(ckpt / "sae_weights.safetensors")
    # a synthetic file written straight (its own transaction below), on the store's schema
    with results.ResultsStore(db, "write").reading() as con:
        con.execute("BEGIN TRANSACTION")
        for i in range(n_saes):
            width = d_sae if i == 0 else int(rng.choice([4608, 9216, 18432]))
            sae_id = "big" if i == 0 else f"sae{i:03d}"
            con.execute(
                "INSERT INTO saes (sae_id, name, path, architecture, d_in, d_sae, hook, model, "
                "model_sha256, weights_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, 'blocks.8.hook_resid_post', 'smollm2-135m', ?, ?)",
                [
                    sae_id,
                    sae_id,
                    str(ckpt) if i == 0 else "",
                    ["topk", "jumprelu", "batchtopk"][i % 3],
                    D_IN,
                    width,
                    sha,
                    weights if i == 0 else "",
                ],
            )
            l0 = float(rng.uniform(10, 100))
            for ev, metric, value in [
                ("core", "l0", l0), ("core", "fvu", float(1 / l0)), ("core", "dead_fraction", float(rng.uniform(0, 0.2))),
                ("core", "dense_fraction", float(rng.uniform(0, 0.01))), ("loss", "ce_loss_score", float(1 - 1 / l0)),
            ]:  # fmt: skip
                con.execute(
                    "INSERT INTO metrics VALUES (?, ?, ?, ?, 'r')", [sae_id, ev, metric, value]
                )
        f = np.arange(d_sae)
        density = 10 ** rng.uniform(-6, -1, d_sae)
        dead = rng.random(d_sae) < 0.02
        density[dead] = 0
        feats = pa.table({
            "sae_id": ["big"] * d_sae, "feature": pa.array(f, pa.int32()), "n_tokens": np.full(d_sae, 10**6),
            "n_active": (density * 1e6).astype(np.int64), "density": density,
            "log10_density": np.where(dead, -np.inf, np.log10(np.maximum(density, 1e-300))),
            "max_act": rng.uniform(1, 10, d_sae), "mean_act": rng.uniform(0.1, 1, d_sae), "dead": dead,
            "dense": density > 0.1, "too_few_examples": density < 2e-6, "run_id": ["r"] * d_sae,
        })  # fmt: skip
        con.register("_f", feats)
        con.execute("INSERT INTO features SELECT * FROM _f")
        live = f[~dead]
        per = [("top", 0, 10), *[("quantile", b, 4) for b in range(4)], ("random", 0, 5)]
        for kind, band, n in per:
            rows = np.repeat(live, n)
            m = len(rows)
            acts = rng.exponential(1.0, size=(m, WINDOW)).astype(np.float32) * (
                rng.random((m, WINDOW)) < 0.3
            )
            ex = pa.table({
                "sae_id": ["big"] * m, "feature": pa.array(rows, pa.int32()), "kind": [kind] * m,
                "band": pa.array(np.full(m, band), pa.int32()), "rank": pa.array(np.tile(np.arange(n), len(live)), pa.int32()),
                "seq": rng.integers(0, 10**5, m), "pos": pa.array(np.full(m, 16), pa.int32()),
                "window_start": pa.array(np.zeros(m), pa.int32()), "activation": acts.max(1).astype(np.float64),
                "tokens": _lists(rng.integers(0, VOCAB, (m, WINDOW)).astype(np.int32), pa.int32()),
                "acts": _lists(acts, pa.float32()), "run_id": ["r"] * m,
            })  # fmt: skip
            con.register("_e", ex)
            con.execute("INSERT INTO feature_examples SELECT * FROM _e")
        edges = np.logspace(-3, 3, 49)
        hist = pa.table({
            "sae_id": ["big"] * d_sae, "feature": pa.array(f, pa.int32()), "kind": ["activation"] * d_sae,
            "bin_edges": _lists(np.tile(edges, (d_sae, 1)), pa.float64()),
            "counts": _lists(rng.integers(0, 100, (d_sae, 48)), pa.int64()), "run_id": ["r"] * d_sae,
        })  # fmt: skip
        con.register("_h", hist)
        con.execute("INSERT INTO feature_histograms SELECT * FROM _h")
        n = d_sae * 20
        logits = pa.table({
            "sae_id": ["big"] * n, "feature": pa.array(np.repeat(f, 20), pa.int32()),
            "side": np.tile(["top"] * 10 + ["bottom"] * 10, d_sae), "rank": pa.array(np.tile(np.arange(20) % 10, d_sae), pa.int32()),
            "token_id": pa.array(rng.integers(0, VOCAB, n), pa.int32()), "value": rng.normal(size=n), "run_id": ["r"] * n,
        })  # fmt: skip
        con.register("_l", logits)
        con.execute("INSERT INTO feature_logits SELECT * FROM _l")
        vocab = pa.table({"model_sha256": [sha] * VOCAB, "token_id": pa.array(np.arange(VOCAB), pa.int32()),
                          "token": [f" tok{i}" for i in range(VOCAB)]})  # fmt: skip
        con.register("_v", vocab)
        con.execute("INSERT INTO vocab SELECT * FROM _v")
        explained = live[rng.random(len(live)) < 0.1].tolist()
        con.executemany(
            "INSERT INTO explanations (sae_id, feature, explainer, status, explanation, n_examples) VALUES ('big', ?, 'llm', 'ok', ?, 20)",
            [[int(x), f"synthetic explanation {x}"] for x in explained],
        )
        con.executemany(
            "INSERT INTO scores (sae_id, feature, explainer, scorer, status, value, ci_low, ci_high, n_windows, n_valid, n_failures) "
            "VALUES ('big', ?, 'llm', ?, 'ok', 0.7, 0.6, 0.8, 40, 40, 0)",
            [[int(x), s] for x in explained for s in ("detection", "fuzzing")],
        )
        con.execute("COMMIT")
    return str(db), "big"


def render(page: str, **params) -> float:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(SCRIPT.format(page=page), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    if at.exception or at.error:
        raise RuntimeError(f"{page} {params}: {at.exception or at.error[0].value}")
    import saelab.app.main

    return saelab.app.main.LAST_RENDER_S  # the script run itself, timed inside the server thread


def stats(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--d-sae", type=int, default=18432)
    p.add_argument("--latents", type=int, default=50)
    p.add_argument("--saes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/app-cpu.json"))
    args = p.parse_args()
    from saelab.app import db as appdb

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path, sae = build(Path(tmp), args.d_sae, args.saes, args.seed)
        built = time.perf_counter() - t
        os.environ[appdb.DB_ENV] = path
        rng = np.random.default_rng(args.seed + 1)
        warm = render("feature", sae=sae, feature=0)  # loads the tokenizer and decoder once
        feature = [
            render("feature", sae=sae, feature=int(x))
            for x in rng.integers(0, args.d_sae, args.latents)
        ]
        saes_cold = render("saes")
        saes_page = [render("saes") for _ in range(10)]
        size = Path(path).stat().st_size
    result = {
        "benchmark": "app",
        "d_sae": args.d_sae, "saes": args.saes, "db_mb": round(size / 2**20, 1), "build_s": round(built, 1),
        "feature_page": stats(feature), "feature_page_first_ms": warm * 1000,
        "saes_page_first_ms": saes_cold * 1000, "saes_page_cached": stats(saes_page),
        "target": "feature page p95 < 300 ms", "machine": machine_info(),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
