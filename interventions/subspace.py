"""Principal directions of a set of vectors (gradients, activation differences) and how many of
them a set needs: the PCA / SVD tools that ELROND-style analyses share.

``pca`` keeps the components whose explained-variance ratio exceeds ``2.5 / min(N, D)`` by
default (ELROND's rule: a component must explain 2.5x the share of an isotropic spread);
``complexity`` counts the components that reach 95% of the variance and finds the spectral gap
``argmax_i(s_i - s_{i+1}) + 1`` of the singular values. Both centre the rows first and run one
SVD (``torch.linalg.svd`` on the ``N x D`` matrix: the Gram trick of the paper is what it does
internally for ``N < D``).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(200, 2, generator=g) @ torch.eye(2, 16) * torch.tensor([3.0, 2.0] + [0.0] * 14)
>>> x = x + 0.01 * torch.randn(200, 16, generator=g)  # two directions: ratios above 2.5 / 16 are kept
>>> directions, ratios = pca(x)
>>> directions.shape, [round(float(r), 2) for r in ratios]
(torch.Size([2, 16]), [0.63, 0.37])
>>> c = complexity(x)
>>> c["components_95"], c["spectral_gap"], c["explained"][:3]
(2, 2, [0.6258, 0.3741, 0.0])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["complexity", "pca", "spectrum"]


def spectrum(x: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values (descending) and right singular vectors (rows) of the centred rows of ``x``
    (``N x D``, at least two rows), in float64."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected an N x D matrix with N >= 2 rows, got shape {tuple(x.shape)}")
    centred = x.double() - x.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return s, vh


def pca(x: Tensor, threshold: float | None = None) -> tuple[Tensor, Tensor]:
    """Unit directions (rows, in ``x``'s dtype) whose explained-variance ratio exceeds
    ``threshold`` (default ``2.5 / min(N, D)``), most explained first, and their ratios. The sign
    of each direction is fixed so that its largest coordinate is positive (SVD signs are arbitrary)."""
    s, vh = spectrum(x)
    ratio = s**2 / (s**2).sum().clamp_min(1e-300)
    cut = 2.5 / min(x.shape) if threshold is None else threshold
    keep = ratio > cut
    keep[0] = True  # the first component always: an isotropic cloud still has a "top" direction
    vh = vh[keep]
    sign = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    return (vh * sign).to(x.dtype), ratio[keep].to(x.dtype)


def complexity(x: Tensor, variance: float = 0.95) -> dict[str, int | list[float]]:
    """How many directions the rows of ``x`` span: ``components_95`` (the fewest components whose
    cumulative explained variance reaches ``variance``), ``spectral_gap``
    (``argmax_i(s_i - s_{i+1}) + 1``) and the explained-variance ratios (4 decimals)."""
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    s, _ = spectrum(x)
    ratio = s**2 / (s**2).sum().clamp_min(1e-300)
    reached = torch.cumsum(ratio, 0) >= variance - 1e-12
    gap = int(torch.argmax(s[:-1] - s[1:])) + 1 if len(s) > 1 else 1
    return {
        "components_95": int(torch.nonzero(reached)[0]) + 1,
        "spectral_gap": gap,
        "explained": [round(float(r), 4) for r in ratio],
    }
