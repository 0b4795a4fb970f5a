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
from .metrics import forgetting_difference_interval
from .tasks import Task

__all__ = ["summarise", "table", "plot_matrices", "load_runs", "forgetting_differences", "differences_table"]


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


def forgetting_differences(
    sequences: list[Sequence], n: int, reference: str = "naive", resamples: int = 10_000
) -> dict[str, dict[str, Any]]:
    """Per other method: ``reference``'s forgetting minus its own, per seed and over the seeds' mean,
    each with the 95 % evaluation-noise interval of
    :func:`~.metrics.forgetting_difference_interval` (scores are accuracies over ``n`` images).

    >>> a = Sequence("naive", 0, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    >>> b = Sequence("magmax", 0, [[1.0, 1.0], [0.0, 1.0]], [0.0, 0.0])
    >>> d = forgetting_differences([a, b], n=64)["magmax"]
    >>> d["seeds"], d["difference"], d["mean"]["difference"]
    ([0], [0.5], 0.5)
    """
    import torch

    def matrices(method: str) -> dict[int, torch.Tensor]:
        return {s.seed: torch.tensor(s.scores, dtype=torch.float64) for s in sequences if s.method == method}

    ref = matrices(reference)
    if not ref:
        raise ValueError(
            f"no sequence of the reference method {reference!r} among {sorted({s.method for s in sequences})}"
        )
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(s.method for s in sequences):
        if method == reference:
            continue
        other = matrices(method)
        seeds = [seed for seed in ref if seed in other]
        row: dict[str, Any] = {"seeds": seeds, "difference": [], "low": [], "high": []}
        for seed in seeds:
            d, lo, hi = forgetting_difference_interval(ref[seed], other[seed], n, resamples)
            for key, v in zip(("difference", "low", "high"), (d, lo, hi), strict=True):
                row[key].append(v)
        d, lo, hi = forgetting_difference_interval(
            torch.stack([ref[s] for s in seeds]), torch.stack([other[s] for s in seeds]), n, resamples
        )
        row["mean"] = {"difference": d, "low": lo, "high": hi}
        out[method] = row
    return out


def differences_table(differences: dict[str, dict[str, Any]], reference: str = "naive") -> str:
    """Markdown: per method, the reference's forgetting minus its own per seed and in the mean, with
    the 95 % noise interval; bold where the interval excludes 0."""

    def cell(d: float, lo: float, hi: float) -> str:
        text = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        return f"**{text}**" if lo > 0 or hi < 0 else text

    seeds = next(iter(differences.values()))["seeds"]
    head = f"| {reference} minus | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
    lines = [head, "|---" * (len(seeds) + 2) + "|"]
    for method, row in differences.items():
        cells = [cell(*v) for v in zip(row["difference"], row["low"], row["high"], strict=True)]
        m = row["mean"]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {cell(m['difference'], m['low'], m['high'])} |")
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
