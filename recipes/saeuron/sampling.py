"""Running the shapes pipeline for SAeUron: images, cached activations and per-step SAE latents.

Every run uses the same sampler settings (:class:`Sampling`) and one ``torch.Generator`` per batch
seeded from ``seed``, so an edited run and its unedited reference start from the same noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from interventions import Cache, MemoryStore, When, attach
from interventions.layout import to_tokens
from interventions.sae import SAE

__all__ = ["Sampling", "generate", "cache_cond", "step_statistics"]


@dataclass(frozen=True)
class Sampling:
    """DDIM steps, guidance scale and prompts per pipeline call (the recipe's defaults)."""

    steps: int = 10
    guidance: float = 3.0
    batch: int = 64


def _batches(prompts: tuple[str, ...], size: int) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(prompts), size):
        yield start, list(prompts[start : start + size])


def generate(
    pipe: Any,
    prompts: tuple[str, ...],
    seed: int,
    sampling: Sampling,
    hooks: Mapping[str, Any] | None = None,
    negative_prompt: str | None = None,
) -> torch.Tensor:
    """Images in ``[-1, 1]`` (``B x 3 x 16 x 16``) for ``prompts``, with ``hooks`` attached if given."""
    out = []
    for start, chunk in _batches(prompts, sampling.batch):
        kw: dict[str, Any] = dict(
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance,
            output_type="pt",
            generator=torch.Generator().manual_seed(seed * 100_003 + start),
        )
        if negative_prompt is not None:
            kw["negative_prompt"] = [negative_prompt] * len(chunk)
        with torch.no_grad():
            if hooks:
                with attach(pipe, dict(hooks)):
                    images = pipe(chunk, **kw).images
            else:
                images = pipe(chunk, **kw).images
        out.append(images * 2 - 1)
    return torch.cat(out)


def cache_cond(pipe: Any, site: str, prompts: tuple[str, ...], seed: int, sampling: Sampling, store: Any) -> None:
    """Append the cond-branch activations of ``site`` at every step to ``store`` (one part per batch)."""
    generate(pipe, prompts, seed, sampling, {site: Cache(store, on_repeat="append", when=When(branch="cond"))})


def step_statistics(
    pipe: Any, sae: SAE, prompts: tuple[str, ...], seeds: list[int], sampling: Sampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """What SAeUron scores features with, from the cond branch at the SAE's site: token-averaged
    latents ``[len(seeds) * len(prompts), steps, d_sae]`` (seed-major), and the block's mean
    output per step ``[steps, channels]`` (the block-ablation baseline's value)."""
    site, layout = sae.info.site, sae.info.layout
    per_seed, means = [], []
    for seed in seeds:
        store = MemoryStore()
        cache_cond(pipe, site, prompts, seed, sampling, store)
        steps, step_means = [], []
        for step in range(sampling.steps):
            tokens = to_tokens(store.get((site, step, "cond")), layout)  # prompt-major rows
            step_means.append(tokens.mean(0))
            with torch.no_grad():
                steps.append(sae.encode(tokens.to(sae.W_enc.dtype)).view(len(prompts), -1, sae.d_sae).mean(1))
        per_seed.append(torch.stack(steps, 1))
        means.append(torch.stack(step_means))
    return torch.cat(per_seed), torch.stack(means).mean(0)
