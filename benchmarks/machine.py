"""Machine and version facts that every benchmark result records."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone


def machine_info() -> dict:
    import torch

    info = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    for pkg in ("transformers", "transformer_lens", "zarr", "numpy", "triton"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            info[pkg] = None
    if torch.cuda.is_available():
        info["gpu"] = _gpu_info(torch)
    return info


def _gpu_info(torch) -> dict:
    """The CUDA device, its driver and the toolkit torch was built with."""
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        driver = (
            subprocess.check_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                text=True,
                stderr=subprocess.DEVNULL,
            )
            .splitlines()[0]
            .strip()
        )
    except Exception:
        pass
    return {
        "name": props.name,
        "driver": driver,
        "cuda": torch.version.cuda,
        "capability": f"{props.major}.{props.minor}",
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str | None:
    try:
        return subprocess.check_output(["git", *args], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return None
