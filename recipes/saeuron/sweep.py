"""Choose SAeUron's percentile and multiplier per kind on the selection seeds (never the held-out ones).

    python -m recipes.saeuron.sweep --kind shape --percentiles 99 99.5 --multipliers -1 --gates 0.3 0.5 0.7 --out sweep_shape.json
    python -m recipes.saeuron.sweep --kind style --percentiles 100 --multipliers -1 --strengths 15 18 21

For each grid point, every single concept of the kind is removed on the canonical prompts of
each selection seed; the table gives mean UA / IRA / CRA (and every run's numbers). The defaults in
:data:`recipes.saeuron.recipe.DEFAULTS` and ``REDIRECT`` were chosen from such tables
(recipes/results/README.md says by which rule); a gate of 0 is the paper's ungated edit, a strength
of 0 the paper's edit without redirection.
"""

from __future__ import annotations

import argparse
import json
from itertools import product
from pathlib import Path

import torch

from recipes.worlds import shapes as world

from . import concepts as cs
from .recipe import CHECKPOINT, SAeUron
from .train import SELECTION_SEEDS

__all__ = ["sweep", "main"]


def sweep(
    model: SAeUron,
    kind: str,
    percentiles: list[float],
    multipliers: list[float],
    seeds: list[int],
    gates: tuple[float, ...] = (0.0,),
    strengths: tuple[float, ...] = (0.0,),
) -> list[dict]:
    """Mean UA / IRA / CRA over the kind's single removals and ``seeds`` for each grid point."""
    prompts = cs.canonical()
    refs = {seed: model.generate(prompts, seed) for seed in seeds}
    rows = []
    for pct, mult, gate, strength in product(percentiles, multipliers, gates, strengths):
        got = []
        for seed in seeds:
            for c in world.FACTORS[kind]:
                images = model.generate(prompts, seed, "saeuron", (c,), pct, mult, gate, strength)
                got.append(model.metrics(images, prompts, (c,), refs[seed]))
        mean = {m: sum(g[m] for g in got) / len(got) for m in ("UA", "IRA", "CRA", "distance")}
        rows.append({"percentile": pct, "multiplier": mult, "gate": gate, "strength": strength, **mean, "runs": got})
        each = " ".join(f"{g['UA']:.2f}/{g['IRA']:.2f}/{g['CRA']:.2f}" for g in got)
        print(
            f"{pct:g} {mult:g} {gate:g} {strength:g} "
            + " ".join(f"{m} {mean[m]:.3f}" for m in mean)
            + f" (per run: {each})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.saeuron.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--kind", required=True, choices=sorted(world.FACTORS))
    p.add_argument("--percentiles", type=float, nargs="+", default=[99.0, 99.5, 99.8])
    p.add_argument("--multipliers", type=float, nargs="+", default=[-1.0, -3.0])
    p.add_argument("--gates", type=float, nargs="+", default=[0.0], help="presence gates (0: none, the paper)")
    p.add_argument(
        "--strengths", type=float, nargs="+", default=[0.0], help="redirection strengths (0: the paper's edit)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=SELECTION_SEEDS)
    p.add_argument("--sae", default=str(CHECKPOINT))
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SAeUron.shipped(None, args.sae)
    rows = sweep(
        model, args.kind, args.percentiles, args.multipliers, args.seeds, tuple(args.gates), tuple(args.strengths)
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "grid": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
