"""The student figures: diversity and prompt agreement of teacher, student and randomly steered
student (one line per held-out seed), and a grid of their samples from the same noise."""

from __future__ import annotations

from typing import Any

from torch import Tensor

SETS = ("teacher", "student", "student_steered")
LABELS = ("teacher\n10 steps, cfg 3", "student\n2 steps", "student\n+ random steering")


def plot_student(result: dict[str, Any], path: Any) -> None:
    """Per prompt: feature and pixel pairwise distance, entropy summed over the free factors, and
    prompt agreement of the three sample sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .experiment import free_factors

    prompts = list(result["prompts"])
    panels = (
        ("feature_distance", "evaluator-feature pairwise distance"),
        ("pixel_distance", "pixel pairwise distance"),
        ("free_entropy", "entropy of the free factors (bits, summed)"),
        ("agreement", "prompt agreement"),
    )
    fig, axes = plt.subplots(len(prompts), len(panels), figsize=(4 * len(panels), 3.3 * len(prompts)), squeeze=False)
    for row, prompt in enumerate(prompts):
        free = free_factors(prompt)
        for col, (key, title) in enumerate(panels):
            ax = axes[row, col]
            for seed, sets in result["prompts"][prompt]["seeds"].items():
                ys = [
                    sum(sets[s]["entropy_bits"][f] for f in free) if key == "free_entropy" else sets[s][key]
                    for s in SETS
                ]
                ax.plot(range(len(SETS)), ys, marker="o", label=f"seed {seed}")
            ax.set_xticks(range(len(SETS)), LABELS, fontsize=7)
            ax.set_title(f"{prompt!r}: {title}", fontsize=8)
            if key == "agreement":
                ax.set_ylim(0, 1.05)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(images: dict[str, dict[str, Tensor]], path: Any, k: int = 16) -> None:
    """The first ``k`` samples of each set (rows) for each prompt, from the same noise column-wise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(p, s) for p in images for s in SETS]
    fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.55, 0.75 * len(rows)), squeeze=False)
    for ax, (prompt, s) in zip(axes[:, 0], rows, strict=True):
        x = images[prompt][s][:k].clamp(-1, 1) * 0.5 + 0.5
        strip = x.permute(2, 0, 3, 1).reshape(x.shape[2], -1, 3)  # H x (k W) x 3
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{prompt!r}: {s.replace('_', ' + ')}", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
