"""The paper's continual-learning metrics over a score matrix ``S[t, t']`` (task ``t``'s score
after training task ``t'``), as the authors' ``eval/metrics.py`` computes them.

>>> S = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
>>> final_average(S), forgetting(S), forgetting_per_task(S)
(0.75, 0.25, [0.5, 0.0])

Every score is an accuracy over ``n`` generated images, so a forgetting value carries binomial noise;
:func:`forgetting_difference_interval` says whether two methods' forgetting differ beyond it.
"""

from __future__ import annotations

import torch

__all__ = ["final_average", "forgetting", "forgetting_per_task", "forgetting_difference_interval"]


def _check(S: torch.Tensor) -> torch.Tensor:
    S = torch.as_tensor(S, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"expected a square T x T score matrix (task x after-task), got shape {tuple(S.shape)}")
    return S


def final_average(S: torch.Tensor) -> float:
    """Mean over tasks of the score after the last task: ``mean_t S[t, T-1]``."""
    S = _check(S)
    return S[:, -1].mean().item()


def forgetting_per_task(S: torch.Tensor) -> list[float]:
    """Each task's ``max_{t' >= t} S[t, t'] - S[t, T-1]`` (its best score since taught minus its last)."""
    S = _check(S)
    return [(S[t, t:].max() - S[t, -1]).item() for t in range(S.shape[0])]


def forgetting(S: torch.Tensor) -> float:
    """``mean_t (max_{t' >= t} S[t, t'] - S[t, T-1])`` over every task (the last contributes 0)."""
    per_task = forgetting_per_task(S)
    return sum(per_task) / len(per_task)


def _forgetting_batched(S: torch.Tensor) -> torch.Tensor:
    """:func:`forgetting` of every ``T x T`` matrix in the last two dimensions of ``S``."""
    T = S.shape[-1]
    before = torch.ones(T, T, dtype=torch.bool).tril(-1)  # S[t, t'] with t' < t: not yet taught
    best = S.masked_fill(before, float("-inf")).amax(-1)
    return (best - S[..., -1]).mean(-1)


def forgetting_difference_interval(
    A: torch.Tensor,
    B: torch.Tensor,
    n: int,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``forgetting(A) - forgetting(B)`` and its parametric-bootstrap ``level`` interval, when every
    score is an accuracy over ``n`` images.

    Each score ``S[t, t']`` of both methods is redrawn as ``Binomial(n, S[t, t']) / n`` (independently:
    only the scores are recorded, not which images were right), ``resamples`` times; the interval is
    the percentile interval of the redrawn differences. ``A`` and ``B`` may also be ``seeds x T x T``
    stacks: then the difference is of the mean forgetting over seeds. An interval that excludes 0 is a
    difference the evaluation's sampling noise alone does not explain.

    >>> A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # task 1 forgotten completely
    >>> B = torch.tensor([[1.0, 0.75], [0.0, 1.0]])
    >>> d, lo, hi = forgetting_difference_interval(A, B, n=64)
    >>> d, lo > 0
    (0.375, True)
    """
    A, B = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(B, dtype=torch.float64)
    if A.shape != B.shape or A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2] or A.shape[-1] < 1:
        raise ValueError(
            f"expected two T x T score matrices (or seeds x T x T stacks) of one shape, got {tuple(A.shape)} "
            f"and {tuple(B.shape)}"
        )
    if n < 1 or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1, resamples >= 1 and 0 < level < 1, got n={n}, {resamples=}, {level=}")
    for name, S in (("A", A), ("B", B)):
        if not ((S >= 0) & (S <= 1)).all():
            raise ValueError(f"{name} holds scores outside [0, 1]; expected accuracies over n images")
    g = torch.Generator().manual_seed(seed)
    count = torch.full((resamples, *A.shape), float(n), dtype=torch.float64)

    def redraw(S: torch.Tensor) -> torch.Tensor:
        return torch.binomial(count, S.expand_as(count), generator=g) / n

    point = _forgetting_batched(A) - _forgetting_batched(B)
    draws = _forgetting_batched(redraw(A)) - _forgetting_batched(redraw(B))
    if A.ndim == 3:  # mean over seeds
        point, draws = point.mean(-1), draws.mean(-1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return point.item(), lo, hi
