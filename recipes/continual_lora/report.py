"""Summaries of continual runs: per-method means over seeds, a markdown table, the matrices' PNG.

>>> s = Sequence("naive", 0, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
>>> summarise([s])["naive"]["forgetting"]
[0.5]
"""

from __future__ import annotations

import os
from statistics import mean
from typing import Any

from .methods import Sequence
from .tasks import Task

__all__ = ["summarise", "table", "plot_matrices", "load_runs"]


def load_runs(metrics_json: str | os.PathLike[str]) -> list[Sequence]:
    """The sequences a run recorded in its ``metrics.json`` (to merge seeds run in separate processes)."""
    import json
    from pathlib import Path

    record = json.loads(Path(metrics_json).read_text())
    runs = record.get("runs") if isinstance(record, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{metrics_json}: expected a metrics.json of interventions run continual_lora ('runs': [...])")
    return [Sequence(r["method"], r["seed"], r["scores"], r["base"]) for r in runs]


def summarise(sequences: list[Sequence]) -> dict[str, dict[str, Any]]:
    """Per method: the seeds, each seed's final average and forgetting, and their means."""
    out: dict[str, dict[str, Any]] = {}
    for s in sequences:
        row = out.setdefault(s.method, {"seeds": [], "final_average": [], "forgetting": []})
        row["seeds"].append(s.seed)
        row["final_average"].append(s.final_average)
        row["forgetting"].append(s.forgetting)
    for row in out.values():
        row["final_average_mean"] = mean(row["final_average"])
        row["forgetting_mean"] = mean(row["forgetting"])
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per method, per-seed values and the mean."""

    def cells(values: list[float]) -> str:
        return " / ".join(f"{v:.3f}" for v in values) + f" (mean {mean(values):.3f})"

    lines = ["| method | seeds | final average | forgetting |", "|---|---|---|---|"]
    for method, row in summary.items():
        seeds = ", ".join(str(s) for s in row["seeds"])
        lines.append(f"| {method} | {seeds} | {cells(row['final_average'])} | {cells(row['forgetting'])} |")
    return "\n".join(lines)


def plot_matrices(sequences: list[Sequence], tasks: tuple[Task, ...], path: str | os.PathLike[str]) -> None:
    """One heat map per method of the seed-mean score matrix (rows: task, columns: after task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(s.method for s in sequences))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.4), squeeze=False)
    names = [t.identifier for t in tasks]
    for ax, method in zip(axes[0], methods, strict=True):
        runs = [s for s in sequences if s.method == method]
        S = np.mean([np.array(s.scores) for s in runs], axis=0)
        ax.imshow(S, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", color="w" if S[i, j] < 0.6 else "k")
        fa, fg = mean(s.final_average for s in runs), mean(s.forgetting for s in runs)
        ax.set_title(f"{method}\navg {fa:.2f}, forget {fg:.2f} ({len(runs)} seeds)", fontsize=9)
        ax.set_xticks(range(len(tasks)), names, fontsize=8)
        ax.set_yticks(range(len(tasks)), names, fontsize=8)
        ax.set_xlabel("after task")
    axes[0][0].set_ylabel("scored task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
