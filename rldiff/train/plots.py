"""PNG curves of the training metrics (matplotlib's Agg canvas; no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVES = ("reward", "kl", "loss")


def plot_curves(
    entries: Sequence[dict[str, Any]], out_dir: Path, names: Sequence[str] = CURVES
) -> list[Path]:
    """Plot each named metric against the step, one PNG per metric that was logged.

    Args:
        entries: `metrics.jsonl` entries (`rldiff.train.logging.read_metrics`).
        out_dir: Folder for the PNGs (created if missing), e.g. `<run_dir>/plots`.
        names: Metrics to plot; names never logged are skipped.

    Returns:
        The written files, `<out_dir>/<name>.png`, in the order of `names`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # slow import: only when plotting
    from matplotlib.figure import Figure

    written = []
    for name in names:
        points = [(e["step"], e[name]) for e in entries if name in e]
        if not points:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(5, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None)
        ax.set_xlabel("update")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        written.append(path)
    return written
