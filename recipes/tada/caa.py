"""CAA steering at the localised layers (TADA section 3.2): one unit direction per layer and
denoising step, the difference of the mean cross-attention output (over prompts and tokens) of
prompts with the target value and prompts with the source value, cond rows only; added with the
norm restored, ``h <- (h + a v) |h| / |h + a v|``, or removed by projection,
``h <- h - b max(0, <h, v>) v``, on the cond pass (TADA's default) or on both passes.

The vectors are :class:`interventions.SteeringVector` artifacts: ``vector.save(folder)`` writes
them with their card fields, ``interventions hub push`` publishes the folder.

Example (``tests/test_tada.py`` runs it)::

    from recipes.worlds.tones_model import load_model
    v = caa_vectors(load_model(), "vocals", ("instrumental", "vocals"), layers=[2], n=4, steps=3)
    v.sites, v.steps("transformer_blocks.2.attn2")  # (['transformer_blocks.2.attn2'], [0, 1, 2])
    with v.attach(model.transformer, scale=2.0, restore_norm=True, cfg=("uncond", "cond")):
        reps = sample(model, ["a slow pure tune instrumental"], seed=0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from interventions import Cache, When, attach
from interventions.steering import SteeringVector

from .localize import cross_attn_output
from .tones import cfg_layout, judge, prompt_pairs, sample, value_index

__all__ = ["caa_vectors", "caa_curve", "restrict", "SteeringCurve", "steering_curve"]


def caa_vectors(
    model: Any,
    factor: str,
    values: tuple[str, str],
    layers: Sequence[int],
    *,
    n: int = 32,
    seed: int = 1000,
    prompt_seed: int = 200,
    steps: int = 20,
    guidance: float = 3.0,
    templates: Sequence[int] = (0, 1, 2),
    base_model: str = "recipes/worlds/checkpoints/tones",
) -> SteeringVector:
    """Per-step unit CAA directions from ``values[0]`` (negative) to ``values[1]`` (positive) at
    the cross-attention outputs of ``layers``: ``n`` prompt pairs that differ only in the factor's
    word, sampled from the same latents (``seed``)."""
    if not layers:
        raise ValueError("caa_vectors needs at least one layer (e.g. the localisation's top layer)")
    pairs = prompt_pairs(factor, (values[1], values[0]), n, prompt_seed, templates, model)
    sites = [cross_attn_output(i, model) for i in layers]
    stores = []
    for prompts in ([p.clean for p in pairs], [p.swapped for p in pairs]):
        cache = Cache(when=When(branch="cond"), on_repeat="replace")
        with attach(model.transformer, dict.fromkeys(sites, cache), cfg=cfg_layout(model)):
            sample(model, prompts, seed, steps=steps, guidance=guidance)
        stores.append(cache.store)
    return SteeringVector.contrastive(
        stores[0],
        stores[1],
        unit=True,
        per_step=True,
        branch="cond",
        layout="BNC",
        base_model=base_model,
        extra={
            "recipe": "tada",
            "factor": factor,
            "negative": values[0],
            "positive": values[1],
            "layers": list(layers),
            "n_pairs": n,
            "sampling_steps": steps,
            "guidance": guidance,
            "prompt_seed": prompt_seed,
            "latent_seed": seed,
            "templates": list(templates),
        },
    )


@dataclass
class SteeringCurve:
    """Steering outcomes over strengths on held-out prompts: ``target`` = share of samples whose
    probe reads the target value, ``kept`` = share whose every other factor reads as in the
    unsteered sample, ``kept_each`` the same per other factor."""

    label: str
    mode: str
    branch: str
    strengths: list[float]
    target: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)
    kept_each: list[dict[str, float]] = field(default_factory=list)

    def meets(self, target: float = 0.8, kept: float = 0.9) -> list[float]:
        """The strengths at which both thresholds hold."""
        return [s for s, t, k in zip(self.strengths, self.target, self.kept, strict=True) if t >= target and k >= kept]

    def best(self) -> float:
        """The largest ``min(target, kept)`` over strengths (1 = perfect steering at some strength)."""
        return max(min(t, k) for t, k in zip(self.target, self.kept, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "mode": self.mode,
            "branch": self.branch,
            "strengths": self.strengths,
            "target": self.target,
            "kept": self.kept,
            "kept_each": self.kept_each,
            "meets_80_90": self.meets(),
            "best_min_target_kept": self.best(),
        }


def steering_curve(
    model: Any,
    factor: str,
    values: tuple[str, str],
    hooks_at: Callable[[float], dict[str, Any]],
    strengths: Sequence[float],
    *,
    label: str = "",
    mode: str = "add",
    branch: str = "cond",
    n: int = 32,
    seed: int = 0,
    prompt_seed: int = 300,
    steps: int = 20,
    guidance: float = 3.0,
    templates: Sequence[int] = (0, 1, 2),
) -> SteeringCurve:
    """Steer held-out prompts (``n`` from ``prompt_seed``, latents from ``seed``) with the hooks
    ``hooks_at(strength)`` at each strength. ``mode="add"``: prompts name ``values[0]`` and the
    target is ``values[1]``; ``mode="remove"``: prompts name ``values[1]`` and the target is any
    other value. ``branch`` only labels the curve (the hooks carry their own ``When``)."""
    neg, pos = values
    pos_i = value_index(factor, pos, model)
    start = neg if mode == "add" else pos
    pairs = prompt_pairs(factor, (start, pos if mode == "add" else neg), n, prompt_seed, templates, model)
    prompts = [p.clean for p in pairs]
    base = judge(sample(model, prompts, seed, steps=steps, guidance=guidance), seed, model)
    others = [k for k in base if k != factor]
    curve = SteeringCurve(label or f"{mode} {branch}", mode, branch, [float(s) for s in strengths])
    for s in strengths:
        with attach(model.transformer, hooks_at(s), cfg=cfg_layout(model)):
            pred = judge(sample(model, prompts, seed, steps=steps, guidance=guidance), seed, model)
        hit = pred[factor] == pos_i if mode == "add" else pred[factor] != pos_i
        same = {k: pred[k] == base[k] for k in others}
        curve.target.append(float(hit.float().mean()))
        kept = torch.stack(list(same.values())).all(0) if same else torch.ones_like(hit)
        curve.kept.append(float(kept.float().mean()))
        curve.kept_each.append({k: float(v.float().mean()) for k, v in same.items()})
    return curve


def caa_curve(
    model: Any,
    vector: SteeringVector,
    strengths: Sequence[float],
    *,
    mode: str = "add",
    branch: str = "cond",
    label: str = "",
    **kw: Any,
) -> SteeringCurve:
    """:func:`steering_curve` of a CAA vector: added with the norm restored (``scale`` = strength)
    or removed by projection (``strength``), on the ``branch`` rows (``"cond"`` or ``"all"``)."""
    fitted = vector.extra.get("sampling_steps")
    steps = kw.get("steps", 20)
    if fitted is not None and fitted != steps:
        raise ValueError(
            f"the vector was fitted on {fitted} sampling steps (one direction per step) but is applied with {steps}: "
            "sample with the same step count, or fit the vector again"
        )
    when = When(branch=branch)

    def hooks_at(s: float) -> dict[str, Any]:
        if mode == "add":
            return vector.hooks(s, mode="add", restore_norm=True, when=when)
        return vector.hooks(mode="remove", strength=s, restore_norm=True, when=when)

    values = (vector.extra["negative"], vector.extra["positive"])
    return steering_curve(
        model, vector.extra["factor"], values, hooks_at, strengths, label=label, mode=mode, branch=branch, **kw
    )


def restrict(vector: SteeringVector, layers: Sequence[int], model: Any = None) -> SteeringVector:
    """The same vector keeping only the directions of ``layers`` (``model`` names the sites where
    they are not the tones DiT's)."""
    sites = {cross_attn_output(i, model) for i in layers}
    keep = {k: v for k, v in vector.directions.items() if (k if isinstance(k, str) else k[0]) in sites}
    if not keep:
        raise ValueError(f"the vector has no direction at layers {list(layers)} (it has {vector.sites})")
    return replace(vector, directions=keep, extra={**vector.extra, "layers": list(layers)})
