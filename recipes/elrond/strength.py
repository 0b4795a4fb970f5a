"""The random-steering strength range of the student experiment, chosen on selection seeds only.

The rule, fixed before it was run: the range is ``U[s/2, s]`` (the CLI's shape); for each candidate
``s`` the student's prompt agreement, steered minus unsteered from the same noise, is pooled over
the selection seeds (never the held-out 101-103); the chosen ``s`` is the largest whose pooled
drop is at most ``budget`` points on every prompt. The default budget, 2.5 points, is half of the
issue's 5-point limit: the other half is left to the sampling error of one held-out seed of 64
samples (about 3 points). Directions, signs and the uniform draws are the same for every ``s``
(only the scale changes), so the candidates differ by strength alone::

    python -m recipes.elrond.strength --seeds 100 104 105 --n 128 --out recipes/results/elrond_strength_selection.json

>>> choose({"a": {4.0: -1.0, 6.0: -2.0, 8.0: -4.0}, "b": {4.0: 0.0, 6.0: -3.0, 8.0: 0.0}}, budget=2.5)
4.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interventions.subspace import pca

from .collapse import evaluator_features, mean_pairwise_distance
from .experiment import gradients, predict_factors, prompt_agreement
from .gradients import Setting, concept_position, embed
from .steer import add_at_token, random_steering
from .student import student_sample

__all__ = ["STUDENT_STRENGTH", "strength_sweep", "pooled_drop", "choose", "main"]

# What the rule chose on seeds 100, 104, 105 (128 samples each; recipes/results/elrond_strength_selection.json):
# pooled drops for "a striped circle" -0.8 / -1.0 / -1.6 / -3.4 / -3.6 points at s = 4 / 5 / 6 / 7 / 8.
STUDENT_STRENGTH = 6.0


def strength_sweep(
    student: Any,
    pipe: Any,
    evaluators: dict[str, Any],
    prompt: str,
    directions: Tensor,
    tops: list[float],
    n: int,
    seed: int,
) -> dict[str, Any]:
    """Agreement and evaluator-feature distance of ``n`` student samples of ``seed``, unsteered and
    randomly steered at ``U[s/2, s]`` for every ``s`` in ``tops`` (same noise, directions, signs)."""
    position = concept_position(pipe.tokenizer, prompt)
    cond, _ = embed(pipe, prompt, n)
    noise = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    picked, unit = random_steering(n, directions, 0.5, 1.0, torch.Generator().manual_seed(seed))

    def describe(strengths: Tensor) -> dict[str, float]:
        images = student_sample(student, add_at_token(cond, position, picked, strengths), noise)
        return {
            "agreement": round(prompt_agreement(predict_factors(evaluators, images), prompt), 4),
            "feature_distance": round(mean_pairwise_distance(evaluator_features(evaluators, images)), 4),
        }

    out = {"unsteered": describe(torch.zeros(n))}
    for s in tops:
        out[str(s)] = describe(unit * s)  # unit ~ sign * U[0.5, 1]: strengths ~ U[s/2, s]
    return out


def pooled_drop(runs: dict[int, dict[str, Any]], key: str) -> float:
    """Agreement of ``key`` minus the unsteered one, in points, averaged over the seeds' runs."""
    return round(100 * sum(r[key]["agreement"] - r["unsteered"]["agreement"] for r in runs.values()) / len(runs), 2)


def choose(drops: dict[str, dict[float, float]], budget: float = 2.5) -> float:
    """The largest ``s`` whose pooled agreement drop (points, negative = worse) is within ``budget``
    on every prompt; the smallest candidate when none is."""
    tops = sorted(next(iter(drops.values())))
    ok = [s for s in tops if all(d[s] >= -budget for d in drops.values())]
    return max(ok) if ok else tops[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.elrond.strength", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", action="append", help="default: 'a striped circle' and 'a circle'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 104, 105], help="selection noise seeds")
    ap.add_argument("--tops", type=float, nargs="+", default=[4.0, 5.0, 6.0, 7.0, 8.0])
    ap.add_argument("--n", type=int, default=128, help="samples per seed")
    ap.add_argument("--grad-seed", type=int, default=0)
    ap.add_argument("--n-grads", type=int, default=128)
    ap.add_argument("--budget", type=float, default=2.5)
    ap.add_argument("--work", type=Path, default=Path("runs/elrond_strength"), help="gradient DiskStores")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if any(s in (101, 102, 103) for s in args.seeds):
        raise SystemExit("python -m recipes.elrond.strength: seeds 101-103 are held out; choose on other seeds")
    torch.set_num_threads(1)
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    from .student import load_student

    pipe, student, evaluators = load_pipeline(), load_student(), load_evaluators()
    start, result = time.time(), {"seeds": args.seeds, "n": args.n, "tops": args.tops, "budget": args.budget}
    drops: dict[str, dict[float, float]] = {}
    for prompt in args.prompt or ["a striped circle", "a circle"]:
        folder = args.work / "_".join(prompt.split()) / f"seed{args.grad_seed}"
        grads = gradients(pipe, prompt, args.n_grads, args.grad_seed, folder, Setting())
        pcs = pca(grads)[0][:4]
        runs = {s: strength_sweep(student, pipe, evaluators, prompt, pcs, args.tops, args.n, s) for s in args.seeds}
        drops[prompt] = {s: pooled_drop(runs, str(s)) for s in args.tops}
        result[prompt] = {"per_seed": runs, "agreement_drop_points": drops[prompt]}
        print(prompt, drops[prompt], flush=True)
    result["chosen_top"] = choose(drops, args.budget)
    result["seconds"] = round(time.time() - start, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"chosen: U[{result['chosen_top'] / 2:g}, {result['chosen_top']:g}]; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
