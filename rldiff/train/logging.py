"""Where metrics go: `metrics.jsonl` (always), TensorBoard and Weights & Biases (optional).

Every line of `metrics.jsonl` is one JSON object `{"step": N, name: value, ...}` where `step` is the
number of updates completed; training metrics have plain names (`reward`, `kl`, `loss`) and
evaluation metrics are prefixed `eval/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Write metrics to `metrics.jsonl`, TensorBoard and optionally W&B.

    Use as a context manager. A logger with `enabled=False` (a non-main process) writes nothing.

    Args:
        run_dir: The run directory.
        tensorboard: Write TensorBoard events into `<run_dir>/tensorboard/`.
        wandb_project: W&B project to log to, or None for no W&B (wandb is imported only then).
        config: The resolved recipe, recorded as the W&B run config.
        resume_step: When resuming, the step of the checkpoint resumed from: TensorBoard events
            after it (from the interrupted run) are purged. None for a fresh run.
        enabled: False on processes that must not write.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool,
        wandb_project: str | None,
        config: Mapping[str, Any],
        resume_step: int | None = None,
        enabled: bool = True,
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._writer = None
        self._wandb_run = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge)
        if wandb_project is not None:
            import wandb

            run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
            self._wandb_run = wandb.init(
                project=wandb_project,
                name=Path(run_dir).name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=dict(config),
            )
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalar metrics for `step` (updates completed).

        Args:
            step: Updates completed.
            metrics: Metric names to values; names not starting with `eval/` are logged to
                TensorBoard and W&B as `train/<name>`.
        """
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        tagged = {
            (name if name.startswith("eval/") else f"train/{name}"): value
            for name, value in metrics.items()
        }
        if self._writer is not None:
            for tag, value in tagged.items():
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(tagged, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> MetricsLogger:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a `metrics.jsonl`, oldest first; a torn last line (killed run) is skipped.

    Args:
        path: The `metrics.jsonl` file; a missing file has no entries.

    Returns:
        One dict per line.
    """
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the entries logged after `step` (and any torn line), rewriting the file atomically.

    Args:
        path: The `metrics.jsonl` file.
        step: The step of the checkpoint being resumed from.

    Returns:
        The number of entries kept.
    """
    path = Path(path)
    kept = [entry for entry in read_metrics(path) if entry["step"] <= step]
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


def write_summary(
    path: Path,
    *,
    description: str,
    command: str,
    step: int,
    train_metrics: Mapping[str, float],
    eval_metrics: Mapping[str, float],
    plots: list[Path],
) -> None:
    """Write `summary.md`: what ran, how to rerun it, the final metrics and the plots.

    Args:
        path: Where to write (`<run_dir>/summary.md`).
        description: The recipe's description.
        command: The command line that started the run.
        step: Updates completed.
        train_metrics: The last update's metrics.
        eval_metrics: The final evaluation's metrics ({} if none).
        plots: PNG files to link, relative links are made from `path`'s folder.
    """
    lines = [
        "# Run summary",
        "",
        description,
        "",
        "```",
        command,
        "```",
        "",
        f"Updates completed: {step}",
        "",
        "## Final training metrics",
        "",
        *_table(train_metrics),
    ]
    if eval_metrics:
        lines += ["", "## Final evaluation", "", *_table(eval_metrics)]
    if plots:
        lines += ["", "## Curves", ""]
        lines += [f"![{p.stem}]({p.relative_to(path.parent).as_posix()})" for p in plots]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _table(metrics: Mapping[str, float]) -> list[str]:
    rows = ["| metric | value |", "| --- | --- |"]
    rows += [f"| {name} | {_number(value)} |" for name, value in metrics.items()]
    return rows


def _number(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)
