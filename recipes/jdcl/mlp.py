"""A tiny joint diffusion classifier for vector data (the Gaussian-mixture world): an MLP
denoiser whose hidden blocks, read on the clean input, feed a classifier head.

The same interface as :class:`recipes.joint_diffusion.model.JointDiffusion` (``classify``,
``denoise``, ``add_noise``, ``denoising_loss``, ``ddim_scheduler``, ``sample_shape``), so the
JDCL stages of :mod:`recipes.jdcl.continual` run on either. As there, the features are read with
the core's hooks: a ``Cache(detach=False)`` on every ``blocks.<i>`` output under
:func:`interventions.attach` with ``stop=True`` (the output layer never runs for the classifier),
at timestep 0. It is its own Hub artifact (``hub_cards.ModelHubMixin``), saved and loaded by
:mod:`recipes.joint_diffusion.hub` like the image model.

>>> import torch
>>> model = JointMLP(dim=4, num_classes=3, width=16, depth=2)
>>> x = torch.zeros(5, 4)
>>> model.classify(x).shape, model.denoise(x, torch.full((5,), 7)).shape
(torch.Size([5, 3]), torch.Size([5, 4]))
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hub_cards import ModelHubMixin
from interventions import Cache, attach
from recipes.joint_diffusion.model import BETA_END, BETA_START, ddim_scheduler

__all__ = ["JointMLP"]


class _Block(nn.Module):
    """A residual MLP block, the timestep embedding added inside."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.time(temb)))


class _Trunk(nn.Module):
    """The denoiser: input projection, residual blocks (the feature sites), output projection."""

    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        self.width = width
        self.embed = nn.Linear(width, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=x.device) / half)
        angles = t.float()[:, None] * freqs[None]
        temb = F.silu(self.embed(torch.cat([angles.sin(), angles.cos()], dim=1)))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(F.silu(h))


class JointMLP(nn.Module, ModelHubMixin, tags=["diffusion", "classifier", "joint-diffusion", "mlp"]):
    """An eps-prediction MLP (``depth`` residual blocks of ``width``) plus an MLP head on the
    concatenated block outputs of the clean input; linear betas over ``train_timesteps``."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        hidden: int = 64,
        dropout: float = 0.1,
        train_timesteps: int = 1000,
    ):
        super().__init__()
        if dim < 1 or num_classes < 2 or depth < 1 or width < 2 or width % 2:
            raise ValueError(
                f"need dim >= 1, num_classes >= 2, depth >= 1 and an even width >= 2; "
                f"got dim={dim}, num_classes={num_classes}, depth={depth}, width={width}"
            )
        self.dim = dim
        self.num_classes = num_classes
        self.train_timesteps = train_timesteps
        self.trunk = _Trunk(dim, width, depth)
        self.head = nn.Sequential(
            nn.Linear(width * depth, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        betas = torch.linspace(BETA_START, BETA_END, train_timesteps)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0), persistent=False)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def ddim_scheduler(self) -> Any:
        """A diffusers ``DDIMScheduler`` on this model's schedule (no clipping: data are unbounded)."""
        return ddim_scheduler(self.train_timesteps, clip_sample=False)

    def features(self, x: Tensor) -> Tensor:
        """``B x width*depth``: every block's output for clean inputs ``x``, read by hooks at t = 0."""
        maps = Cache(clone=False, detach=False)
        sites = [f"blocks.{i}" for i in range(len(self.trunk.blocks))]
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with attach(self.trunk, dict.fromkeys(sites, maps), stop=True, on_unfired="error"):
            self.trunk(x, t)
        return torch.cat([maps.get(site, step=0) for site in sites], dim=1)

    def classify(self, x: Tensor) -> Tensor:
        """Class logits ``B x num_classes`` of clean inputs ``x``."""
        return self.head(self.features(x))

    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise prediction for noisy inputs ``x_t`` at integer timesteps ``t``."""
        return self.trunk(x_t, t)

    def predict(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The trunk's raw output: the noise prediction (this model is eps-prediction only)."""
        return self.trunk(x_t, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What :meth:`predict` is trained to output: the noise."""
        return noise

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, *[1] * (x0.ndim - 1))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def denoising_loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean eps-prediction MSE at uniformly drawn timesteps."""
        t = torch.randint(self.train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return F.mse_loss(self.denoise(self.add_noise(x0, noise, t), t), noise)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(x)
