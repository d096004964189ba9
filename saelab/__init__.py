"""saelab: sparse autoencoders on language-model activations, end to end.

The notebook-facing API, in a handful of names, each taking the same dataclass config as the
command line:

    import saelab
    saelab.harvest(saelab.HarvestConfig(out="runs/acts.zarr", tokens=200_000))
    saes = saelab.train([saelab.make_config("topk", d_sae=4608, k=32)], acts="runs/acts.zarr",
                        hook="blocks.8.hook_resid_post", out="runs/sweep")
    saelab.evaluate(saelab.EvalConfig(sae="runs/sweep", acts="runs/acts.zarr", db="runs/r.duckdb"))
    saelab.explain(saelab.ExplainConfig(db="runs/r.duckdb", sae="topk-4608-k32"))
    res = saelab.open_results("runs/r.duckdb")   # pandas frames, plotly figures, dashboards
    sae = saelab.load_sae("runs/sweep/topk-4608-k32")

Names load lazily (PEP 562): `import saelab` imports neither torch nor the pipeline until a
name is used. The parts are its subpackages (`saelab.sae`, `saelab.evaluation`, ...), whose
folders stand at the top of the repository; none of them imports this module's names.
"""

from __future__ import annotations

import importlib

from saelab.base import __version__

_EXPORTS = {
    "harvest": "saelab.api",
    "train": "saelab.api",
    "evaluate": "saelab.api",
    "explain": "saelab.api",
    "load_sae": "saelab.api",
    "open_results": "saelab.api",
    "load_model": "saelab.api",
    "training_loader": "saelab.api",
    "Results": "saelab.results",
    "FeatureView": "saelab.results",
    "make_config": "saelab.sae.registry",
    "register_architecture": "saelab.sae.registry",
    "HarvestConfig": "saelab.activations.harvest",
    "TrainConfig": "saelab.sae.config",
    "TrainRunConfig": "saelab.sae.run",
    "E2EConfig": "saelab.sae.e2e",
    "run_training": "saelab.sae.run",
    "EvalConfig": "saelab.evaluation.runner",
    "ExplainConfig": "saelab.autointerp.config",
    "LLMConfig": "saelab.autointerp.config",
    "WindowConfig": "saelab.autointerp.config",
    "circuit": "saelab.api",
    "circuit_graph": "saelab.api",
    "circuit_curves": "saelab.api",
    "CircuitConfig": "saelab.circuits.run",
    "shift": "saelab.api",
    "graph": "saelab.api",
    "GraphConfig": "saelab.circuits.graph_run",
    "graph_figure": "saelab.api",
    "graph_agreement": "saelab.api",
    "ShiftConfig": "saelab.circuits.shift",
    "steer": "saelab.steering.run",
    "SteerConfig": "saelab.steering.run",
    "Sampling": "saelab.steering.generate",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'saelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
