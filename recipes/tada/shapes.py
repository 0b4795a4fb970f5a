"""TADA on the shapes world (image diffusion: the shipped ``StableDiffusionPipeline`` with a tiny
UNet). Localisation: the same patching as on tones, one row per cross-attention layer of the UNet
(``@cross_attn:input.encoder_hidden_states``), through the pipeline itself; scored by the world's
evaluator CNNs (the mean probability of the clean value, and the share of samples it decides).
Steering: :class:`ShapesModel` gives the pipeline the parts TADA's functions ask a model for, so
:func:`~recipes.tada.caa.caa_vectors` and :func:`~recipes.tada.caa.caa_curve` run on it
unchanged (the UNet's ``attn2`` outputs, the pipeline's ``[uncond, cond]`` CFG batch).

Example::

    from recipes.worlds.shapes_model import load_evaluators, load_pipeline
    loc = localize_shapes(load_pipeline(), load_evaluators(), "colour", ("red", "blue"), n=8, steps=10)
    loc.ranking()[:2]  # the UNet's layers where the colour word enters
    model = ShapesModel(load_pipeline(), load_evaluators())
    v = caa_vectors(model, "shape", ("square", "circle"), [3], n=8, steps=10, templates=(0, 1))
    caa_curve(model, v, [2, 4], n=8, steps=10, templates=(2,))  # square prompts drawn as circles?
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from interventions.patching import PatchingTable, patching_sweep

from .plots import plot_localisation
from .tones import PromptPair, index_in

__all__ = ["ShapesLocalisation", "ShapesModel", "localize_shapes", "shapes_pairs", "run_shapes"]

SHAPES_CHECKPOINT = "recipes/worlds/checkpoints/shapes"
DEFAULT_VALUES = {"shape": ("circle", "square"), "colour": ("red", "blue"), "style": ("solid", "stripes")}


def shapes_pairs(
    factor: str, values: tuple[str, str], n: int, seed: int, templates: Sequence[int] = (0, 1, 2)
) -> tuple[list[str], list[str]]:
    """``n`` random shapes prompts (of ``templates``) naming ``values[0]`` and the same prompts
    naming ``values[1]``."""
    from recipes.worlds import shapes as world

    if factor not in world.FACTORS:
        raise ValueError(f"unknown shapes factor {factor!r}; the factors are {', '.join(world.FACTORS)}")
    bad = [v for v in values if v not in world.FACTORS[factor]]
    if bad:
        raise ValueError(f"{factor} has no value {bad[0]!r}; its values are {', '.join(world.FACTORS[factor])}")
    g = torch.Generator().manual_seed(seed)
    f = {k: torch.randint(len(v), (n,), generator=g) for k, v in world.FACTORS.items()}
    tmpl = torch.tensor(list(templates))[torch.randint(len(templates), (n,), generator=g)].tolist()
    syn = torch.randint(2, (n, 3), generator=g).tolist()
    out: list[list[str]] = [[], []]
    for i in range(n):
        for j, value in enumerate(values):
            vals = {k: int(f[k][i]) for k in world.FACTORS}
            vals[factor] = world.FACTORS[factor].index(value)
            out[j].append(world.make_prompt(vals["shape"], vals["colour"], vals["style"], tmpl[i], syn[i]))
    return out[0], out[1]


@dataclass
class ShapesModel:
    """The shapes pipeline as a TADA model (what :mod:`recipes.tada.tones` asks a model for): sites
    are the UNet's cross-attention layers (``unet.**.attn2``, in the localisation's row order), the
    pipeline's adapter knows its CFG rows, and the evaluator CNNs judge every factor."""

    pipe: Any
    evaluators: dict[str, Any]
    cfg: ClassVar[tuple[str, ...] | None] = None  # attach's pipeline adapter knows [uncond, cond]

    def __post_init__(self) -> None:
        self._sites = [f"unet.{name}" for name, _ in self.pipe.unet.named_modules() if name.endswith("attn2")]

    @property
    def transformer(self) -> Any:
        return self.pipe

    def block_count(self) -> int:
        return len(self._sites)

    def cross_attn_inputs(self, layer: int) -> str:
        return f"{self._sites[layer]}:input.encoder_hidden_states"

    def cross_attn_output(self, layer: int) -> str:
        return self._sites[layer]

    def value_index(self, factor: str, value: str | int) -> int:
        from recipes.worlds import shapes as world

        return index_in(world.FACTORS, "shapes", factor, value)

    def prompt_pairs(
        self, factor: str, values: tuple[str, str], n: int, seed: int, templates: Sequence[int]
    ) -> list[PromptPair]:
        clean, swapped = shapes_pairs(factor, values, n, seed, templates)
        return [PromptPair(c, s, {}) for c, s in zip(clean, swapped, strict=True)]

    def random_prompts(self, n: int, seed: int) -> list[str]:
        from recipes.worlds import shapes as world

        return world.sample(n, torch.Generator().manual_seed(seed)).prompts

    @torch.no_grad()
    def sample_prompts(self, prompts: list[str], seed: int, *, steps: int, guidance: float) -> torch.Tensor:
        kw = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "pt"}
        return self.pipe(prompts, generator=torch.Generator().manual_seed(seed), **kw).images * 2 - 1

    @torch.no_grad()
    def read(self, images: torch.Tensor, factor: str | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The evaluators' value per factor and, for ``factor``, its last minus first value's probability."""
        probs = {k: net(images.float()).softmax(-1) for k, net in self.evaluators.items()}
        margin = probs[factor][:, -1] - probs[factor][:, 0] if factor else torch.zeros(len(images))
        return {k: p.argmax(-1) for k, p in probs.items()}, margin


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
    """``--world shapes``: localisation per seed with a heat map, then (unless ``--no-steer``) CAA
    from ``values[1]`` to ``values[0]`` (the clean value) at the localised layers vs all layers,
    through :func:`recipes.tada.run.run_caa` as on tones."""
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
    out: dict[str, Any] = {
        "world": "shapes",
        "concept": args.concept,
        "values": list(values),
        "steps": steps,
        "localisation": [loc.to_json() for loc in locs],
    }
    if args.no_steer:
        return out
    from .run import pick_layers, run_caa

    model = ShapesModel(pipe, evaluators)
    if [model.cross_attn_inputs(i) for i in range(model.block_count())] != list(locs[0].patching.sites):
        raise RuntimeError("the UNet's attn2 order differs from the localisation's rows; report this as a bug")
    layers = list(args.layers) if args.layers else pick_layers(locs)
    out["localised_layers"] = layers
    common = {"steps": steps, "guidance": args.guidance}
    neg_pos = (values[1], values[0])
    out.update(
        run_caa(model, args, f"tada_shapes_{args.concept}", args.concept, neg_pos, layers, common, SHAPES_CHECKPOINT)
    )
    out["cpu_seconds_total"] = round(time.process_time(), 1)  # this process's CPU time (the machine is shared)
    return out
