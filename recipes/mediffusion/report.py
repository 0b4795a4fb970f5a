"""Merge the ``mediffusion.json`` of several runs (one per seed, run in parallel) into one result
and its markdown tables: test accuracy per seed and mode, counterfactual scores per seed.

``python -m recipes.mediffusion.report runs/seed0/mediffusion.json runs/seed1/mediffusion.json --out merged.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["merge", "markdown"]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result with every run and counterfactual score, and the per-mode accuracy summary."""
    if not results:
        raise ValueError("nothing to merge: give at least one mediffusion.json")
    runs = [r for res in results for r in res["runs"]]
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        accs = [r["test_accuracy"] for r in runs if r["mode"] == mode]
        summary[mode] = {
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "per_seed": {str(r["seed"]): r["test_accuracy"] for r in runs if r["mode"] == mode},
        }
    return {
        "configs": [res["config"] for res in results],
        "runs": runs,
        "counterfactuals": [c for res in results for c in res["counterfactuals"]],
        "summary": summary,
    }


def markdown(merged: dict[str, Any]) -> str:
    """Two tables: accuracy (per seed, mean +- std) and counterfactual scores (per seed and scale)."""
    modes = list(merged["summary"])
    seeds = sorted({r["seed"] for r in merged["runs"]})
    lines = ["| mode | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |", "|---" * (len(seeds) + 2) + "|"]
    for m in modes:
        per = merged["summary"][m]["per_seed"]
        cells = [f"{per[str(s)]:.3f}" if str(s) in per else "-" for s in seeds]
        lines.append(
            f"| {m} | "
            + " | ".join(cells)
            + f" | {merged['summary'][m]['mean']:.3f} +- {merged['summary'][m]['std']:.3f} |"
        )
    if merged["counterfactuals"]:
        lines += [
            "",
            "| seed | scale | evaluator: target | evaluator: source | model: target | top-k overlap | vs unguided | chance |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in merged["counterfactuals"]:
            for key, v in c.items():
                if key.startswith("scale_"):
                    lines.append(
                        f"| {c['seed']} | {key[6:]} | {v['evaluator_target_rate']:.3f} | {v['evaluator_source_rate']:.3f} | "
                        f"{v['model_target_rate']:.3f} | {v['top_overlap']:.3f} | "
                        f"{v.get('top_overlap_vs_unguided', float('nan')):.3f} | {v['chance_overlap']:.3f} |"
                    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="mediffusion.json files")
    parser.add_argument("--out", help="write the merged JSON here")
    args = parser.parse_args(argv)
    merged = merge([json.loads(Path(p).read_text()) for p in args.results])
    if args.out:
        Path(args.out).write_text(json.dumps(merged, indent=1) + "\n")
    print(markdown(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
