"""The Python half of `benchmarks/gpu_suite.sh`: the checks, the files and the records it needs.

The shell script runs the steps (each an existing benchmark or test under its own timeout);
this module only answers its questions and writes what no benchmark writes itself:

    python benchmarks/gpu_suite.py cuda                 # exit 0 if torch sees a CUDA device
    python benchmarks/gpu_suite.py missing MOD...       # print the modules that fail to import
    python benchmarks/gpu_suite.py model SRC DST        # random weights from SRC's config.json
    python benchmarks/gpu_suite.py corpus DST           # a text corpus from the repository's files
    python benchmarks/gpu_suite.py shim DIR             # DIR/sitecustomize.py maps saelab.* folders
    python benchmarks/gpu_suite.py pytest OUT.json LOG CONFIG_JSON RC SECONDS
    python benchmarks/gpu_suite.py summary OUT_DIR STEPS.tsv BUDGET_S MODE
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def missing_modules(names: list[str]) -> list[str]:
    """The modules among `names` that cannot be imported here."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    return missing


def random_weight_model(src: Path, dst: Path) -> None:
    """A Hugging Face folder with `src`'s config and tokenizer and random weights.

    Throughput depends on the shapes alone, and the embedded model's weights (a 94 MB GGUF)
    do not fit the 64 MiB that travels to a lent GPU machine; its config and tokenizer do."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dst.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)))
    model.save_pretrained(str(dst))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json"):
            shutil.copy(f, dst / f.name)


def repository_corpus(dst: Path) -> int:
    """A local text corpus (one .txt per source file) from the repository's docs and code:
    the suite's harvest must not need the network or the builtin corpus's download."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(ROOT.glob("**/*")):
        if f.suffix in (".md", ".py") and ".venv" not in f.parts and f.is_file():
            (dst / f"{n:05d}.txt").write_text(f.read_text(errors="replace"))
            n += 1
    return n


SHIM = """# Written by benchmarks/gpu_suite.py: where `pip install -e .` is not possible, map each
# `saelab.<part>` package to its folder at the top of the repository, as the editable install does.
import importlib.util
import sys

_FOLDERS = {folders!r}


class _SaelabFolders:
    @staticmethod
    def find_spec(name, path=None, target=None):
        folder = _FOLDERS.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, folder + "/__init__.py", submodule_search_locations=[folder]
        )


sys.meta_path.insert(0, _SaelabFolders)
"""


def write_import_shim(dst: Path) -> None:
    """`dst/sitecustomize.py`, which makes `saelab.*` importable from this checkout without an
    install: the folders come from pyproject.toml's `package-dir` table."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: str(ROOT / folder) for name, folder in table["package-dir"].items()}
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "sitecustomize.py").write_text(SHIM.format(folders=folders))


def pytest_record(out: Path, log: Path, config: dict, rc: int, seconds: float) -> None:
    """The parity step's JSON: machine, config, and the counts from pytest's summary line."""
    from benchmarks.machine import machine_info

    text = log.read_text(errors="replace") if log.exists() else ""
    counts = {
        word: int(num)
        for num, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)
    }
    failures = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    record = {
        "benchmark": "triton_parity",
        "machine": machine_info(),
        "config": config,
        "returncode": rc,
        "seconds": seconds,
        "counts": counts,
        "failures": failures,
        "passed": rc == 0 and counts.get("passed", 0) > 0 and not failures,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")


def summary(out_dir: Path, steps_tsv: Path, budget_s: float, mode: str) -> dict:
    """One line per step of `steps_tsv` (name, status, seconds, json file, reason) into
    `summary.json`, with the machine and the headline figures of each step's JSON."""
    from benchmarks.machine import machine_info

    steps = []
    for line in steps_tsv.read_text().splitlines():
        name, status, seconds, file, reason = (line.split("\t") + [""] * 5)[:5]
        step = {"name": name, "status": status, "seconds": float(seconds or 0), "json": file}
        if reason:
            step["reason"] = reason
        path = out_dir / file if file else None
        if path and path.exists():
            step["headline"] = _headline(name, json.loads(path.read_text()))
        steps.append(step)
    record = {
        "benchmark": "gpu_suite",
        "mode": mode,
        "budget_s": budget_s,
        "machine": machine_info(),
        "steps": steps,
        "all_ok": all(s["status"] == "ok" for s in steps),
    }
    (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _headline(name: str, r: dict) -> dict:
    """The figures a reader wants first from each step's own JSON."""
    if name == "kernels":
        dec, step = r["decode"], r["train_step"]
        return {
            "decode_speedup": dec["speedup"],
            "decode_fraction_of_floor": dec["fraction_of_floor"],
            "topk_step_speedup": step["topk"]["speedup"],
            "topk_tokens_per_s": step["topk"]["tokens_per_s_sparse"],
            "checks": r.get("checks"),
        }
    if name == "harvest":
        return {
            "harvest_tokens_per_s": r["harvest_tokens_per_s"],
            "harvest_over_bare": r["harvest_over_bare"],
            "loader_activations_per_s": r["loader_activations_per_s"],
            "train_tokens_per_s": r["training_consumption"]["tokens_per_s"],
        }
    if name == "parity":
        return {"passed": r["passed"], "counts": r["counts"]}
    return {}


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "cuda":
        return 0 if cuda_available() else 1
    if cmd == "missing":
        print(" ".join(missing_modules(args)))
        return 0
    if cmd == "model":
        random_weight_model(Path(args[0]), Path(args[1]))
        return 0
    if cmd == "corpus":
        print(repository_corpus(Path(args[0])))
        return 0
    if cmd == "shim":
        write_import_shim(Path(args[0]))
        return 0
    if cmd == "pytest":
        out, log, config, rc, seconds = args
        pytest_record(Path(out), Path(log), json.loads(config), int(rc), float(seconds))
        return 0
    if cmd == "summary":
        out_dir, tsv, budget, mode = args
        record = summary(Path(out_dir), Path(tsv), float(budget), mode)
        for s in record["steps"]:
            print(f"{s['name']:8s} {s['status']:9s} {s['seconds']:6.1f}s {s.get('reason', '')}")
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
