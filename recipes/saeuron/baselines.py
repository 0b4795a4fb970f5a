"""The two baselines at stronger and weaker settings, so that SAeUron can be compared at comparable UA.

At the recipe's settings the negative prompt removes nothing here (UA ~0) and whole-block ablation
removes much but breaks everything else. This sweeps each along its one knob, on the same canonical
prompts and seeds as the recipe's evaluation:

- the negative prompt (the removed concept's word as the pipeline's negative prompt) at a higher
  guidance scale: ``eps = eps_neg + g (eps_cond - eps_neg)`` pushes harder away from the negative
  prompt as ``g`` grows (the recipe samples at ``g = 3``);
- block ablation at a fraction ``a`` of the way to the block's per-step mean output
  (``h <- (1 - a) h + a mean_t``; ``a = 1`` is the recipe's baseline), both CFG branches.

::

    python -m recipes.saeuron.baselines --kind style --seeds 1005 1006 1007 --out baselines.json   # ~8 min a seed, one thread
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interventions import Patch, When
from recipes.worlds import shapes as world

from . import concepts as cs
from .recipe import CHECKPOINT, SAeUron
from .sampling import generate
from .train import SELECTION_SEEDS
from .unlearn import negative_prompt

__all__ = ["GUIDANCES", "FRACTIONS", "partial_block_ablation", "sweep_baselines", "summarise_baselines", "main"]

#: the settings of recipes/results/README.md's table (the recipe itself: guidance 3, fraction 1)
GUIDANCES = (6.0, 12.0, 24.0, 48.0)
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def partial_block_ablation(site: str, step_means: torch.Tensor, fraction: float) -> dict[str, Any]:
    """Hooks moving the block's output ``fraction`` of the way to its per-step mean
    (``step_means [steps, channels]``), both CFG branches; 1 is :func:`.unlearn.block_ablation`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return {site: [Patch(m.view(1, -1, 1, 1), alpha=fraction, when=When(steps=[t])) for t, m in enumerate(step_means)]}


def sweep_baselines(
    model: SAeUron,
    kind: str,
    seeds: list[int],
    guidances: tuple[float, ...] = GUIDANCES,
    fractions: tuple[float, ...] = FRACTIONS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """UA / IRA / CRA of every single removal of ``kind`` for each baseline setting and seed."""
    cs.check_kind(kind)
    prompts = cs.canonical()
    sae, stats = model.saes[kind]
    rows: list[dict[str, Any]] = []
    total = len(seeds) * (len(guidances) * len(world.FACTORS[kind]) + len(fractions))
    bar = tqdm(total=total, desc=f"{kind} baselines", disable=not progress)
    for seed in seeds:
        for g in guidances:
            for c in world.FACTORS[kind]:
                sampling = replace(model.sampling, guidance=g)
                images = generate(model.pipe, prompts.prompts, seed, sampling, None, negative_prompt((c,)))
                m = model.metrics(images, prompts, (c,))
                rows.append({"seed": seed, "method": "negative_prompt", "guidance": g, "remove": [c], **m})
                bar.update(1)
        for a in fractions:
            images = _generate_ablated(model, prompts, seed, sae.info.site, stats.block_means, a)
            for c in world.FACTORS[kind]:
                m = model.metrics(images, prompts, (c,))
                rows.append({"seed": seed, "method": "block_ablation", "fraction": a, "remove": [c], **m})
            bar.update(1)
    bar.close()
    return rows


def _generate_ablated(
    model: SAeUron, prompts: cs.PromptSet, seed: int, site: str, step_means: torch.Tensor, fraction: float
) -> torch.Tensor:
    """Images with the block moved ``fraction`` of the way to its mean (same noise as the recipe)."""
    return generate(
        model.pipe, prompts.prompts, seed, model.sampling, partial_block_ablation(site, step_means, fraction)
    )


def summarise_baselines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean UA / IRA / CRA over removals, per setting: per seed and over seeds.

    >>> run = {"seed": 1, "method": "negative_prompt", "guidance": 6.0, "UA": 0.5, "IRA": 1.0, "CRA": 1.0}
    >>> summarise_baselines([run, run | {"UA": 0.0}])[0]["mean"]
    {'UA': 0.25, 'IRA': 1.0, 'CRA': 1.0}
    """
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], r.get("guidance", r.get("fraction")))
        entry = out.setdefault(key, {"method": key[0], "setting": key[1], "per_seed": {}})
        entry["per_seed"].setdefault(r["seed"], []).append(r)
    for entry in out.values():
        per = {
            s: {m: round(sum(r[m] for r in g) / len(g), 4) for m in ("UA", "IRA", "CRA")}
            for s, g in entry["per_seed"].items()
        }
        entry["per_seed"] = per
        entry["mean"] = {m: round(sum(p[m] for p in per.values()) / len(per), 4) for m in ("UA", "IRA", "CRA")}
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.saeuron.baselines", description=__doc__.split("\n")[0])
    p.add_argument("--kind", required=True, choices=sorted(world.FACTORS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1005, 1006, 1007])
    p.add_argument("--guidances", type=float, nargs="+", default=list(GUIDANCES))
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--sae", default=str(CHECKPOINT))
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if set(args.seeds) & set(SELECTION_SEEDS):
        p.error(f"seeds {sorted(set(args.seeds) & set(SELECTION_SEEDS))} selected the features; use others")
    bad = [a for a in args.fractions if not 0.0 < a <= 1.0]
    if bad:
        p.error(f"--fractions must lie in (0, 1], got {bad}")
    if not (Path(args.sae) / args.kind).is_dir():
        p.error(f"no SAE for {args.kind} in {args.sae} (one subfolder per kind)")
    torch.set_num_threads(args.threads)
    model = SAeUron.shipped(None, args.sae)
    rows = sweep_baselines(model, args.kind, args.seeds, tuple(args.guidances), tuple(args.fractions))
    summary = summarise_baselines(rows)
    for e in summary:
        m = e["mean"]
        per = " ; ".join(f"{s['UA']:.2f}/{s['IRA']:.2f}/{s['CRA']:.2f}" for s in e["per_seed"].values())
        print(f"{e['method']:16s} {e['setting']:>5} UA {m['UA']:.3f} IRA {m['IRA']:.3f} CRA {m['CRA']:.3f} ({per})")
    if args.out:
        command = "python -m recipes.saeuron.baselines " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out).write_text(json.dumps({"command": command, "summary": summary, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
