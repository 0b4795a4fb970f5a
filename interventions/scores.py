"""Feature scores for choosing SAE latents that carry a concept (inputs: per-example latent
means ``[n, d_sae]`` of examples with the concept and without it; score per latent).

- :func:`normalized_difference`: SAeUron's ``p_c - p_other`` with ``p = mu / sum(mu)`` for one step;
  :func:`normalized_difference_by_step` scores every concept against all the others at every
  denoising step at once, and :func:`above_percentile_by_step` selects each step's features;
- :func:`tfidf`: TADA's ``mean_pos * log(1 + 1 / (mean_neg + eps))``;
- :func:`difference_of_means` and :func:`cohens_d` (pooled standard deviation);
- :func:`ridge_probe` and :func:`probe_predict`: a closed-form linear classifier naming the concept
  an example's latents show (a gate that edits only the examples that show a concept).

>>> pos = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]); neg = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
>>> top_features(difference_of_means(pos, neg), 1).tolist()
[0]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

Latents = Float[Tensor, "n d_sae"]
Scores = Float[Tensor, " d_sae"]
StepLatents = Float[Tensor, "n steps d_sae"]
StepScores = Float[Tensor, "steps d_sae"]


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


def normalized_difference_by_step(latents: Mapping[str, StepLatents], eps: float = 1e-8) -> dict[str, StepScores]:
    """SAeUron's feature scores for every concept at every step.

    ``latents[c]``: token-averaged latents ``[n_prompts, steps, d_sae]`` of concept ``c``'s prompts.
    At each step, ``mu_c`` is the mean over ``c``'s prompts and ``mu_o`` the mean over the pooled
    prompts of every other concept; the score is ``mu_c / sum(mu_c) - mu_o / sum(mu_o)`` (the
    published code's ``compute_feature_importance``, eps included). Needs two or more concepts with
    the same steps and width.

    >>> lat = {"a": torch.tensor([[[2.0, 0.0]]]), "b": torch.tensor([[[1.0, 1.0]]])}
    >>> normalized_difference_by_step(lat)["a"].tolist()
    [[0.5, -0.5]]
    """
    if len(latents) < 2:
        raise ValueError(f"scoring needs two or more concepts to compare, got {list(latents)}")
    shapes = {c: tuple(t.shape[1:]) for c, t in latents.items()}
    if any(t.ndim != 3 or t.shape[0] == 0 for t in latents.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"latents must be [n_prompts > 0, steps, d_sae] with one steps x d_sae for all; got {shapes}")
    means = {c: t.float().mean(0) for c, t in latents.items()}
    counts = {c: t.shape[0] for c, t in latents.items()}
    total = sum(means[c] * counts[c] for c in means)
    out = {}
    for c, mu_c in means.items():
        mu_o = (total - mu_c * counts[c]) / (sum(counts.values()) - counts[c])
        out[c] = mu_c / (mu_c.sum(-1, keepdim=True) + eps) - mu_o / (mu_o.sum(-1, keepdim=True) + eps)
    return out


def above_percentile_by_step(scores: StepScores, percentile: float) -> list[Tensor]:
    """Per step, the indices of latents scoring strictly above that step's percentile (SAeUron:
    99.999 for styles on 20,480 latents, i.e. a handful per step)."""
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    return [above_percentile(row, percentile) for row in scores]


def ridge_probe(latents: Latents, labels: Tensor, classes: int, l2: float = 1.0) -> Float[Tensor, "d_plus_1 classes"]:
    """A linear classifier on SAE latents, fitted in closed form: ridge regression of one-hot
    ``labels`` on ``[latents, 1]`` (the bias column unpenalised). Which concept an example's latents
    show, for edits that should touch only the examples showing it (the gate of SAeUron's
    redirection in ``recipes.saeuron``); :func:`probe_predict` applies it.

    >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]]); y = torch.tensor([0, 0, 1, 1])
    >>> probe_predict(torch.tensor([[0.8, 0.3], [0.1, 0.9]]), ridge_probe(x, y, 2, l2=0.1)).tolist()
    [0, 1]
    """
    if latents.ndim != 2 or labels.shape != latents.shape[:1] or classes < 2:
        raise ValueError(
            f"latents [n, d_sae], one label per row and two or more classes; got {tuple(latents.shape)}, "
            f"{tuple(labels.shape)} labels, {classes} classes"
        )
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got {int(labels.min())}..{int(labels.max())}")
    x = torch.cat([latents.float(), torch.ones(len(latents), 1, device=latents.device)], 1)
    penalty = torch.eye(x.shape[1], device=x.device) * l2
    penalty[-1, -1] = 0.0
    y = torch.nn.functional.one_hot(labels.long(), classes).float().to(x.device)
    return torch.linalg.solve(x.T @ x + penalty, x.T @ y)


def probe_predict(latents: Latents, weights: Float[Tensor, "d_plus_1 classes"]) -> Tensor:
    """The class :func:`ridge_probe`'s ``weights`` give each row of ``latents``."""
    if latents.ndim != 2 or latents.shape[1] + 1 != weights.shape[0]:
        raise ValueError(f"latents [n, {weights.shape[0] - 1}] for these weights; got {tuple(latents.shape)}")
    x = torch.cat([latents.float(), torch.ones(len(latents), 1, device=latents.device)], 1)
    return (x @ weights.to(x)).argmax(1)
