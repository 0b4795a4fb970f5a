"""Training tensors for the calorimeter GANs, from a calorimeter-world data set.

:func:`prepare` turns the dict of :func:`recipes.worlds.calorimeter.generate_dataset` (or of
``load_dataset``) into :class:`GanData`: ``log1p`` images ``(N, 1, H, W)``, raw conditions, the
per-condition spread ``sigma`` min-max scaled to ``[0, 1]`` (the papers' ``std_proton``; the
range comes from the training set and is reused for held-out data), the photon sums, and the
brightest-pixel position (row, col) in pixels (the papers' ``max_x``, ``max_y``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from .losses import minmax_scale

__all__ = ["GanData", "prepare", "make_split"]


@dataclass
class GanData:
    images: torch.Tensor  # (N, 1, H, W) float32, log1p(photons)
    conditions: torch.Tensor  # (N, 9) raw
    sigma: torch.Tensor  # (N,) per-condition spread of the photon sum, min-max scaled
    photon_sum: torch.Tensor  # (N,)
    position: torch.Tensor  # (N, 2) brightest pixel (row, col), pixels
    regime: torch.Tensor  # (N,) int64
    sigma_range: tuple[float, float]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> GanData:
        """The same data on ``device`` (this object itself when it is there already)."""
        if self.images.device == device:
            return self
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return GanData(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})

    def subset(self, index: torch.Tensor) -> GanData:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v[index]
        return GanData(**kw)


def prepare(data: Mapping[str, torch.Tensor], sigma_range: tuple[float, float] | None = None) -> GanData:
    """:class:`GanData` from a calorimeter data set; ``sigma_range``: the training set's (min, max) std."""
    images = data["images"].to(torch.float32)
    std = data["photon_sum_std"].to(torch.float32)
    if sigma_range is None:
        sigma_range = (float(std.min()), float(std.max()))
    pos = data["brightest"].to(torch.float32)
    return GanData(
        images=torch.log1p(images).unsqueeze(1),
        conditions=data["conditions"].to(torch.float32),
        sigma=minmax_scale(std, *sigma_range),
        photon_sum=data["photon_sum"].to(torch.float32),
        position=pos,
        regime=data["regime"].to(torch.int64),
        sigma_range=sigma_range,
    )


def make_split(
    n_train: int, n_test: int, repeats: int = 4, test_repeats: int = 8, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train and held-out data sets from the world: disjoint, independently drawn conditions."""
    from recipes.worlds.calorimeter import generate_dataset

    train = generate_dataset(n_train, repeats, torch.Generator().manual_seed(seed))
    test = generate_dataset(n_test, test_repeats, torch.Generator().manual_seed(seed + 1_000_003))
    return train, test
