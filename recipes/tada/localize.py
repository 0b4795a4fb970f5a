"""TADA's localisation on the tones world: which cross-attention layer carries a factor.

For prompt pairs that swap one factor's word, the clean prompt runs first with a cache on one
layer's conditioning inputs (``transformer_blocks.i.attn2:input.encoder_hidden_states``) at every
step; the swapped prompt then runs from the same latents with those inputs patched in
(:func:`interventions.patching.patching_sweep`, cond rows). The sweep's metric is the mean
continuous reading of the factor (:func:`recipes.tada.tones.measure`), so ``normalized`` is the
share of the clean-minus-swapped gap a layer restores; beside it, the share of samples whose probe
reads the *clean* value (the decision). Columns: every step, and the sampling's thirds.

The zero-ablation variant zeroes one layer's cross-attention output on the conditional rows only
(``Ablate("zero", when=When(branch="cond"))``) in the clean run and reports the share of samples
that still follow the prompt's value.

Example (``tests/test_tada.py`` runs it)::

    from recipes.tada.ground_truth import load_ground_truth
    loc = localize(load_ground_truth(), "timbre", ("sawtooth", "sine"), n=4, steps=4, windows=False, ablation=False)
    loc.ranking()[0]  # 2: the block that alone sees timbre
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from interventions import Ablate, When, attach
from interventions.patching import PatchingTable, patching_sweep

from .tones import block_count, cfg_layout, judge, prompt_pairs, read, sample, value_index

__all__ = ["Localisation", "localize", "cross_attn_inputs", "cross_attn_output", "step_windows"]


def cross_attn_inputs(layer: int, model: Any = None) -> str:
    """The conditioning input of block ``layer``'s cross-attention (what TADA patches); a model
    whose modules have other names (stable-audio-tools, a UNet) names its own."""
    if hasattr(model, "cross_attn_inputs"):
        return model.cross_attn_inputs(layer)
    return f"transformer_blocks.{layer}.attn2:input.encoder_hidden_states"


def cross_attn_output(layer: int, model: Any = None) -> str:
    """Block ``layer``'s cross-attention output, before the residual add (where CAA steers)."""
    if hasattr(model, "cross_attn_output"):
        return model.cross_attn_output(layer)
    return f"transformer_blocks.{layer}.attn2"


def step_windows(steps: int, parts: int = 3) -> list[range]:
    """``parts`` contiguous windows covering ``range(steps)`` (early, middle, late sampling)."""
    edges = [round(i * steps / parts) for i in range(parts + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


@dataclass
class Localisation:
    """One factor's localisation on one seed: ``patching`` (rows = layers, columns = step windows,
    values = the factor's mean reading), ``patched_rate`` (the same cells: share of samples whose
    probe reads the clean value), the unpatched rates, and the cond-only zero-ablation (share still
    following the prompt, per layer)."""

    factor: str
    values: tuple[str, str]
    seed: int
    prompt_seed: int
    n: int
    patching: PatchingTable
    patched_rate: torch.Tensor
    clean_rate: float  # clean prompts whose samples read the clean value
    swapped_rate: float  # swapped prompts whose samples still read the clean value (the baseline)
    ablation: list[float] = field(default_factory=list)  # per layer; empty when not run
    ablation_baseline: float = float("nan")

    def recovered(self) -> torch.Tensor:
        """Share of the clean-minus-swapped gap of the reading each cell restores (layers x columns);
        NaN where the clean and swapped runs read the same (the model ignores the swapped word)."""
        if self.patching.source_value == self.patching.baseline:
            return torch.full_like(self.patching.values, float("nan"))
        return self.patching.normalized()

    def ranking(self) -> list[int]:
        """Layers ordered by the every-step share restored, largest first."""
        order = torch.argsort(self.recovered()[:, 0], descending=True, stable=True)
        return [int(i) for i in order]

    def to_json(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "values": list(self.values),
            "seed": self.seed,
            "prompt_seed": self.prompt_seed,
            "n": self.n,
            "clean_rate": self.clean_rate,
            "swapped_rate": self.swapped_rate,
            "columns": list(self.patching.steps),
            "reading_clean": self.patching.source_value,
            "reading_swapped": self.patching.baseline,
            "reading_patched": self.patching.values.tolist(),
            "recovered": self.recovered().tolist(),
            "patched_rate": self.patched_rate.tolist(),
            "ranking": self.ranking(),
            "ablation_rate": self.ablation,
            "ablation_baseline": self.ablation_baseline,
        }


def localize(
    model: Any,
    factor: str,
    values: tuple[str, str],
    *,
    n: int = 24,
    seed: int = 0,
    prompt_seed: int = 100,
    steps: int = 20,
    guidance: float = 3.0,
    windows: bool = True,
    ablation: bool = True,
    progress: bool = False,
) -> Localisation:
    """Localise ``factor`` in ``model`` (a tones model) with ``n`` pairs ``values[0] -> values[1]``
    (prompts from ``prompt_seed``, latents from ``seed``), every layer; see the module docstring."""
    pairs = prompt_pairs(factor, values, n, prompt_seed, model=model)
    clean_value = value_index(factor, values[0], model)
    clean, swapped = [p.clean for p in pairs], [p.swapped for p in pairs]

    def reads_clean(reps: torch.Tensor) -> float:
        return float((judge(reps, seed, model)[factor] == clean_value).float().mean())

    rates: list[float] = []  # the sweep scores source, target, then the cells row by row

    def reading(reps: torch.Tensor) -> float:
        preds, m = read(reps, factor, seed, model)
        rates.append(float((preds[factor] == clean_value).float().mean()))
        return float(m.mean())

    layers = block_count(model)
    columns: list[Any] = [None] + (list(step_windows(steps)) if windows else [])
    table = patching_sweep(
        model.transformer,
        [[cross_attn_inputs(i, model)] for i in range(layers)],
        lambda: sample(model, clean, seed, steps=steps, guidance=guidance),
        lambda: sample(model, swapped, seed, steps=steps, guidance=guidance),
        reading,
        steps=columns,
        branch="cond",
        progress=progress,
        cfg=cfg_layout(model),
    )
    cells = torch.tensor(rates[2:]).view(layers, len(columns))
    loc = Localisation(factor, values, seed, prompt_seed, n, table, cells, rates[0], rates[1])
    if ablation:
        loc.ablation_baseline = loc.clean_rate
        for i in range(layers):
            zero = {cross_attn_output(i, model): Ablate("zero", when=When(branch="cond"))}
            with attach(model.transformer, zero, cfg=cfg_layout(model)):
                loc.ablation.append(reads_clean(sample(model, clean, seed, steps=steps, guidance=guidance)))
    return loc
