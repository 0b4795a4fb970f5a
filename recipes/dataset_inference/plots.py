"""Figures of a dataset-inference run: p-value against n (member suspect sets) and the
calibration of the test on non-member suspect sets (histogram and sorted p-values against the
uniform quantiles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["plot_run"]


def plot_run(
    curves: Mapping[int, Sequence[Mapping[str, float]]],
    null_p: Mapping[int, torch.Tensor],
    null_n: int,
    out: str | Path,
    title: str = "",
) -> Path:
    """``curves``: seed -> :func:`~recipes.dataset_inference.inference.p_value_curve`;
    ``null_p``: seed -> p-values of non-member suspect sets of size ``null_n``. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    for seed, curve in curves.items():
        ns = [row["n"] for row in curve]
        ax.plot(ns, [max(row["mean_p"], 1e-12) for row in curve], "o-", label=f"members, seed {seed} (mean p)")
    ax.axhline(0.01, color="k", ls="--", lw=0.8, label="p = 0.01")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("suspect samples n")
    ax.set_ylabel("p-value (one-sided Welch)")
    ax.set_title("member suspect set")
    ax.legend(fontsize=7)
    ax = axes[1]
    pooled = torch.cat(list(null_p.values())).numpy() if null_p else []
    ax.hist(pooled, bins=20, range=(0, 1), color="grey", edgecolor="k")
    ax.axhline(len(pooled) / 20, color="r", ls="--", lw=0.8, label="uniform")
    ax.set_xlabel("p-value")
    ax.set_title(f"non-member suspect sets, n = {null_n}")
    ax.legend(fontsize=7)
    ax = axes[2]
    for seed, p in null_p.items():
        q = (torch.arange(len(p)) + 0.5) / len(p)
        ax.plot(
            q.numpy(),
            p.sort().values.numpy(),
            lw=1,
            label=f"seed {seed}: {float((p < 0.05).double().mean()):.1%} < 0.05",
        )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("uniform quantile")
    ax.set_ylabel("sorted p-value")
    ax.set_title("calibration (null)")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
