"""Merge the JSON of :mod:`recipes.jdcl.sequence` runs (``jdcl_mixture.json``, ``jdcl_balanced.json``;
one per seed or several seeds each) into one result, its per-seed markdown table and a figure of
the seed-mean accuracy matrices.

``python -m recipes.jdcl.report a/jdcl_mixture.json b/jdcl_mixture.json --out merged.json --png matrices.png``

>>> run = {"seed": 0, "methods": {"naive": {"matrix": [[1.0, 0.0], [0.0, 1.0]], "average": 0.5, "forgetting": 1.0},
...        "joint": {"matrix": [[1.0, 1.0]], "average": 1.0, "forgetting": None}}}
>>> merged = merge([{"config": {"seeds": [0]}, "runs": [run]}])
>>> merge([merged]) == merged
True
>>> print(markdown(merged))
| seed | method | accuracy on each task after each task | final average | task 1 final | forgetting |
|---|---|---|---|---|---|
| 0 | naive | [1.00 0.00] [0.00 1.00] | 0.500 | 0.000 | 1.000 |
| 0 | joint | [1.00 1.00] | 1.000 | 1.000 | - |
| mean +- std | naive | | 0.500 +- 0.000 | 0.000 +- 0.000 | 1.000 +- 0.000 |
| mean +- std | joint | | 1.000 +- 0.000 | 1.000 +- 0.000 | - |
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["merge", "markdown", "plot"]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every run of ``results`` (sorted by seed; a seed given twice is refused) and their configs;
    a result merged before (``configs``) merges again."""
    if not results:
        raise ValueError("nothing to merge: give at least one JSON written by a JDCL run")
    runs = sorted((r for res in results for r in res["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice in the runs to merge: {seeds}")
    return {"configs": [c for res in results for c in res.get("configs", [res.get("config")])], "runs": runs}


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.3f} +- {statistics.pstdev(values):.3f}"


def markdown(merged: dict[str, Any]) -> str:
    """One row per seed and method (rows of the accuracy matrix in brackets), then mean +- std."""
    lines = [
        "| seed | method | accuracy on each task after each task | final average | task 1 final | forgetting |",
        "|---|---|---|---|---|---|",
    ]
    names = list(merged["runs"][0]["methods"])
    for run in merged["runs"]:
        for name in names:
            m = run["methods"][name]
            rows = " ".join("[" + " ".join(f"{a:.2f}" for a in row) + "]" for row in m["matrix"])
            f = "-" if m["forgetting"] is None else f"{m['forgetting']:.3f}"
            lines.append(f"| {run['seed']} | {name} | {rows} | {m['average']:.3f} | {m['matrix'][-1][0]:.3f} | {f} |")
    for name in names:
        ms = [r["methods"][name] for r in merged["runs"]]
        forgets = [m["forgetting"] for m in ms if m["forgetting"] is not None]
        lines.append(
            f"| mean +- std | {name} | | {_fmt([m['average'] for m in ms])} | "
            f"{_fmt([m['matrix'][-1][0] for m in ms])} | {_fmt(forgets)} |"
        )
    return "\n".join(lines)


def plot(merged: dict[str, Any], path: str | Path, title: str = "") -> None:
    """The seed-mean accuracy matrix of every continual method (and joint training's final row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(merged["runs"][0]["methods"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8))
    for ax, name in zip(axes, names, strict=True):
        mean = np.mean([r["methods"][name]["matrix"] for r in merged["runs"]], axis=0)
        ax.imshow(mean, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(mean):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(mean.shape[1]), [f"task {j + 1}" for j in range(mean.shape[1])], fontsize=7)
        rows = range(mean.shape[0])
        labels = ["final"] if name == "joint" else [f"after {i + 1}" for i in rows]
        ax.set_yticks(rows, labels, fontsize=7)
    fig.suptitle(title or f"seed-mean accuracy ({len(merged['runs'])} seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.jdcl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files written by JDCL runs")
    parser.add_argument("--out", help="merged JSON")
    parser.add_argument("--png", help="figure of the seed-mean accuracy matrices")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    merged = merge([json.loads(Path(p).read_text()) for p in args.results])
    if args.out:
        Path(args.out).write_text(json.dumps(merged, indent=1) + "\n")
    if args.png:
        plot(merged, args.png, args.title)
    print(markdown(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
