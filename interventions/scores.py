"""Feature scores for choosing SAE latents that carry a concept (inputs: per-example latent
means ``[n, d_sae]`` of examples with the concept and without it; score per latent).

- :func:`normalized_difference`: SAeUron's ``p_c - p_other`` with ``p = mu / sum(mu)``, computed
  per timestep by the caller (one call per step);
- :func:`tfidf`: TADA's ``mean_pos * log(1 + 1 / (mean_neg + eps))``;
- :func:`difference_of_means` and :func:`cohens_d` (pooled standard deviation).

>>> pos = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]); neg = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
>>> top_features(difference_of_means(pos, neg), 1).tolist()
[0]
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

Latents = Float[Tensor, "n d_sae"]
Scores = Float[Tensor, " d_sae"]


def normalized_difference(concept: Latents, other: Latents, eps: float = 1e-12) -> Scores:
    mu_c, mu_o = concept.float().mean(0), other.float().mean(0)
    return mu_c / mu_c.sum().clamp_min(eps) - mu_o / mu_o.sum().clamp_min(eps)


def tfidf(positive: Latents, negative: Latents, eps: float = 1e-6) -> Scores:
    mean_pos, mean_neg = positive.float().mean(0), negative.float().mean(0)
    return mean_pos * torch.log1p(1.0 / (mean_neg + eps))


def difference_of_means(positive: Latents, negative: Latents) -> Scores:
    return positive.float().mean(0) - negative.float().mean(0)


def cohens_d(positive: Latents, negative: Latents, eps: float = 1e-12) -> Scores:
    """Difference of means over the pooled standard deviation (needs 3 or more examples in all)."""
    p, n = positive.float(), negative.float()
    n_p, n_n = p.shape[0], n.shape[0]
    if n_p < 1 or n_n < 1 or n_p + n_n < 3:
        raise ValueError(f"Cohen's d needs >= 1 example per group and >= 3 in all; got {n_p} and {n_n}")
    squares = (p - p.mean(0)).pow(2).sum(0) + (n - n.mean(0)).pow(2).sum(0)  # (n - 1) var, 0 for one example
    pooled = squares / (n_p + n_n - 2)
    return (p.mean(0) - n.mean(0)) / pooled.sqrt().clamp_min(eps)


def top_features(scores: Scores, n: int) -> Tensor:
    """Indices of the ``n`` highest-scoring latents, best first."""
    return scores.topk(min(n, scores.numel())).indices


def above_percentile(scores: Scores, percentile: float) -> Tensor:
    """Indices of latents scoring above a percentile (SAeUron uses 99.99-99.999)."""
    threshold = torch.quantile(scores.float(), percentile / 100.0)
    return torch.nonzero(scores > threshold).flatten()
