"""The statistics of the attacks: ROC AUC with a bootstrap confidence interval, TPR at a fixed
FPR, a one-sided Welch t-test (scipy), and a small L2-regularised logistic regression.

Written here rather than taken from scikit-learn: the project does not depend on it, and each of
these is a few lines of torch (the AUC is the Mann-Whitney statistic, ties counted one half).

>>> import torch
>>> auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]))
1.0
>>> round(welch_greater(torch.tensor([2.0, 2.1, 1.9, 2.2]), torch.tensor([1.0, 1.1, 0.9, 1.2])), 6) < 1e-3
True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["auc", "auc_ci", "tpr_at_fpr", "welch_greater", "fit_logistic"]


def auc(pos: Tensor, neg: Tensor) -> float:
    """P(score of a positive > score of a negative) (ties count 1/2): the ROC AUC."""
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    d = pos.double().flatten()[:, None] - neg.double().flatten()[None, :]
    return float((d > 0).double().mean() + 0.5 * (d == 0).double().mean())


def auc_ci(
    pos: Tensor, neg: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: the AUC and its percentile bootstrap interval (both sets resampled)."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        p = pos[torch.randint(len(pos), (len(pos),), generator=g)]
        n = neg[torch.randint(len(neg), (len(neg),), generator=g)]
        values.append(auc(p, n))
    v = torch.tensor(values, dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(v, q).tolist()
    return auc(pos, neg), lo, hi


def tpr_at_fpr(pos: Tensor, neg: Tensor, fpr: float = 0.01) -> float:
    """The fraction of positives above the threshold that lets at most ``fpr`` of the negatives
    through (the ``ceil((1 - fpr) N)``-th smallest negative score, strict inequality)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr}")
    neg_sorted = neg.double().flatten().sort().values
    allowed = int(fpr * len(neg_sorted))  # negatives allowed above the threshold
    threshold = neg_sorted[len(neg_sorted) - 1 - allowed]
    return float((pos.double() > threshold).double().mean())


def welch_greater(a: Tensor, b: Tensor) -> float:
    """One-sided Welch t-test p-value for ``mean(a) > mean(b)`` (``scipy.stats.ttest_ind``)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the t-test needs at least 2 scores per set, got {len(a)} and {len(b)}")
    return float(ttest_ind(a.double().numpy(), b.double().numpy(), equal_var=False, alternative="greater").pvalue)


def fit_logistic(pos: Tensor, neg: Tensor, l2: float = 1e-2, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Weights ``(F,)`` and bias of a logistic regression of positive vs negative rows (L-BFGS,
    balanced classes, L2 penalty ``l2`` on the weights). Score a row ``x`` with ``x @ w + b``."""
    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    sample_w = torch.cat([torch.full((len(pos),), 0.5 / len(pos)), torch.full((len(neg),), 0.5 / len(neg))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
