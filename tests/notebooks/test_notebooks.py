"""Every notebook in notebooks/ runs top to bottom on tiny settings, and is committed clean.

The notebooks run in a real Jupyter kernel (nbclient), with SAELAB_NOTEBOOK_SIZE=tiny read by
their parameters cell, from the notebooks folder (as Jupyter would), writing to a temporary
folder. A failing cell fails its notebook's test with the cell's source and the error.
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
    assert [p.name for p in NOTEBOOKS][:2] == ["01_train_saes.ipynb", "02_browse_features.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(book.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("SAELAB_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        failed = next((c for c in book.cells if c.cell_type == "code" and _has_error(c)), None)
        source = failed.source if failed is not None else "(cell not found)"
        pytest.fail(f"{path.name}: a cell failed\n--- cell ---\n{source}\n--- error ---\n{err}")
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")


def _has_error(cell) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def test_import_saelab_is_cheap_and_offers_the_api():
    code = (
        "import sys, saelab\n"
        "assert 'torch' not in sys.modules, 'import saelab pulled in torch'\n"
        "names = ['harvest', 'train', 'evaluate', 'explain', 'load_sae', 'open_results', 'steer', 'circuit']\n"
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


def test_library_packages_never_import_the_command_line_package():
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for pkg in ("activations", "kernels", "sae", "resultstore", "evaluation", "autointerp"):
        for f in (root / pkg).rglob("*.py"):
            text = f.read_text()
            if "import saelab\n" in text or "from saelab." in text or "from saelab import" in text:
                offenders.append(str(f.relative_to(root)))
    assert not offenders, offenders
