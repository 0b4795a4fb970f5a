"""TADA's figures: the localisation heat maps (layers x step windows, share of the gap restored,
plus the cond-only zero-ablation) and the steering trade-off (target changed vs others kept over
strength, one curve per variant)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_localisation", "plot_tradeoff"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_localisation(locs: Sequence[Any], path: str | Path, title: str) -> Path:
    """One column per seed: the heat map of ``recovered`` (layers x columns) and, below it, the
    share of clean samples still following the prompt with each layer zero-ablated (cond rows)."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(2, len(locs), figsize=(3.6 * len(locs), 5.2), squeeze=False)
    for j, loc in enumerate(locs):
        rec = loc.recovered().numpy()
        ax = axes[0, j]
        im = ax.imshow(rec, vmin=-0.1, vmax=1.0, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(rec):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        ax.set_xticks(range(len(loc.patching.steps)), list(loc.patching.steps), fontsize=7)
        ax.set_xlabel("steps patched", fontsize=7)
        labels = getattr(loc, "row_labels", None) or [f"block {i}" for i in range(rec.shape[0])]
        ax.set_yticks(range(rec.shape[0]), labels if j == 0 else [""] * len(labels), fontsize=7)
        ax.set_title(f"seed {loc.seed}: gap restored", fontsize=9)
        ax2 = axes[1, j]
        if loc.ablation:
            ax2.bar(range(len(loc.ablation)), loc.ablation, color="tab:red")
            ax2.axhline(loc.ablation_baseline, color="k", ls="--", lw=1, label="no ablation")
            ax2.set_ylim(0, 1.05)
            ax2.set_xticks(range(len(loc.ablation)), [f"b{i}" for i in range(len(loc.ablation))])
            ax2.set_title("zero attn2 (cond): follows prompt", fontsize=9)
            ax2.legend(fontsize=7)
        else:
            ax2.axis("off")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_tradeoff(curves: Sequence[Any], path: str | Path, title: str) -> Path:
    """Target changed (x) vs other factors kept (y), one line per curve, strengths annotated;
    the acceptance corner (>= 0.8, >= 0.9) shaded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.axvspan(0.8, 1.02, ymin=(0.9 + 0.02) / 1.04, color="tab:green", alpha=0.12, label="target >= 80%, kept >= 90%")
    for c in curves:
        (line,) = ax.plot(c.target, c.kept, marker="o", label=c.label)
        for s, x, y in zip(c.strengths, c.target, c.kept, strict=True):
            ax.annotate(f"{s:g}", (x, y), fontsize=6, color=line.get_color(), xytext=(2, 2), textcoords="offset points")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("target factor changed (share of samples)")
    ax.set_ylabel("other factors kept (share of samples)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
