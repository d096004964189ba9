"""The house rules: one `saelab.*` namespace, imports that point only down the layers (entry
points and lazy imports included), no import circle, and a results store without torch.

Read from the source (every `import` statement at any depth, every string naming a project
module, every entry point in pyproject.toml), so a lazy import inside a function counts as much
as one at the top, and a plugin hook cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]

# Each part may import the parts of earlier layers only; members of a layer not each other.
# A part is `saelab.<part>` (its folder at the top of the repository); "saelab" is the command
# line and `import saelab` itself (the folder saelab/: cli, commands, api, results).
LAYERS = [
    ["base", "kernels"],
    ["activations", "resultstore"],
    ["sae"],
    ["evaluation"],
    ["steering"],
    ["autointerp"],
    ["circuits"],
    ["app"],
    ["saelab"],
]
ISOLATED = {"kernels"}  # imports nothing of the project
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}
OLD_TOP_LEVEL = {
    "activations", "resultstore", "sae", "evaluation", "steering", "autointerp", "circuits",
    "app", "base", "kernels", "saelab_base", "saelab_kernels",
}  # fmt: skip
"""Names the parts once had (or would have) as top-level packages: never imported bare."""


def folder_of(part: str) -> Path:
    return ROOT / PACKAGE_DIR["saelab" if part == "saelab" else f"saelab.{part}"]


def module_files() -> dict[str, Path]:
    """Every project module by its dotted name."""
    found = {}
    for package, folder in PACKAGE_DIR.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "saelab" and parts and f"saelab.{parts[0]}" in PACKAGE_DIR:
                continue
            found[".".join([package, *parts])] = path
    return found


MODULES = module_files()


def part_of(module: str) -> str | None:
    """The part a `saelab...` module belongs to (None: not the project's)."""
    names = module.split(".")
    if names[0] != "saelab":
        return None
    if len(names) > 1 and f"saelab.{names[1]}" in PACKAGE_DIR:
        return names[1]
    return "saelab"


def resolve(module: str, name: str | None = None) -> str:
    """`from module import name`: the submodule when `name` is one, else the module."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def imports_of(path: Path) -> set[str]:
    """Project modules `path` imports: import statements at any depth, and string constants
    that name a dotted project module exactly (lazy maps such as `saelab.__init__._EXPORTS`)."""
    out = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {resolve(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.split(":")[0]
            if "." in name and name in MODULES:
                out.add(name)
    return {m for m in out if part_of(m)}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def entry_point_edges() -> list[tuple[str, str, str]]:
    """(consumer module, target module, group) for each entry point in pyproject.toml: the
    module that loads the group (`entry_points(group=...)`) depends on what it loads."""
    consumers: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "entry_points":
                for kw in node.keywords:
                    if kw.arg == "group" and isinstance(kw.value, ast.Constant):
                        consumers.setdefault(kw.value.value, set()).add(name)
    edges = []
    groups = {**PYPROJECT["project"].get("entry-points", {})}
    for group, targets in groups.items():
        for target in targets.values():
            module = target.split(":")[0]
            for consumer in consumers.get(group, ()):
                edges.append((consumer, module, group))
    return edges


def test_imports_point_only_down():
    upward = []
    edges = [(m, t, "import") for m, targets in GRAPH.items() for t in targets]
    edges += entry_point_edges()
    for module, target, how in edges:
        source, dest = part_of(module), part_of(target)
        if source == dest:
            continue
        if source in ISOLATED or RANK[dest] >= RANK[source]:
            upward.append(f"{module} -> {target} ({how})")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    """Tarjan's strongly connected components over the module graph: every one a single
    module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not circles, "import circles:\n" + "\n".join(", ".join(c) for c in circles)


def _python_files() -> list[Path]:
    skip = {".venv", ".git", "build", "runs", "node_modules"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def _imported(tree: ast.AST) -> list[str]:
    """Modules a tree imports, code in string constants (a subprocess's `-c` script) included."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "import " in node.value:
                try:
                    names += _imported(ast.parse(node.value))
                except SyntaxError:
                    pass
    return names


def test_no_bare_top_level_imports_of_the_parts():
    """Every part is `saelab.<part>`, in the project, its tests, benchmarks and notebooks."""
    bad = []
    for path in _python_files():
        if path == Path(__file__).resolve():
            continue  # its checks import bare names on purpose (a user's files, HF's kernels)
        names = _imported(ast.parse(path.read_text(), str(path)))
        bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in OLD_TOP_LEVEL]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        text = nb.read_text()
        bad += [
            f"{nb.name}: {n}"
            for n in OLD_TOP_LEVEL
            if f"from {n}." in text or f"import {n}\\n" in text
        ]
    assert not bad, "\n".join(bad)


def test_pyproject_lists_every_package_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert listed == on_disk, f"missing: {on_disk - listed}; not on disk: {listed - on_disk}"
    assert set(PACKAGE_DIR) == {f"saelab.{p}" for p in RANK if p != "saelab"} | {"saelab"}


def test_results_store_imports_without_torch():
    code = (
        "import sys, saelab.resultstore; print('torch' in sys.modules, 'saelab.sae' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


@pytest.fixture
def clashing_folder(tmp_path):
    """A working directory whose files carry the parts' plain names (a user's notebook folder)."""
    for name in ("app", "sae", "evaluation", "kernels", "circuits", "activations", "base"):
        (tmp_path / f"{name}.py").write_text(
            f"raise SystemExit('the user file {name}.py was imported')\n"
        )
    return tmp_path


def test_every_part_imports_beside_files_with_the_same_names(clashing_folder):
    packages = sorted(PYPROJECT["tool"]["setuptools"]["packages"])
    code = (
        "import importlib, sys\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    print(name, module.__file__)\n"
        "import saelab.app.server, saelab.app.db\n"
        "from saelab.evaluation.registry import catalogue\n"
        "assert catalogue()\n"
        "import saelab\n"
        "assert saelab.make_config('topk', k=8).k == 8\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=clashing_folder, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in done.stdout.splitlines():
        name, file = line.split()
        assert str(clashing_folder) not in file, line


def test_the_repository_root_never_shadows_an_installed_package():
    """Python started in the repository root has the root first on sys.path, so the folder
    `kernels/` is found under its own name; it hands that name to Hugging Face's `kernels`
    (which transformers imports), and a model loads."""
    code = (
        "import importlib.metadata, sys\n"
        "try:\n"
        "    import kernels\n"
        "    assert 'site-packages' in kernels.__file__, kernels.__file__\n"
        "except ModuleNotFoundError:\n"
        "    importlib.metadata.version('kernels')  # raises: not installed, as it should\n"
        "import saelab.kernels\n"
        "assert hasattr(saelab.kernels, 'sparse_decode')\n"
        "assert sys.modules['kernels'] is not saelab.kernels\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
