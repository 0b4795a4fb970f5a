"""The measurements of "There and Back Again" (arXiv 2410.23530) on batches of (noise, sample,
inverted noise), each row one flattened tensor.

- :func:`triangle`: L2 distances between the three corners and the angles at each corner (the
  authors' ``calc_distances`` / ``calc_angles``: angles from the mean cosine over the batch), plus
  per-row values for plots.
- :func:`assignment_accuracy`: the fraction of rows whose nearest neighbour (L2) in the other set is
  their own partner, e.g. noise -> sample: is the sample closest to noise i the one made from it.
- :func:`flat_stats`: per-coordinate spread of the inverted noise over rows, inside a mask of flat
  coordinates and outside it (Gaussian noise has 1 everywhere).
- :func:`flat_mask`: flat pixels of images, where the 3x3 neighbourhood barely varies.
- :func:`stable_from`: the first checkpoint from which a curve stays within a tolerance of its end.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> noise = torch.randn(16, 64, generator=g)
>>> sample = 0.5 * noise + 0.1 * torch.randn(16, 64, generator=g)
>>> assignment_accuracy(noise, sample)
1.0
>>> round(triangle(noise, sample, sample)["distance"]["sample_inverted"], 3)
0.0
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["triangle", "assignment_accuracy", "flat_stats", "flat_mask", "stable_from"]


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def _angle(a: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor]:
    cos = F.cosine_similarity(a, b, dim=1)
    return math.degrees(math.acos(max(-1.0, min(1.0, float(cos.mean()))))), torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def triangle(noise: torch.Tensor, sample: torch.Tensor, inverted: torch.Tensor) -> dict:
    """Mean (and std) of the three side lengths and the angle at each corner, in degrees."""
    n, s, i = _rows(noise), _rows(sample), _rows(inverted)
    sides = {"noise_sample": n - s, "noise_inverted": n - i, "sample_inverted": s - i}
    dist = {k: v.norm(dim=1) for k, v in sides.items()}
    corners = {"noise": (s - n, i - n), "sample": (n - s, i - s), "inverted": (n - i, s - i)}
    angles = {k: _angle(a, b) for k, (a, b) in corners.items()}
    return {
        "distance": {k: float(v.mean()) for k, v in dist.items()},
        "distance_std": {k: float(v.std()) for k, v in dist.items()},
        "angle": {k: a for k, (a, _) in angles.items()},
        "per_row": {
            "distance": {k: v.tolist() for k, v in dist.items()},
            "angle": {k: r.tolist() for k, (_, r) in angles.items()},
        },
    }


def assignment_accuracy(source: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows ``i`` with ``argmin_j |source_i - target_j| == i``."""
    d = torch.cdist(_rows(source), _rows(target))
    return float((d.argmin(dim=1) == torch.arange(d.shape[0])).double().mean())


def flat_stats(inverted: torch.Tensor, flat: torch.Tensor) -> dict[str, float]:
    """Std over rows of each coordinate of ``inverted``, averaged over ``flat`` coordinates (a bool
    mask of one row's shape, or of the batch's shape for per-row masks) and over the others; with a
    per-row mask, the std is that of all flat values pooled. Also the mean absolute value. NaN where
    the mask selects nothing."""
    x = inverted.double()
    if flat.shape == x.shape[1:]:
        per_coord = x.std(dim=0)
        flat_std, textured_std = _mean(per_coord[flat]), _mean(per_coord[~flat])
        flat_values = x[:, flat]
    elif flat.shape == x.shape:
        flat_std, textured_std, flat_values = _std(x[flat]), _std(x[~flat]), x[flat]
    else:
        raise ValueError(f"flat mask {tuple(flat.shape)} fits neither a row {tuple(x.shape[1:])} nor the batch")
    return {
        "std_flat": flat_std,
        "std_textured": textured_std,
        "mean_abs_flat": _mean(flat_values.abs()),
        "flat_fraction": float(flat.double().mean()),
    }


def _mean(v: torch.Tensor) -> float:
    return float(v.mean()) if v.numel() else math.nan


def _std(v: torch.Tensor) -> float:
    return float(v.std()) if v.numel() > 1 else math.nan


def flat_mask(images: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """``(B, C, H, W)`` bool: the pixel's 3x3 neighbourhood (all channels) has a std below
    ``threshold`` (images in [-1, 1]); borders use replicate padding."""
    x = F.pad(images.double(), (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(x, 3)  # B, C*9, H*W
    std = patches.std(dim=1).reshape(images.shape[0], 1, *images.shape[2:])
    return (std < threshold).expand_as(images)


def stable_from(steps: list[int], values: list[float], tol: float) -> int | None:
    """The first step from which every later value is within ``tol`` of the last one (None: the
    curve never settles before its end)."""
    end = values[-1]
    for k, step in enumerate(steps[:-1]):
        if all(abs(v - end) <= tol for v in values[k:]):
            return step
    return None
