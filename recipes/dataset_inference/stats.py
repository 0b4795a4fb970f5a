"""The statistics of the attacks: ROC AUC with a bootstrap confidence interval, TPR at a fixed
FPR, a one-sided Welch t-test (scipy), a small L2-regularised logistic regression, and the
suspect-set size that a per-sample effect needs (:func:`expected_mean_p`, :func:`n_for_mean_p`).

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

__all__ = ["auc", "auc_ci", "tpr_at_fpr", "welch_greater", "fit_logistic", "expected_mean_p", "n_for_mean_p"]


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


def expected_mean_p(effect: float, n: int, heldout_n: int | None = None) -> float:
    """The one-sided test's p-value averaged over fresh suspect and held-out sets, for a per-sample
    standardised effect ``effect`` (mean score difference / score sd) with ``n`` suspect and
    ``heldout_n`` (default ``n``) held-out samples, every row tested.

    Why: the statistic is ``z ~ N(mu, 1)`` with ``mu = effect / sqrt(1/n + 1/heldout_n)``, and the
    mean of ``1 - Phi(z)`` is ``Phi(-mu / sqrt(2))`` (normal approximation of the Welch test). A
    mean p <= 0.01 thus needs ``mu >= 3.29``, not the 2.33 that a median p <= 0.01 needs.

    >>> round(expected_mean_p(0.2, 250, 1000), 4), round(expected_mean_p(0.0, 250), 2)
    (0.0228, 0.5)
    """
    from scipy.stats import norm

    if n < 2 or (heldout_n is not None and heldout_n < 2):
        raise ValueError(f"need n >= 2 suspect and held-out samples, got {n} and {heldout_n}")
    mu = effect / (1 / n + 1 / (heldout_n or n)) ** 0.5
    return float(norm.cdf(-mu / 2**0.5))


def n_for_mean_p(effect: float, alpha: float = 0.01, heldout_n: int | None = None, most: int = 10**6) -> int | None:
    """The smallest suspect-set size whose :func:`expected_mean_p` is ``<= alpha`` (``heldout_n``
    held-out samples, default as many as suspect ones); None if even ``most`` is not enough.

    >>> n_for_mean_p(0.2, heldout_n=1000), n_for_mean_p(0.2, heldout_n=100)
    (371, None)
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    if expected_mean_p(effect, most, heldout_n) > alpha:
        return None
    lo, hi = 2, most  # expected_mean_p falls with n: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if expected_mean_p(effect, mid, heldout_n) <= alpha else (mid + 1, hi)
    return lo
