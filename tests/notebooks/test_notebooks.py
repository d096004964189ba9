"""Every notebook in notebooks/ runs top to bottom on tiny settings, and is committed clean.

The notebooks run in a real Jupyter kernel (nbclient), with SAELAB_NOTEBOOK_SIZE=tiny read by
their parameters cell, from the notebooks folder (as Jupyter would), writing to a temporary
folder. A failing cell fails its notebook's test with the cell's source and the error.

One kernel serves every notebook (each starts from an emptied namespace, `%reset -f`): the
kernel start, the imports and the model load (`saelab.load_model` keeps it per process) are
paid once. The kernel runs torch on one thread: the tiny settings' matrices gain nothing from
more, and on a busy 2-core machine a second thread made every forward several times slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 240


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_train_saes.ipynb",
        "02_browse_features.ipynb",
        "03_circuits_and_steering.ipynb",
        "04_benchmark_variants.ipynb",
        "05_attribution_graphs.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(book.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A started kernel manager shared by the notebooks (restarted if a notebook killed it)."""
    from nbclient.util import run_sync

    env = {
        **os.environ,
        "SAELAB_NOTEBOOK_SIZE": "tiny",
        "SAELAB_NOTEBOOK_DIR": str(tmp_path_factory.mktemp("notebooks")),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    km = nbclient.NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3")
    km = km.create_kernel_manager()
    run_sync(km.start_kernel)(cwd=str(NOTEBOOKS[0].parent), env=env)

    def live():
        if not run_sync(km.is_alive)():
            run_sync(km.restart_kernel)(now=True)
        return km

    yield live
    run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, kernel):
    book = nbformat.read(path, as_version=4)
    book.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))  # nothing left from the last one
    client = nbclient.NotebookClient(book, km=kernel(), timeout=CELL_TIMEOUT, kernel_name="python3")
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        failed = next((c for c in book.cells if c.cell_type == "code" and _has_error(c)), None)
        source = failed.source if failed is not None else "(cell not found)"
        pytest.fail(f"{path.name}: a cell failed\n--- cell ---\n{source}\n--- error ---\n{err}")
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")


def _has_error(cell) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def test_import_saelab_is_cheap_and_offers_the_api():
    code = (
        "import sys, saelab\n"
        "assert 'torch' not in sys.modules, 'import saelab pulled in torch'\n"
        "names = ['harvest', 'train', 'evaluate', 'explain', 'load_sae', 'open_results', 'steer', 'circuit',"
        "'circuit_graph', 'circuit_curves', 'load_model', 'graph', 'graph_figure', 'graph_agreement']\n"
        "for n in names:\n"
        "    fn = getattr(saelab, n)\n"
        "    assert fn.__doc__, n\n"
        "for n in ['HarvestConfig', 'TrainConfig', 'EvalConfig', 'ExplainConfig']:\n"
        "    assert hasattr(getattr(saelab, n), '__dataclass_fields__'), n\n"
        "try:\n"
        "    saelab.nope\n"
        "    raise SystemExit('no error')\n"
        "except AttributeError:\n"
        "    pass\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_load_model_loads_once_per_spec_and_device(monkeypatch):
    import saelab.activations.models
    import saelab.api

    calls = []

    def fake(spec, device="cpu"):
        calls.append((spec, device))
        return object()

    monkeypatch.setattr(saelab.activations.models, "load_model", fake)
    monkeypatch.setattr(saelab.api, "_MODELS", {})
    first = saelab.api.load_model("smollm2-135m")
    assert saelab.api.load_model("smollm2-135m") is first
    other = saelab.api.load_model("smollm2-135m", device="meta")
    assert other is not first and calls == [("smollm2-135m", "cpu"), ("smollm2-135m", "meta")]
