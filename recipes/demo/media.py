"""The demo's media files: image grids and the patching heat map (PNG, matplotlib) and WAV clips
(the standard library's ``wave``: 16-bit mono PCM, which every browser's ``<audio>`` plays)."""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_grid", "save_heatmap", "save_wav"]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def save_grid(
    path: Path, images: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str = ""
) -> Path:
    """``images`` ``[rows, cols, 3, H, W]`` in ``[0, 1]`` as one labelled PNG grid."""
    rows, cols = images.shape[:2]
    plt, fig = _figure(0.9 * cols + 1.6, 0.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    pixels = images.detach().float().cpu().clamp(0, 1).permute(0, 1, 3, 4, 2).numpy()
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(pixels[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_labels[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_heatmap(path: Path, values: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str) -> Path:
    """A ``rows x cols`` heat map with every cell's value written in it."""
    plt, fig = _figure(0.55 * len(cols) + 4.2, 0.45 * len(rows) + 1.6)
    ax = fig.subplots()
    data = values.detach().float().cpu().numpy()
    bound = max(float(np.abs(data).max()), 1e-6)
    im = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("denoising step patched")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            dark = abs(data[i, j]) > 0.6 * bound
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_wav(path: Path, audio: torch.Tensor, rate: int) -> Path:
    """A mono float waveform (clipped to ``[-1, 1]``) as 16-bit PCM."""
    pcm = (audio.detach().float().cpu().clamp(-1, 1).numpy() * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path
