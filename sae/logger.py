"""Training metrics: a JSONL file in the output folder, a tqdm bar, optionally wandb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saelab.base.fs import disk_error

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Writes one JSON row per SAE per log step; shows a compact summary on the bar."""

    def __init__(
        self,
        out: Path | None,
        total_tokens: int,
        start_tokens: int,
        enabled: bool = True,
        progress: bool = True,
        wandb_run: Any | None = None,
    ) -> None:
        self.path = out / METRICS_FILE if (out is not None and enabled) else None
        self.wandb = wandb_run
        self.bar = tqdm(
            total=total_tokens,
            initial=start_tokens,
            unit="tok",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not (progress and enabled),
        )

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint (they will be logged again)."""
        if self.path is None or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = [line for line in keep if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def advance(self, tokens: int) -> None:
        self.bar.update(tokens)

    def log(self, rows: list[dict[str, Any]]) -> None:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    for row in rows:
                        f.write(json.dumps(row) + "\n")
            except OSError as err:
                raise disk_error(err, str(self.path)) from None
        if self.wandb is not None:
            for row in rows:
                name = row["sae"]
                self.wandb.log(
                    {f"{name}/{k}": v for k, v in row.items() if isinstance(v, (int, float))},
                    step=row["step"],
                )
        self.bar.set_postfix_str(summary(rows), refresh=False)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def summary(rows: list[dict[str, Any]]) -> str:
    """ "L0 .. FVU .. dead ..%" for one SAE, min-max ranges for a sweep."""
    if not rows:
        return ""

    def span(key: str, fmt: str) -> str:
        vals = [r[key] for r in rows]
        lo, hi = min(vals), max(vals)
        return format(lo, fmt) if len(rows) == 1 or lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"

    return f"L0 {span('l0', '.1f')} FVU {span('fvu', '.3f')} dead {span('dead_pct', '.1f')}%" + (
        f" ({len(rows)} SAEs)" if len(rows) > 1 else ""
    )


def start_wandb(project: str, config: dict[str, Any]) -> Any:
    """Start a wandb run (imported here so wandb stays optional)."""
    import wandb

    return wandb.init(project=project, config=config)
