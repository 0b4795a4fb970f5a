"""TADA's localisation on the shapes world (image diffusion: the shipped ``StableDiffusionPipeline``
with a tiny UNet): the same patching as on tones, one row per cross-attention layer of the UNet
(``@cross_attn:input.encoder_hidden_states``), through the pipeline itself; scored by the world's
evaluator CNNs (the mean probability of the clean value, and the share of samples it decides).

Example::

    from recipes.worlds.shapes_model import load_evaluators, load_pipeline
    loc = localize_shapes(load_pipeline(), load_evaluators(), "colour", ("red", "blue"), n=8, steps=10)
    loc.ranking()[:2]  # the UNet's layers where the colour word enters
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from interventions.patching import PatchingTable, patching_sweep

from .plots import plot_localisation

__all__ = ["ShapesLocalisation", "localize_shapes", "shapes_pairs", "run_shapes"]

DEFAULT_VALUES = {"shape": ("circle", "square"), "colour": ("red", "blue"), "style": ("solid", "stripes")}


def shapes_pairs(factor: str, values: tuple[str, str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` random shapes prompts naming ``values[0]`` and the same prompts naming ``values[1]``."""
    from recipes.worlds import shapes as world

    if factor not in world.FACTORS:
        raise ValueError(f"unknown shapes factor {factor!r}; the factors are {', '.join(world.FACTORS)}")
    bad = [v for v in values if v not in world.FACTORS[factor]]
    if bad:
        raise ValueError(f"{factor} has no value {bad[0]!r}; its values are {', '.join(world.FACTORS[factor])}")
    g = torch.Generator().manual_seed(seed)
    f = {k: torch.randint(len(v), (n,), generator=g) for k, v in world.FACTORS.items()}
    tmpl = torch.randint(len(world.TEMPLATES), (n,), generator=g).tolist()
    syn = torch.randint(2, (n, 3), generator=g).tolist()
    out: list[list[str]] = [[], []]
    for i in range(n):
        for j, value in enumerate(values):
            vals = {k: int(f[k][i]) for k in world.FACTORS}
            vals[factor] = world.FACTORS[factor].index(value)
            out[j].append(world.make_prompt(vals["shape"], vals["colour"], vals["style"], tmpl[i], syn[i]))
    return out[0], out[1]


@dataclass
class ShapesLocalisation:
    """Rows: the UNet's cross-attention layers; values: mean evaluator probability of the clean value."""

    factor: str
    values: tuple[str, str]
    seed: int
    patching: PatchingTable
    patched_rate: torch.Tensor
    clean_rate: float
    swapped_rate: float
    ablation: tuple = ()
    ablation_baseline: float = float("nan")

    def recovered(self) -> torch.Tensor:
        return self.patching.normalized()

    @property
    def row_labels(self) -> list[str]:
        """``down_blocks.1.attentions.0`` -> ``down1.0`` (the attention module's block and index)."""
        out = []
        for site in self.patching.sites:
            parts = site.removeprefix("unet.").split(":")[0].split(".")
            block = parts[0].replace("_blocks", "").replace("_block", "")
            idx = [p for p in parts[1:4] if p.isdigit()]
            out.append(block + ".".join(idx))
        return out

    def ranking(self) -> list[int]:
        return [int(i) for i in torch.argsort(self.recovered()[:, 0], descending=True, stable=True)]

    def to_json(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "values": list(self.values),
            "seed": self.seed,
            "layers": list(self.patching.sites),
            "columns": list(self.patching.steps),
            "clean_rate": self.clean_rate,
            "swapped_rate": self.swapped_rate,
            "prob_clean": self.patching.source_value,
            "prob_swapped": self.patching.baseline,
            "recovered": self.recovered().tolist(),
            "patched_rate": self.patched_rate.tolist(),
            "ranking": self.ranking(),
        }


def localize_shapes(
    pipe: Any,
    evaluators: dict[str, Any],
    factor: str,
    values: tuple[str, str],
    *,
    n: int = 16,
    seed: int = 0,
    prompt_seed: int = 100,
    steps: int = 10,
    guidance: float = 3.0,
    progress: bool = False,
) -> ShapesLocalisation:
    """Patch each cross-attention layer's conditioning from the ``values[0]`` prompts into the
    ``values[1]`` prompts (same seed), cond rows, every step."""
    from recipes.worlds import shapes as world

    clean, swapped = shapes_pairs(factor, values, n, prompt_seed)
    target = world.FACTORS[factor].index(values[0])
    net = evaluators[factor]
    rates: list[float] = []

    def run(prompts: list[str]):
        kw = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "pt"}
        return lambda: pipe(prompts, generator=torch.Generator().manual_seed(seed), **kw).images * 2 - 1

    def prob_clean(images: torch.Tensor) -> float:
        with torch.no_grad():
            p = net(images.float()).softmax(-1)
        rates.append(float((p.argmax(-1) == target).float().mean()))
        return float(p[:, target].mean())

    table = patching_sweep(
        pipe,
        ["@cross_attn:input.encoder_hidden_states"],
        run(clean),
        run(swapped),
        prob_clean,
        branch="cond",
        progress=progress,
    )
    cells = torch.tensor(rates[2:]).view(len(table.sites), 1)
    return ShapesLocalisation(factor, values, seed, table, cells, rates[0], rates[1])


def run_shapes(args: argparse.Namespace) -> dict[str, Any]:
    """``--world shapes``: localisation only, per seed, with a heat map."""
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    values = tuple(args.values) if args.values else DEFAULT_VALUES.get(args.concept)
    if values is None:
        raise SystemExit(f"unknown shapes concept {args.concept!r}; choose one of {', '.join(DEFAULT_VALUES)}")
    pipe, evaluators = load_pipeline(), load_evaluators()
    pipe.set_progress_bar_config(disable=True)
    steps = min(args.steps, 10)
    locs = [
        localize_shapes(
            pipe, evaluators, args.concept, values, n=args.n, seed=s, prompt_seed=100 + s, steps=steps, progress=True
        )
        for s in args.seeds
    ]
    plot_localisation(
        locs, args.out / f"tada_shapes_{args.concept}_localisation.png", f"TADA localisation (shapes): {args.concept}"
    )
    return {
        "world": "shapes",
        "concept": args.concept,
        "values": list(values),
        "steps": steps,
        "localisation": [loc.to_json() for loc in locs],
    }
