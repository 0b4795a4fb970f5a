"""The few-step student of the shapes model: its 2-step sampler, the teacher trajectories it is
distilled from, and its shipped checkpoint.

The teacher is the shipped shapes pipeline as ELROND samples it: DDIM 10 steps (timesteps 901, 801,
..., 1), classifier-free guidance 3. The student is a UNet of the same architecture that takes
only the prompt's embedding (guidance folded in, no unconditional pass) and makes two DDIM jumps
on the teacher's grid: 901 -> 401 (the teacher's 5 first steps) and 401 -> 0 (its 5 last).

>>> import torch
>>> a = alphas_cumprod()
>>> [round(float(a[t]), 3) for t in STUDENT_TIMESTEPS], round(float(a[0]), 5)
([0.023, 0.644], 0.99996)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_DIR",
    "STUDENT_TIMESTEPS",
    "TEACHER_STEPS",
    "GUIDANCE",
    "alphas_cumprod",
    "previous_alpha",
    "ddim_jump",
    "student_sample",
    "teacher_trajectory",
    "load_student",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "student"
TEACHER_STEPS = 10
GUIDANCE = 3.0
STUDENT_TIMESTEPS = (901, 401)  # the teacher's DDIM grid (leading spacing, offset 1), every 5th step


def alphas_cumprod() -> Tensor:
    """The shapes model's training schedule (squaredcos, 1000 steps)."""
    from recipes.worlds.shapes_model import build_train_scheduler

    return build_train_scheduler().alphas_cumprod.clone()


def previous_alpha(t: int, alphas: Tensor) -> Tensor:
    """Where a student jump from ``t`` lands: the next student timestep, or ``alphas[0]`` after the
    last (the teacher's DDIM ends there too: ``set_alpha_to_one=False``)."""
    i = STUDENT_TIMESTEPS.index(t)
    return alphas[STUDENT_TIMESTEPS[i + 1]] if i + 1 < len(STUDENT_TIMESTEPS) else alphas[0]


def ddim_jump(x: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM step (eta 0): the implied ``x0`` and the point at ``a_prev``.
    ``a_t`` / ``a_prev`` broadcast against ``x`` (scalars or ``B x 1 x 1 x 1``)."""
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return x0, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def student_sample(unet: Any, cond: Tensor, noise: Tensor) -> Tensor:
    """The student's 2-step samples (``B x 3 x 16 x 16``, about [-1, 1]) for prompt embeddings
    ``cond`` (``B x T x D``, the teacher's text encoder) from ``noise``."""
    alphas = alphas_cumprod()
    x = noise
    with torch.no_grad():
        for t in STUDENT_TIMESTEPS:
            eps = unet(x, t, encoder_hidden_states=cond).sample
            _, x = ddim_jump(x, eps, alphas[t], previous_alpha(t, alphas))
    return x


def teacher_trajectory(pipe: Any, cond: Tensor, uncond: Tensor, noise: Tensor) -> dict[int, Tensor]:
    """The teacher's DDIM-10 / guidance-3 run from ``noise``, exactly as the pipeline samples it,
    recorded at the student's timesteps and at the end: ``{901: noise, 401: x_401, 0: x_0}``."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(TEACHER_STEPS)
    if tuple(sched.timesteps[:: TEACHER_STEPS // len(STUDENT_TIMESTEPS)].tolist()) != STUDENT_TIMESTEPS:
        raise ValueError(f"the teacher's DDIM grid {sched.timesteps.tolist()} does not hold {STUDENT_TIMESTEPS}")
    out, x, embeds = {STUDENT_TIMESTEPS[0]: noise}, noise, torch.cat([uncond, cond])
    with torch.no_grad():
        for t in sched.timesteps:
            eps_u, eps_c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample.chunk(2)
            x = sched.step(eps_u + GUIDANCE * (eps_c - eps_u), t, x).prev_sample
            landed = int(t) - 1000 // TEACHER_STEPS
            if landed in STUDENT_TIMESTEPS:
                out[landed] = x
    out[0] = x
    return out


def load_student(path: Any = None) -> Any:
    """The student UNet of a checkpoint folder (default: the shipped one; safetensors + JSON
    config, checked against each other first), float32, in eval mode."""
    from diffusers import UNet2DConditionModel

    from ..folders import load_component, refuse_outside_links

    path = Path(path) if path is not None else CHECKPOINT_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no student checkpoint (config.json); train one with `python -m recipes.elrond.distill`"
        )
    refuse_outside_links(path)
    unet = load_component(
        UNet2DConditionModel, path, "diffusion_pytorch_model.safetensors", path, UNet2DConditionModel.from_config
    )
    return unet.float().eval()
