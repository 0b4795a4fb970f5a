"""The ZDC papers' evaluation of a calorimeter generator on held-out conditions.

For every real held-out event one event is generated with the same conditions (condition-major,
``R`` repeats per condition), then:

* ``ws_channels``: the mean over the 5 channels (:func:`recipes.worlds.calorimeter.channel_sums`)
  of the 1-D Wasserstein distance between real and generated channel sums (``scipy.stats``);
  ``ws_channel`` lists the five;
* ``ws_photon_sum``: Wasserstein distance of the photon-sum distributions;
* ``position_error``: mean Euclidean distance (pixels) between the brightest pixel of a generated
  event and of the real event of the same condition, over non-empty events (regime > 0);
  ``position_error_floor`` is the same between two real repeats (the simulator's own scatter);
* ``spread_corr``: Pearson correlation over conditions between the std of the generated photon
  sums and the std of the real ones (``spread_corr_log``: of ``log1p`` of the stds);
* per regime: photon-sum Wasserstein and mean photon sums.

:func:`plot_comparison` draws real against generated events per regime and the distributions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, wasserstein_distance

from recipes.worlds.calorimeter import REGIMES, brightest_pixel, channel_sums

__all__ = [
    "channel_wasserstein",
    "position_error",
    "spread_correlation",
    "routing_table",
    "evaluate_images",
    "evaluate",
    "LearningCurve",
    "plot_comparison",
]


def channel_wasserstein(real: torch.Tensor, generated: torch.Tensor) -> list[float]:
    """Wasserstein distance per channel between real and generated channel sums ``(N, 5)``."""
    r, g = real.double().numpy(), generated.double().numpy()
    return [float(wasserstein_distance(r[:, k], g[:, k])) for k in range(r.shape[1])]


def position_error(real_images: torch.Tensor, generated_images: torch.Tensor) -> float:
    """Mean Euclidean distance (pixels) between the brightest pixels of paired images."""
    d = (brightest_pixel(real_images) - brightest_pixel(generated_images)).double()
    return float(d.norm(dim=-1).mean()) if d.numel() else float("nan")


def spread_correlation(real_sums: torch.Tensor, generated_sums: torch.Tensor) -> tuple[float, float]:
    """Pearson correlation of per-condition stds ``(C, R)`` -> (raw, of log1p)."""
    rs, gs = real_sums.double().std(dim=1).numpy(), generated_sums.double().std(dim=1).numpy()
    if rs.std() == 0 or gs.std() == 0:
        return float("nan"), float("nan")
    return float(pearsonr(rs, gs)[0]), float(pearsonr(np.log1p(rs), np.log1p(gs))[0])


def routing_table(index: torch.Tensor, regime: torch.Tensor, n_experts: int) -> dict[str, Any]:
    """Counts ``[regime][expert]``; ``purity``: share of events whose regime is the majority regime
    of their expert (1: no expert mixes regimes; all events on one expert gives the largest regime's
    share); ``consistency``: share of events on their regime's majority expert (1: no regime is
    split); ``nmi``: normalised mutual information between regime and expert."""
    counts = torch.zeros(len(REGIMES), n_experts, dtype=torch.int64)
    counts.index_put_((regime.long(), index.long()), torch.ones_like(index, dtype=torch.int64), accumulate=True)
    c = counts.double()
    n = c.sum()
    purity = float(c.max(dim=0).values.sum() / n) if n > 0 else float("nan")
    consistency = float(c.max(dim=1).values.sum() / n) if n > 0 else float("nan")
    p = c / n
    pr, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * torch.log(p[nz] / (pr @ pe)[nz])).sum())

    def h(q: torch.Tensor) -> float:
        q = q[q > 0]
        return float(-(q * q.log()).sum())

    denom = math.sqrt(h(pr.flatten()) * h(pe.flatten()))
    return {
        "counts": counts.tolist(),
        "purity": purity,
        "consistency": consistency,
        "nmi": mi / denom if denom > 0 else 0.0,
        "expert_of_regime": {REGIMES[k]: int(counts[k].argmax()) for k in range(len(REGIMES)) if counts[k].sum() > 0},
    }


def evaluate_images(real: Mapping[str, torch.Tensor], generated: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Metrics of generated images ``(N, H, W)`` paired with the real held-out set ``real``
    (``repeats`` events per condition, consecutive: the spread metrics need at least 2)."""
    images, regime = real["images"], real["regime"]
    if repeats < 2 or images.shape[0] % repeats:
        raise ValueError(
            f"the held-out set needs >= 2 consecutive events per condition and a multiple of repeats; got "
            f"{images.shape[0]} events with repeats={repeats}"
        )
    if generated.shape != images.shape:
        raise ValueError(f"generated images {tuple(generated.shape)} do not pair with the real {tuple(images.shape)}")
    gen = generated.to(torch.float32).clamp_min(0.0)
    ch_r, ch_g = real["channel_sums"].double(), channel_sums(gen).double()
    per_channel = channel_wasserstein(ch_r, ch_g)
    s_r, s_g = real["photon_sum"].double(), gen.sum(dim=(-2, -1)).double()
    lit = regime > 0
    corr, corr_log = spread_correlation(s_r.view(-1, repeats), s_g.view(-1, repeats))
    # real-vs-real scatter of the brightest pixel: repeat 0 against repeat 1 of each condition
    first = torch.arange(0, images.shape[0], repeats)
    floor = position_error(images[first][lit[first]], images[first + 1][lit[first]])
    out: dict[str, Any] = {
        "ws_channels": float(np.mean(per_channel)),
        "ws_channel": per_channel,
        "ws_photon_sum": float(wasserstein_distance(s_r.numpy(), s_g.numpy())),
        "position_error": position_error(images[lit], gen[lit]),
        "position_error_floor": floor,
        "spread_corr": corr,
        "spread_corr_log": corr_log,
        "per_regime": {},
    }
    for k, name in enumerate(REGIMES):
        sel = regime == k
        if sel.any():
            out["per_regime"][name] = {
                "n": int(sel.sum()),
                "ws_photon_sum": float(wasserstein_distance(s_r[sel].numpy(), s_g[sel].numpy())),
                "mean_photon_sum_real": float(s_r[sel].mean()),
                "mean_photon_sum_generated": float(s_g[sel].mean()),
            }
    return out


