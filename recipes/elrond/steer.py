"""Steering along ELROND directions: ``e_tok <- e_tok + s d`` on the concept token's text-encoder
output, and the paper's remedy for mode collapse, a random direction (with a random sign) and a
random strength for every sample.

>>> import torch
>>> cond = torch.zeros(3, 5, 4)
>>> d = torch.eye(4)[:2]
>>> out = add_at_token(cond, 2, d[[0, 1, 0]], torch.tensor([1.0, 2.0, -1.0]))
>>> out[:, 2].tolist(), float(out[:, [0, 1, 3, 4]].abs().sum())
([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], 0.0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .gradients import Setting, concept_position, encoded, sample


def add_at_token(cond: Tensor, position: int, directions: Tensor, strengths: Tensor) -> Tensor:
    """``cond`` (``B x T x D``) with ``strengths[i] * directions[i]`` added at token ``position``."""
    out = cond.clone()
    out[:, position] += strengths[:, None].to(cond) * directions.to(cond)
    return out


def random_steering(
    n: int, directions: Tensor, low: float, high: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per sample: one of ``directions`` (rows) with a random sign, and a strength ``~ U[low, high]``."""
    pick = torch.randint(len(directions), (n,), generator=generator)
    sign = torch.randint(2, (n,), generator=generator) * 2.0 - 1.0
    strength = low + (high - low) * torch.rand(n, generator=generator)
    return directions[pick], sign * strength


def generate(
    pipe: Any,
    prompt: str,
    directions: Tensor,
    strengths: Tensor,
    setting: Setting,
    seed: int,
    word: str | None = None,
) -> Tensor:
    """Latents for ``len(strengths)`` samples of ``prompt``, sample ``i`` steered by
    ``strengths[i] * directions[i]`` at the concept token (strength 0: the unsteered sample; the
    same ``seed`` gives the same noise, so steered and unsteered samples pair up)."""
    position = concept_position(pipe.tokenizer, prompt, word)
    cond, uncond, pooled_embeds = encoded(pipe, prompt, len(strengths))
    steered = add_at_token(cond, position, directions, strengths)
    return sample(pipe, steered, uncond, setting, seed, pooled_embeds)
