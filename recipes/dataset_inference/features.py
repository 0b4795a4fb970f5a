"""Per-sample membership features of a diffusion model (arXiv 2512.09654, section 3 of the
methods notes): the conditional denoising loss at fixed timesteps with fixed noise, the CFG
contrast (conditional minus unconditional loss at the same ``x_t``), and the norm of the loss
gradient at one site (through :class:`interventions.Grads`).

Every feature is oriented so that *lower means more member-like* (a member's loss is lower, its
conditional fit better than its unconditional one, its gradient smaller). The noise is fixed per
sample position (seeded), so two sets of the same size see the same noise draws.

>>> from recipes.dataset_inference.gmm_world import MemorisingWorld
>>> from recipes.dataset_inference.targets import gmm_target
>>> world = MemorisingWorld.build(members=20, seed=0)
>>> feats = compute_features(gmm_target(world.denoiser), SampleSet(world.member_x, world.member_labels),
...                          FeatureConfig(timesteps=(20, 100), grad_timestep=20), progress=False)
>>> feats.names, tuple(feats.values.shape)
(['loss@20', 'loss@100', 'cfg@20', 'cfg@100', 'grad@20'], (20, 5))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from interventions.membership import denoising_loss, mean_denoising_loss, per_sample_grad_norms

from .targets import Target

__all__ = ["SampleSet", "FeatureConfig", "Features", "compute_features"]


@dataclass
class SampleSet:
    """Samples in the model's input space (latents) ``N x ...`` and one condition per sample
    (prompts, or class labels as an ``(N,)`` tensor)."""

    latents: Tensor
    conditions: Any

    def __post_init__(self) -> None:
        if len(self.conditions) != self.latents.shape[0]:
            raise ValueError(f"{self.latents.shape[0]} samples but {len(self.conditions)} conditions")

    def __len__(self) -> int:
        return self.latents.shape[0]

    def rows(self, start: int, stop: int) -> SampleSet:
        return SampleSet(self.latents[start:stop], self.conditions[start:stop])


@dataclass
class FeatureConfig:
    """Timesteps index the model's 1000-step schedule; ``grad_timestep=None`` skips the gradient.
    ``views``: noise draws per sample and timestep, the losses averaged (the gradient uses one)."""

    timesteps: tuple[int, ...] = (50, 100, 200, 400)
    grad_timestep: int | None = 100
    cfg: bool = True
    noise_seed: int = 0
    batch_size: int = 100
    views: int = 1

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views is the number of noise draws per sample and timestep: >= 1, got {self.views}")


@dataclass
class Features:
    """A feature matrix ``N x F`` with column names (all oriented: lower = member-like)."""

    names: list[str]
    values: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Tensor:
        if name not in self.names:
            raise KeyError(f"no feature {name!r}; have {self.names}")
        return self.values[:, self.names.index(name)]


def _noise(config: FeatureConfig, shape: tuple[int, ...], start: int, count: int) -> Tensor:
    """Noise ``D x count x ...`` for sample positions ``start..start+count`` (``D = views x timesteps``,
    then one for the gradient): one seeded draw per position, so a sample's noise does not depend on
    the batch size; the first view's draws are those of ``views=1``."""
    k = len(config.timesteps) * config.views + (config.grad_timestep is not None)
    draws = []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(config.noise_seed * 1_000_003 + i)
        first = torch.randn((len(config.timesteps) + (config.grad_timestep is not None), *shape), generator=g)
        more = torch.randn((k - len(first), *shape), generator=g)
        draws.append(torch.cat([first[: len(config.timesteps)], more, first[len(config.timesteps) :]]))
    return torch.stack(draws, 1)


def _denoiser(target: Target, conditions: Any):
    """``denoise(x, t)`` of ``target`` with fixed conditions (None: unconditional)."""
    return lambda x, t: target.predict(x, t, conditions)


def compute_features(
    target: Target, samples: SampleSet, config: FeatureConfig | None = None, progress=True
) -> Features:
    """The feature matrix of ``samples`` under ``target``'s model."""
    from tqdm.auto import tqdm

    config = config or FeatureConfig()
    steps = list(config.timesteps)
    names = [f"loss@{t}" for t in steps]
    if config.cfg:
        names += [f"cfg@{t}" for t in steps]
    if config.grad_timestep is not None:
        names.append(f"grad@{config.grad_timestep}")
    shape = tuple(samples.latents.shape[1:])
    rows = []
    for start in tqdm(
        range(0, len(samples), config.batch_size), desc=f"features ({target.name})", disable=not progress
    ):
        batch = samples.rows(start, start + config.batch_size)
        x0 = batch.latents.float()
        noise = _noise(config, shape, start, len(batch)).to(x0.device)
        views = noise[: len(steps) * config.views].unflatten(0, (config.views, len(steps)))
        cols = []
        with torch.no_grad():
            cond = mean_denoising_loss(
                _denoiser(target, batch.conditions),
                x0,
                steps,
                target.alphas_cumprod,
                target.prediction_type,
                noise=views,
            )
            cols.append(cond)
            if config.cfg:
                uncond = mean_denoising_loss(
                    _denoiser(target, None),
                    x0,
                    steps,
                    target.alphas_cumprod,
                    target.prediction_type,
                    noise=views,
                )
                cols.append(cond - uncond)
        if config.grad_timestep is not None:
            losses = partial(
                denoising_loss,
                _denoiser(target, batch.conditions),
                x0,
                [config.grad_timestep],
                target.alphas_cumprod,
                target.prediction_type,
                noise=noise[-1:],
            )
            norms = per_sample_grad_norms(target.module, target.grad_site, lambda losses=losses: losses()[:, 0])
            cols.append(norms[:, None])
        rows.append(torch.cat(cols, 1).detach().cpu())
    return Features(names, torch.cat(rows), {"config": vars(config).copy(), "target": target.name})
