"""The paper's continual-learning metrics over a score matrix ``S[t, t']`` (task ``t``'s score
after training task ``t'``), as the authors' ``eval/metrics.py`` computes them.

>>> S = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
>>> final_average(S), forgetting(S), forgetting_per_task(S)
(0.75, 0.25, [0.5, 0.0])
"""

from __future__ import annotations

import torch

__all__ = ["final_average", "forgetting", "forgetting_per_task"]


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
