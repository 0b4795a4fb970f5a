"""Figures of the taba recipe (matplotlib, Agg): the triangle, flat-region statistics with and
without the fix, assignment accuracies, sample / inversion grids, and the training-dynamics curves.

>>> import matplotlib
>>> from recipes.taba.plots import plot_dynamics
>>> fig = plot_dynamics({"train_steps": [1, 2], "curves": {"match_final": [0.5, 1.0]}, "stable_from": {}})
>>> len(fig.axes)
2
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["plot_measurements", "plot_dynamics", "plot_grid"]


def plot_measurements(result: dict, title: str = "") -> Any:
    """Four panels per inversion variant: side lengths, corner angles, flat / textured std of the
    inverted noise (the noise's own as a reference line), nearest-neighbour assignment accuracies
    (noise <-> sample as reference lines)."""
    variants = result["variants"]
    names = list(variants)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    x = range(len(names))
    panels = (
        (axes[0], "distance", "mean L2 distance"),
        (axes[1], "angle", "angle (degrees)"),
        (axes[3], "assign", "NN accuracy"),
    )
    for ax, key, label in panels:
        parts = list(variants[names[0]][key])
        width = 0.8 / len(parts)
        for j, part in enumerate(parts):
            ax.bar([i + j * width for i in x], [variants[n][key][part] for n in names], width, label=part)
        ax.set_xticks([i + 0.4 - width / 2 for i in x], names, rotation=20)
        ax.set_ylabel(label)
    for (part, value), style in zip(result["assign"].items(), ("--", ":"), strict=True):
        axes[3].axhline(value, color="k", ls=style, lw=1, label=part)
    ax = axes[2]
    ax.bar([i - 0.2 for i in x], [variants[n]["flat"]["std_flat"] for n in names], 0.4, label="flat")
    ax.bar([i + 0.2 for i in x], [variants[n]["flat"]["std_textured"] for n in names], 0.4, label="textured")
    ax.axhline(result["noise_flat"]["std_flat"], color="k", ls="--", lw=1, label="original noise (flat)")
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel("std of inverted noise")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_dynamics(dyn: dict, title: str = "") -> Any:
    """The curves of :func:`recipes.taba.experiment.training_dynamics` against the training step
    (log x): accuracies left, distances (log y) right; a dotted line where a curve stabilises."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = dyn["train_steps"]
    for name, values in dyn["curves"].items():
        ax = axes[0] if all(0 <= v <= 1 for v in values) and name != "to_final" else axes[1]
        (line,) = ax.plot(steps, values, marker="o", label=name)
        at = dyn["stable_from"].get(name)
        if at is not None:
            ax.axvline(at, color=line.get_color(), ls=":", lw=1)
    axes[0].set_ylabel("nearest-neighbour accuracy")
    axes[1].set_ylabel("distance to the final samples / their spread")
    axes[1].set_yscale("symlog", linthresh=0.1)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_grid(rows: dict[str, torch.Tensor], n: int = 8, title: str = "") -> Any:
    """One row of images per entry (``(B, C, H, W)``; the first 3 channels, min-max scaled per
    image), ``n`` columns."""
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for r, (name, x) in enumerate(rows.items()):
        for c in range(n):
            img = x[c, :3].detach().double()
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            axes[r][c].imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy(), cmap="gray")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=7, rotation=0, ha="right")
    fig.suptitle(title)
    return fig
