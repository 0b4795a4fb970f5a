"""Ablations of the calorimeter GAN recipes on held-out conditions, several seeds.

::

    python -m recipes.gan.ablations --seeds 0 1 2 --epochs 5 --out recipes/results

Runs, per seed (the data set is fixed by ``--data-seed``; the seed sets initialisation, shuffling
and noise):

=================  ===============================================================
``sdi_gan``        SDI-GAN with SDI, intensity and regressor (width 8)
``no_intensity``   the same without the intensity loss
``no_aux``         the same without the brightest-pixel regressor
``no_sdi``         the same without the SDI loss
``sdi_x10``        the same with a ten times stronger SDI loss (``l_div`` 1.0 instead of 0.1)
``single_3x``      one SDI-GAN of about the total size of the 3-expert mixture
                   (generator width 21, discriminator and regressor width 24)
``single_3x_halflr`` ``single_3x`` with half the generator / discriminator / regressor learning rates
``expertsim``      ExpertSim: router + 3 SDI-GAN experts of width 8
``expertsim_real`` the same, differentiation term on the real photon sums
``expertsim_b192`` ExpertSim with batches of 192 for 3x the epochs: the same number of steps, each
                   expert sees ~64 events a step, and a step costs about what ``single_3x``'s does
=================  ===============================================================

and writes ``calorimeter_gan_ablation.json`` (every run's metrics, then means, stds and per-seed
paired differences), ``calorimeter_gan_ablation.png`` (the metrics per run) and the real vs
generated comparison plots of seed 0's SDI-GAN and ExpertSim. Runs already in the JSON are not
repeated, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import numpy as np
import torch

from .cli import summary
from .data import make_split
from .evaluation import plot_comparison
from .trainer import GanConfig

__all__ = [
    "VARIANTS",
    "variant_config",
    "run_variant",
    "sign_test_p",
    "summarise",
    "plot_summary",
    "plot_curves",
    "main",
]

VARIANTS: dict[str, dict[str, Any]] = {
    "sdi_gan": {},
    "no_intensity": {"intensity": False},
    "no_aux": {"aux": False},
    "no_sdi": {"sdi": False},
    "sdi_x10": {"l_div": 1.0},
    "single_3x": {"width": 21, "d_width": 24, "aux_width": 24},
    "single_3x_halflr": {"width": 21, "d_width": 24, "aux_width": 24, "lr_g": 5e-4, "lr_d": 2e-4, "lr_aux": 5e-4},
    "expertsim": {"n_experts": 3},
    "expertsim_real": {"n_experts": 3, "diff_source": "real"},
    "expertsim_b192": {"n_experts": 3, "batch_size": 192, "epochs_x": 3},
}
METRICS = ("ws_channels", "ws_channels_late", "ws_photon_sum", "position_error", "spread_corr", "spread_corr_log")
# (metric, variant that should be worse, variant that should be better, "lower" or "higher" is better)
CLAIMS = (
    ("ws_photon_sum", "no_intensity", "sdi_gan", "lower"),
    ("position_error", "no_aux", "sdi_gan", "lower"),
    ("spread_corr", "no_sdi", "sdi_gan", "higher"),
    ("spread_corr", "no_sdi", "sdi_x10", "higher"),
    ("ws_channels", "single_3x", "expertsim", "lower"),
    ("ws_channels_late", "single_3x", "expertsim", "lower"),
    ("ws_channels", "single_3x_halflr", "expertsim", "lower"),
    ("ws_channels_late", "single_3x_halflr", "expertsim", "lower"),
    ("ws_channels_late", "sdi_gan", "expertsim", "lower"),
    ("ws_channels", "single_3x", "expertsim_real", "lower"),
    ("ws_channels", "single_3x", "expertsim_b192", "lower"),
)


def variant_config(name: str, seed: int, epochs: int, **extra: Any) -> GanConfig:
    from recipes.expertsim import default_config as moe_default
    from recipes.sdi_gan import default_config as sdi_default

    kw = {**VARIANTS[name], "seed": seed, **extra}
    kw["epochs"] = epochs * kw.pop("epochs_x", 1)
    return moe_default(**kw) if kw.get("n_experts", 1) > 1 else sdi_default(**kw)


def run_variant(
    name: str, cfg: GanConfig, data: tuple, test_repeats: int, curve_every: int | None = None
) -> tuple[dict[str, Any], Any]:
    """Train and evaluate one variant; with ``curve_every``, also ``ws_channels_late``: the mean
    5-channel Wasserstein over the curve's points in the second half of training (one end-of-run
    number of a GAN depends on the epoch it stopped at)."""
    from recipes import expertsim, sdi_gan

    recipe = expertsim if cfg.n_experts > 1 else sdi_gan
    metrics = recipe.run(cfg, test_repeats=test_repeats, data=data, progress=False, curve_every=curve_every)
    trainer = metrics.pop("_trainer")
    metrics["variant"] = name
    late = [p["ws_channels"] for p in metrics.get("curve", []) if p["epoch"] > trainer.epoch / 2]
    if late:
        metrics["ws_channels_late"] = float(np.mean(late))
    return metrics, trainer


def sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: the chance of at least ``wins`` of ``n`` seeds going one way when either
    way is equally likely (3/3 gives 0.125: three seeds can never reach p < 0.05)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    table: dict[str, Any] = {}
    for name, rs in by.items():
        entry: dict[str, Any] = {"seeds": [r["config"]["seed"] for r in rs]}
        keys = [k for k in METRICS if all(k in r for r in rs)]
        keys += ["routing_purity", "routing_consistency", "routing_nmi"] if "routing" in rs[0] else []
        for k in keys:
            vals = [r["routing"][k.split("_")[1]] if k.startswith("routing") else r[k] for r in rs]
            entry[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}
        entry["train_cpu_s"] = float(np.mean([r["train_cpu_s"] for r in rs]))
        entry["steps"] = rs[0]["steps"]
        entry["parameters"] = rs[0]["parameters"]
        table[name] = entry
    claims = []
    for metric, worse, better, direction in CLAIMS:
        if worse not in by or better not in by:
            continue
        a = {r["config"]["seed"]: r[metric] for r in by[worse] if metric in r}
        b = {r["config"]["seed"]: r[metric] for r in by[better] if metric in r}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [(a[s] - b[s]) if direction == "lower" else (b[s] - a[s]) for s in seeds]
        claims.append(
            {
                "claim": f"{better} has {direction} {metric} than {worse}",
                "seeds": seeds,
                worse: [a[s] for s in seeds],
                better: [b[s] for s in seeds],
                "improvement_per_seed": diffs,
                "holds_on_seeds": int(sum(d > 0 for d in diffs)),
                "holds_on_mean": bool(np.mean(diffs) > 0) if diffs else None,
                "sign_test_p": sign_test_p(sum(d > 0 for d in diffs), len(diffs)),
            }
        )
    return {"variants": table, "claims": claims}


def plot_summary(path: str, summary_: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary_["variants"]
    names = list(table)
    metrics = ["ws_channels", "ws_photon_sum", "position_error", "spread_corr"]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 4))
    for ax, m in zip(axes, metrics, strict=False):
        for i, n in enumerate(names):
            vals = table[n][m]["values"]
            ax.bar(i, np.mean(vals), color="lightgray", edgecolor="k")
            ax.scatter([i] * len(vals), vals, s=12, color="tab:blue", zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(m + (" (higher better)" if m == "spread_corr" else " (lower better)"), fontsize=9)
    ax = axes[-1]
    routed = [n for n in names if "routing_nmi" in table[n]]
    for j, n in enumerate(routed):
        for k, (m, colour) in enumerate((("routing_purity", "tab:blue"), ("routing_nmi", "tab:orange"))):
            vals = table[n][m]["values"]
            x = 3 * j + k
            ax.bar(x, np.mean(vals), color="lightgray", edgecolor="k")
            ax.scatter([x] * len(vals), vals, s=12, color=colour, zorder=3)
    ax.set_xticks([3 * j + k for j in range(len(routed)) for k in range(2)])
    ax.set_xticklabels([f"{n}\n{m}" for n in routed for m in ("purity", "NMI")], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("routing vs regime", fontsize=9)
    fig.suptitle("calorimeter GAN ablations (held-out conditions; dots = seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(path: str, runs: list[dict[str, Any]]) -> None:
    """Held-out 5-channel Wasserstein (log scale) and routing NMI against epoch: a thin line per
    run, a thick one for the median over seeds of each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_curve = [r for r in runs if r.get("curve")]
    names = sorted({r["variant"] for r in with_curve})
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, (ax, ax_nmi) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        rs = [r for r in with_curve if r["variant"] == name]
        for key, axis in (("ws_channels", ax), ("routing_nmi", ax_nmi)):
            if key not in rs[0]["curve"][0]:
                continue
            by_epoch: dict[int, list[float]] = {}
            for r in rs:
                epochs = [p["epoch"] for p in r["curve"]]
                axis.plot(epochs, [p[key] for p in r["curve"]], color=colours[name], alpha=0.35, lw=0.8)
                for p in r["curve"]:
                    by_epoch.setdefault(p["epoch"], []).append(p[key])
            xs = sorted(by_epoch)
            label = f"{name} (median of {len(rs)} seeds)"
            axis.plot(xs, [np.median(by_epoch[x]) for x in xs], color=colours[name], lw=2.5, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="5-channel Wasserstein (held out)", title="lower is better")
    ax.legend(fontsize=7)
    ax_nmi.set(xlabel="epoch", ylabel="NMI(expert, regime)", ylim=(0, 1.02), title="routing follows the regimes")
    if ax_nmi.lines:
        ax_nmi.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.gan.ablations", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--conditions", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--test-conditions", type=int, default=300)
    parser.add_argument("--test-repeats", type=int, default=8)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default="recipes/results")
    parser.add_argument(
        "--curve-every", type=int, help="also evaluate on the held-out set every N epochs (learning curves)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "calorimeter_gan_ablation.json")
    setup = {
        "data_seed": args.data_seed,
        "train": f"{args.conditions} conditions x {args.repeats} repeats",
        "held_out": f"{args.test_conditions} conditions x {args.test_repeats} repeats (disjoint draw)",
        "epochs": args.epochs,
        "threads": 1,
        "curve_every": args.curve_every,
    }
    runs: list[dict[str, Any]] = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        old = previous.get("setup", {})  # resuming must not mix runs of another setup into the claims
        changed = "; ".join(f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in setup.items() if old.get(k) != v)
        if changed:
            parser.error(f"{path} holds runs of another setup ({changed}); pass the same options or another --out")
        runs = previous.get("runs", [])
    done = {(r["variant"], r["config"]["seed"]) for r in runs}
    data = make_split(args.conditions, args.test_conditions, args.repeats, args.test_repeats, args.data_seed)
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in done:
                continue
            cfg = variant_config(name, seed, args.epochs)
            t0 = time.perf_counter()
            metrics, trainer = run_variant(name, cfg, data, args.test_repeats, args.curve_every)
            metrics.pop("history", None)
            runs.append(metrics)
            print(f"[{name} seed {seed}] {summary(metrics)} ({time.perf_counter() - t0:.0f} s wall)", flush=True)
            if seed == args.seeds[0] and name in ("sdi_gan", "expertsim", "expertsim_real"):
                from .evaluation import evaluate

                _, generated = evaluate(trainer.sampler, data[1], args.test_repeats, seed=seed + 99)
                plot_comparison(
                    os.path.join(args.out, f"calorimeter_{name}_seed{seed}.png"),
                    data[1],
                    generated,
                    args.test_repeats,
                    title=f"{name}, seed {seed}, held-out conditions",
                )
            result = {"setup": setup, "runs": runs, "summary": summarise(runs)}
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
    result = {"setup": setup, "runs": runs, "summary": summarise(runs)}
    plot_summary(os.path.join(args.out, "calorimeter_gan_ablation.png"), result["summary"])
    if any("curve" in r for r in runs):
        plot_curves(os.path.join(args.out, "calorimeter_gan_curves.png"), runs)
    for c in result["summary"]["claims"]:
        print(
            f"{c['claim']}: holds on {c['holds_on_seeds']}/{len(c['seeds'])} seeds (sign test p "
            f"{c['sign_test_p']:.3g}), improvements {c['improvement_per_seed']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
