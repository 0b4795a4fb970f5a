"""A Gaussian-mixture world whose "trained" denoiser memorises a known member set a little.

Why: an exact mixture denoiser has no training set, so nothing to infer. Here the model's density
is ``(1 - strength) p_world + strength * (1/M) sum_i N(x_i, member_std^2 I)`` over the members
``x_i`` (each member component carries its own component's class): the exact denoiser of that
mixture behaves like a denoiser that fit its training points slightly better than the rest of the
distribution. ``strength`` and ``member_std`` set how strong the membership signal is; fresh draws
from ``p_world`` are the non-members. Everything is closed form, so tests run in milliseconds.

>>> import torch
>>> world = MemorisingWorld.build(members=50, strength=0.2, seed=0)
>>> x, labels = world.fresh(10, seed=1)
>>> tuple(x.shape), tuple(world.member_x.shape), world.denoiser.prediction_type
((10, 8), (50, 8), 'epsilon')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recipes.worlds.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser, random_mixture

__all__ = ["MemorisingWorld"]


@dataclass
class MemorisingWorld:
    """The world, its member set (points and class labels) and the memorising denoiser."""

    world: GaussianMixture
    member_x: torch.Tensor
    member_labels: torch.Tensor
    denoiser: GaussianMixtureDenoiser

    @classmethod
    def build(
        cls,
        members: int = 200,
        dim: int = 8,
        components: int = 4,
        strength: float = 0.1,
        member_std: float = 0.3,
        seed: int = 0,
    ) -> MemorisingWorld:
        """A random ``components``-component world in ``dim`` dims (one class per component) and a
        denoiser that puts weight ``strength`` on ``members`` points drawn from it."""
        if not 0 <= strength < 1:
            raise ValueError(f"strength is the member set's weight in the model, in [0, 1); got {strength}")
        g = torch.Generator().manual_seed(seed)
        world = random_mixture(components, dim, g, spread=1.5, std_range=(0.6, 1.0))
        x, comp = world.sample(members, torch.Generator().manual_seed(seed + 1), return_components=True)
        labels = world.classes[comp]
        k = world.num_components
        weights = torch.cat(
            [(1 - strength) * world.weights, torch.full((members,), strength / members, dtype=torch.float64)]
        )
        means = torch.cat([world.means, x.double()])
        variances = torch.cat([world.variances, torch.full((members, dim), member_std**2, dtype=torch.float64)])
        classes = torch.cat([world.classes, labels])
        model = GaussianMixture(weights, means, variances, classes)
        assert model.num_components == k + members
        return cls(world, x, labels, model.denoiser(prediction_type="epsilon"))

    def fresh(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` non-members (points, class labels) from the world, deterministic for ``seed``."""
        x, comp = self.world.sample(n, torch.Generator().manual_seed(10_000 + seed), return_components=True)
        return x, self.world.classes[comp]
