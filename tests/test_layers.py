"""Imports point only down the layers, and the results store imports without torch.

Read from the source (every `import` statement, at any depth, of every module), so a lazy
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each package may import the packages of earlier layers only; a layer's members not each other.
LAYERS = [
    ["saelab_base", "saelab_kernels"],
    ["activations", "resultstore"],
    ["sae"],
    ["evaluation"],
    ["autointerp"],
    ["circuits"],
    ["app"],
    ["saelab"],
]
ISOLATED = {"saelab_kernels"}  # imports nothing from the project
PACKAGES = [p for layer in LAYERS for p in layer]


def project_imports(package: str) -> dict[str, set[str]]:
    """{imported project package: the files importing it}."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_imports_point_only_down():
    upward = []
    for rank, layer in enumerate(LAYERS):
        allowed = {p for below in LAYERS[:rank] for p in below}
        for package in layer:
            for target, files in project_imports(package).items():
                if package in ISOLATED or target not in allowed:
                    upward.append(f"{package} -> {target} ({', '.join(sorted(files))})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_results_store_imports_without_torch():
    code = "import sys, resultstore; print('torch' in sys.modules, 'sae' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
