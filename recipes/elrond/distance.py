"""Distances between a regenerated image A and a target image B for ELROND's gradients.

``pixel`` is the paper's: the mean squared error of the images. On the shapes world every prompt,
even a fully specified one, leaves the shape's position and size free, and in pixel MSE those two
continuous nuisances are most of the difference between two samples (the authors measure the same
effect per feature in ``synthetic_dataset/feature_mse.py`` and build their datasets so that an
excluded factor renders at a fixed neutral value). ``canonical`` compares the images after each
is moved to a canonical frame: its foreground's centroid to the centre and its foreground's RMS
radius to :data:`CANONICAL_RADIUS` (moment normalisation, differentiable through
``grid_sample``), so position and size no longer count and what is left is shape, colour and
texture.

>>> import torch
>>> from recipes.worlds.shapes import render
>>> one = lambda v: torch.tensor([v])
>>> a = render(one(0), one(0), one(0), one(5.0), one(6.0), one(3.6))   # a small red solid circle
>>> b = render(one(0), one(0), one(0), one(10.5), one(9.0), one(4.9))  # moved and larger
>>> c = render(one(0), one(2), one(0), one(5.0), one(6.0), one(3.6))   # blue, same place
>>> pixel(a, b) > pixel(a, c), canonical(a, b) < canonical(a, c)
(tensor([True]), tensor([True]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CANONICAL_RADIUS", "DISTANCES", "canonical", "canonicalise", "pixel"]

# The RMS radius of a disk of the world's mean size (4.25 px, 16 px canvas) in grid_sample's
# [-1, 1] units: 4.25 / sqrt(2) / 8. Chosen from the world's geometry, never from a measurement.
CANONICAL_RADIUS = 0.375


def pixel(x: Tensor, y: Tensor) -> Tensor:
    """Per-row mean squared error (the paper's distance)."""
    return ((x.float() - y.float()) ** 2).flatten(1).mean(1)


def canonicalise(images: Tensor) -> Tensor:
    """``images`` (``B x C x H x W`` in ``[-1, 1]``, background -1) resampled so that each one's
    foreground (brightness above the background) has its centroid at the centre and its RMS radius
    at :data:`CANONICAL_RADIUS`; the background stays -1 outside the frame."""
    if images.ndim != 4:
        raise ValueError(f"expected B x C x H x W images, got shape {tuple(images.shape)}")
    x = images.float() + 1  # background 0, so grid_sample's zero padding is background
    b, _, h, w = x.shape
    weight = x.amax(1).clamp_min(0) + 1e-6  # B x H x W
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    mass = weight.sum((1, 2))
    cx, cy = (weight * gx).sum((1, 2)) / mass, (weight * gy).sum((1, 2)) / mass
    spread = (weight * ((gx - cx[:, None, None]) ** 2 + (gy - cy[:, None, None]) ** 2)).sum((1, 2)) / mass
    scale = spread.clamp_min(1e-8).sqrt() / CANONICAL_RADIUS  # > 1: the shape is larger than canonical
    grid = torch.stack([gx, gy], -1)[None] * scale[:, None, None, None]
    grid = grid + torch.stack([cx, cy], -1)[:, None, None, :]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def canonical(x: Tensor, y: Tensor) -> Tensor:
    """Per-row mean squared error of the canonicalised images (position and size factored out)."""
    return pixel(canonicalise(x), canonicalise(y))


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"pixel": pixel, "canonical": canonical}
