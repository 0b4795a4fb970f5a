"""The paper's continual-learning metrics over a score matrix ``S[t, t']`` (task ``t``'s score
after training task ``t'``), as the authors' ``eval/metrics.py`` computes them.

>>> S = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
>>> final_average(S), forgetting(S)
(0.75, 0.25)
"""

from __future__ import annotations

import torch

__all__ = ["final_average", "forgetting"]


def _check(S: torch.Tensor) -> torch.Tensor:
    S = torch.as_tensor(S, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"expected a square T x T score matrix (task x after-task), got shape {tuple(S.shape)}")
    return S


def final_average(S: torch.Tensor) -> float:
    """Mean over tasks of the score after the last task: ``mean_t S[t, T-1]``."""
    S = _check(S)
    return S[:, -1].mean().item()


def forgetting(S: torch.Tensor) -> float:
    """``mean_t (max_{t' >= t} S[t, t'] - S[t, T-1])`` over every task (the last contributes 0)."""
    S = _check(S)
    T = S.shape[0]
    return sum((S[t, t:].max() - S[t, -1]).item() for t in range(T)) / T
