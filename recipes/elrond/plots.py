"""The ELROND figure: components to 95% and spectral gaps per prompt and seed, the complexity
column (median gradient norm) beside them, and for each steered prompt how often
steering changed each factor and kept the prompted ones."""

from __future__ import annotations

from typing import Any


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = list(result["prompts"])
    steered = [p for p in prompts if "steering" in result["prompts"][p]]
    cells = [v for p in prompts for v in result["prompts"][p]["complexity"].values()]
    key = "median_norm" if all("median_norm" in v for v in cells) else "mean_norm"  # older results: mean only
    norms = all(key in v for v in cells)
    panels = 1 + norms + len(steered)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    for x, p in enumerate(prompts):
        c = result["prompts"][p]["complexity"]
        ys = [v["components_95"] for v in c.values()]
        gaps = [v["spectral_gap"] for v in c.values()]
        ax.scatter([x - 0.08] * len(ys), ys, color="C0", label="components to 95%" if x == 0 else None)
        ax.scatter([x] * len(gaps), gaps, color="C1", marker="s", label="spectral gap" if x == 0 else None)
        unit = [v["unit"]["spectral_gap"] for v in c.values() if "unit" in v]
        ax.scatter([x + 0.08] * len(unit), unit, color="C2", marker="^", label="gap, unit rows" if x == 0 else None)
        horn = [v["unit"]["parallel_analysis"] for v in c.values() if "parallel_analysis" in v.get("unit", {})]
        label = "parallel analysis, unit rows" if x == 0 else None
        ax.scatter([x + 0.16] * len(horn), horn, color="C3", marker="x", label=label)
    ax.set_xticks(range(len(prompts)), [repr(p) for p in prompts], rotation=20, fontsize=8)
    ax.set_ylabel("directions")
    distance = result["setting"].get("distance", "pixel")
    ax.set_title(f"concept complexity, {distance} distance (one point per seed)", fontsize=9)
    ax.legend(fontsize=8)
    if norms:
        ax = axes[0, 1]
        for x, p in enumerate(prompts):
            ys = [v[key] for v in result["prompts"][p]["complexity"].values()]
            ax.scatter([x] * len(ys), ys, color="C4")
        ax.set_xticks(range(len(prompts)), [repr(p) for p in prompts], rotation=20, fontsize=8)
        ax.set_ylim(bottom=0)
        what = "median" if key == "median_norm" else "mean"
        ax.set_ylabel(f"{what} |gradient|")
        title = f"complexity column: {what} norm of the concept-token gradients, {distance} distance"
        ax.set_title(title, fontsize=9)
    for ax, p in zip(axes[0, 1 + norms :], steered, strict=True):
        runs = list(result["prompts"][p]["steering"].values())
        names = [k for k in runs[0] if k != "unsteered_keep"]
        factors = list(runs[0][names[0]]["changed"])
        width = 0.8 / len(factors)
        for i, f in enumerate(factors):
            means = [sum(r[k]["changed"][f] for r in runs) / len(runs) for k in names]
            ax.bar([j + i * width for j in range(len(names))], means, width, label=f"{f} changed")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"steering {p!r} at strength {result['strength']:g} (mean over {len(runs)} seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
