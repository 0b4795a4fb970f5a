"""SAE steering on a localised layer's cross-attention output (TADA section 3.3): a TopK SAE
trained on the layer's cond-row tokens at every step, features scored per step by TF-IDF
(``mean_pos * log(1 + 1 / mean_neg)``; difference of means and Cohen's d beside it) between
prompts with and without the target value, and two edits through ``SAEEdit`` (error term kept:
``x + dec(z') - dec(z)``): ``"add"`` raises the step's top features by ``m`` (adds ``m`` times
their decoder rows), ``"scale"`` multiplies them by ``gamma`` (``gamma = 0`` removes the concept).

Example (``tests/test_tada.py`` runs it)::

    from recipes.worlds.tones_model import load_model
    model = load_model()
    sae, report = train_layer_sae(model, 2, n=4, steps=3, train_steps=20)
    scores = feature_scores(model, sae, 2, "vocals", ("instrumental", "vocals"), n=4, steps=3)
    feats = top_features_by_step(scores["tfidf"], 3)  # 3 features per step
    with attach(model.transformer, sae_hooks(sae, 2, feats, 4.0), cfg=("uncond", "cond")):
        reps = sample(model, ["a slow pure tune instrumental"], seed=0, steps=3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from interventions import Cache, SAEEdit, When, attach
from interventions.sae import SAE, SAEInfo
from interventions.sae_train import TrainConfig, TrainReport, train_sae
from interventions.scores import cohens_d, difference_of_means, tfidf
from interventions.steering import token_means

from .localize import cross_attn_output
from .tones import cfg_layout, prompt_pairs, sample

__all__ = ["layer_activations", "train_layer_sae", "feature_scores", "top_features_by_step", "sae_hooks"]

SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tfidf": tfidf,
    "diff_of_means": difference_of_means,
    "cohens_d": cohens_d,
}


def layer_activations(
    model: Any, layer: int, prompts: list[str], seed: int, *, steps: int = 20, guidance: float = 3.0
) -> dict[int, torch.Tensor]:
    """Cond-row cross-attention outputs of ``layer`` per step: ``{step: [prompts, tokens, width]}``."""
    site = cross_attn_output(layer, model)
    cache = Cache(when=When(branch="cond"), on_repeat="replace")
    with attach(model.transformer, {site: cache}, cfg=cfg_layout(model)):
        sample(model, prompts, seed, steps=steps, guidance=guidance)
    return {step: cache.get(site, step=step, branch="cond") for step in range(steps)}


def train_layer_sae(
    model: Any,
    layer: int,
    *,
    n: int = 64,
    seed: int = 2000,
    prompt_seed: int = 400,
    steps: int = 20,
    guidance: float = 3.0,
    expansion: int = 4,
    k: int = 16,
    train_steps: int = 1500,
    templates: tuple[int, ...] = (0, 1, 2),
    progress: bool = False,
) -> tuple[SAE, TrainReport]:
    """A TopK SAE (``expansion`` x width latents, ``k`` active) on ``layer``'s cross-attention
    output over every step of ``n`` random prompts (every factor random, ``templates`` only)."""
    from recipes.worlds import tones as world

    if hasattr(model, "random_prompts"):
        prompts = model.random_prompts(n, prompt_seed)
    else:
        g = torch.Generator().manual_seed(prompt_seed)
        f = world.sample_factors(n, g)
        tmpl = torch.tensor(list(templates))[torch.randint(len(templates), (n,), generator=g)].tolist()
        syn = torch.randint(2, (n, len(world.FACTORS)), generator=g).tolist()
        prompts = [world.make_prompt({k: int(f[k][i]) for k in world.FACTORS}, tmpl[i], syn[i]) for i in range(n)]
    acts = layer_activations(model, layer, prompts, seed, steps=steps, guidance=guidance)
    tokens = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts.values()])
    width = tokens.shape[-1]
    info = SAEInfo(site=cross_attn_output(layer, model), layout="BNC", branch="cond")
    cfg = TrainConfig(steps=train_steps, batch_size=512, lr=2e-3, seed=seed, progress=progress)
    return train_sae(tokens, expansion * width, kind="topk", k=k, config=cfg, info=info)


@torch.no_grad()
def feature_scores(
    model: Any,
    sae: SAE,
    layer: int,
    factor: str,
    values: tuple[str, str],
    *,
    n: int = 32,
    seed: int = 1000,
    prompt_seed: int = 200,
    steps: int = 20,
    guidance: float = 3.0,
    templates: tuple[int, ...] = (0, 1, 2),
) -> dict[str, torch.Tensor]:
    """Per-step feature scores ``{name: [steps, d_sae]}`` for ``values[1]`` (positive prompts)
    against ``values[0]`` (the same prompts with the factor's word swapped): each example's
    latents averaged over its tokens, then TF-IDF, difference of means and Cohen's d."""
    pairs = prompt_pairs(factor, (values[1], values[0]), n, prompt_seed, templates, model)
    pos = layer_activations(model, layer, [p.clean for p in pairs], seed, steps=steps, guidance=guidance)
    neg = layer_activations(model, layer, [p.swapped for p in pairs], seed, steps=steps, guidance=guidance)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in SCORES}
    for step in range(steps):
        zp = token_means(sae.encode(pos[step].flatten(0, 1)).view(n, -1, sae.d_sae), "BNC")
        zn = token_means(sae.encode(neg[step].flatten(0, 1)).view(n, -1, sae.d_sae), "BNC")
        for name, score in SCORES.items():
            out[name].append(score(zp, zn))
    return {name: torch.stack(v) for name, v in out.items()}


def top_features_by_step(scores: torch.Tensor, top: int) -> list[list[int]]:
    """The ``top`` highest-scoring features of every step (TADA keeps 20 of 65k; we keep a few)."""
    return [row.topk(top).indices.tolist() for row in scores]


def sae_hooks(
    sae: SAE,
    layer: int,
    features: list[list[int]],
    strength: float,
    *,
    mode: str = "add",
    branch: str = "cond",
    model: Any = None,
) -> dict[str, Any]:
    """``{site: SAEEdit}`` that edits each step's ``features``: ``"add"`` sets ``z_f <- z_f + m``,
    ``"scale"`` sets ``z_f <- gamma z_f`` (``strength`` is ``m`` or ``gamma``); error term kept.
    ``model`` names the site where it is not the tones DiT's."""
    if mode not in ("add", "scale"):
        raise ValueError(f"SAE steering mode must be 'add' or 'scale', got {mode!r}")
    index = [torch.as_tensor(f, dtype=torch.long) for f in features]

    def edit(z: torch.Tensor, ctx: Any) -> torch.Tensor:
        step = ctx.step if ctx.step is not None and ctx.step < len(index) else None
        if step is None:
            return z
        z = z.clone()
        f = index[step]
        z[:, f] = z[:, f] + strength if mode == "add" else z[:, f] * strength
        return z

    return {cross_attn_output(layer, model): SAEEdit(sae, edit, when=When(branch=branch))}