def evaluate(
    sampler: Callable[..., torch.Tensor] | torch.nn.Module,
    real: Mapping[str, torch.Tensor],
    repeats: int,
    seed: int = 1234,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Generate one event per real held-out event (``sampler.sample(conditions, generator)``) and
    score them with :func:`evaluate_images`; returns (metrics, generated images)."""
    sample = sampler.sample if hasattr(sampler, "sample") else sampler
    was_training = getattr(sampler, "training", False)
    if isinstance(sampler, torch.nn.Module):
        sampler.eval()
    try:
        gen = sample(real["conditions"], generator=torch.Generator().manual_seed(seed)).cpu()
    finally:
        if isinstance(sampler, torch.nn.Module) and was_training:
            sampler.train()
    return evaluate_images(real, gen, repeats), gen


class LearningCurve:
    """Held-out metrics every ``every`` epochs of a run, for ``GanTrainer.fit(on_epoch=...)``.

    A GAN's held-out scores move a lot between epochs, so one number at the end of a run says little
    about whether a variant is better or only caught at a good moment; ``points`` holds one entry per
    evaluation (``epoch``, ``step``, the scalar metrics, ``routing_nmi`` for a mixture). Sampling
    uses its own generator (``seed``), so the run trains exactly as it would without the curve.

    >>> curve = LearningCurve(test, repeats=8, every=5)  # doctest: +SKIP
    >>> trainer.fit(on_epoch=curve)  # doctest: +SKIP
    >>> [p["ws_channels"] for p in curve.points]  # doctest: +SKIP
    """

    KEYS = ("ws_channels", "ws_photon_sum", "position_error", "spread_corr")

    def __init__(self, real: Mapping[str, torch.Tensor], repeats: int, every: int, seed: int = 1234) -> None:
        if every < 1:
            raise ValueError(f"every must be a positive number of epochs, got {every}")
        self.real, self.repeats, self.every, self.seed = real, repeats, every, seed
        self.points: list[dict[str, float]] = []

    def __call__(self, trainer: Any) -> None:
        if trainer.epoch % self.every:
            return
        sampler = trainer.sampler
        metrics, _ = evaluate(sampler, self.real, self.repeats, seed=self.seed)
        point = {"epoch": trainer.epoch, "step": trainer.step, **{k: metrics[k] for k in self.KEYS}}
        if hasattr(sampler, "route"):
            index = sampler.route(self.real["conditions"]).cpu()
            point["routing_nmi"] = routing_table(index, self.real["regime"], sampler.n_experts)["nmi"]
        self.points.append(point)


def plot_comparison(
    path: str | os.PathLike,
    real: Mapping[str, torch.Tensor],
    generated: torch.Tensor,
    repeats: int,
    title: str = "",
    n_examples: int = 3,
) -> None:
    """PNG: real and generated events per regime (same conditions), photon-sum and channel-sum
    distributions, per-condition spread (generated vs real)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regime, images = real["regime"], real["images"]
    gen = generated.clamp_min(0.0)
    fig = plt.figure(figsize=(14, 12))
    grid = fig.add_gridspec(3, 2 * len(REGIMES), height_ratios=[1.1, 1.1, 1.0])
    for k, name in enumerate(REGIMES):
        idx = torch.nonzero(regime == k).flatten()
        if idx.numel() == 0:
            continue
        i = int(idx[0])
        for j, (img, who) in enumerate(((images[i], "real"), (gen[i], "gen"))):
            ax = fig.add_subplot(grid[0, 2 * k + j])
            vmax = float(max(images[i].max(), gen[i].max(), 1.0))
            ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{name} {who}\n{float(img.sum()):.0f} ph", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    s_r = real["photon_sum"].double().numpy()
    s_g = gen.sum(dim=(-2, -1)).double().numpy()
    ax = fig.add_subplot(grid[1, : len(REGIMES)])
    bins = np.logspace(0, math.log10(max(s_r.max(), s_g.max(), 10.0) * 1.2), 60)
    ax.hist(s_r + 1, bins=bins, histtype="step", lw=1.5, label="real")
    ax.hist(s_g + 1, bins=bins, histtype="step", lw=1.5, label="generated")
    ax.set_xscale("log")
    ax.set_xlabel("photon sum + 1")
    ax.set_title("photon-sum distribution (held-out conditions)")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, len(REGIMES) :])
    rs = s_r.reshape(-1, repeats).std(axis=1, ddof=1)
    gs = s_g.reshape(-1, repeats).std(axis=1, ddof=1)
    reg = regime[::repeats].numpy()
    for k, name in enumerate(REGIMES):
        sel = reg == k
        ax.scatter(rs[sel] + 1, gs[sel] + 1, s=5, label=name)
    lim = max(rs.max(), gs.max()) * 1.5 + 2
    ax.plot([1, lim], [1, lim], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("real per-condition std + 1")
    ax.set_ylabel("generated per-condition std + 1")
    ax.set_title("per-condition spread")
    ax.legend(fontsize=7)
    ch_r = real["channel_sums"].double().numpy()
    ch_g = channel_sums(gen).double().numpy()
    for c in range(5):
        ax = fig.add_subplot(grid[2, c * 8 // 5 : (c + 1) * 8 // 5])
        hi = max(ch_r[:, c].max(), ch_g[:, c].max(), 10.0)
        b = np.logspace(0, math.log10(hi * 1.2), 40)
        ax.hist(ch_r[:, c] + 1, bins=b, histtype="step", label="real")
        ax.hist(ch_g[:, c] + 1, bins=b, histtype="step", label="gen")
        ax.set_xscale("log")
        ax.set_title(f"channel {c}: WS {wasserstein_distance(ch_r[:, c], ch_g[:, c]):.1f}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(os.fspath(path), dpi=80)
    plt.close(fig)
