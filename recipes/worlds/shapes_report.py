"""Measure prompt following of the shapes pipeline at scale, inside ``StableDiffusionPipeline``.

``python -m recipes.worlds.shapes_report [--n 256] [--scales 1 3 5] [--steps 25] [--out DIR]``
samples ``n`` random prompts (random templates and synonyms) at each guidance scale with the
shipped DDIM scheduler (``clip_sample=False``, so x0 clipping cannot break guidance), judges
every sample with the evaluators, and writes ``shapes_report.json`` (accuracy per factor and
all-factor per scale, plus diversity of the free factors: spread of the lit centre and lit area)
and ``shapes_samples.png`` (a grid of samples: rows = prompts, columns = guidance scales x seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import shapes as world
from .shapes_eval import predict

__all__ = ["prompt_set", "generate", "measure", "free_factor_stats", "sample_grid", "main"]


def prompt_set(n: int, seed: int = 0, paraphrase: bool = True):
    """``n`` prompts with uniformly random factors, and their ground-truth labels."""
    gen = torch.Generator().manual_seed(seed)
    f = world.sample_factors(n, gen)
    prompts = world.make_prompts(f["shape"], f["colour"], f["style"], gen, paraphrase)
    labels = {k: f[k] for k in world.FACTORS}
    return prompts, labels


def generate(pipe, prompts, guidance_scale, steps=25, seed=0, batch_size=128) -> torch.Tensor:
    """Images in [-1, 1] from the pipeline call (one generator for all batches)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            res = pipe(
                list(prompts[i : i + batch_size]),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=gen,
                output_type="pt",
            )
            out.append(res.images.float() * 2 - 1)
    return torch.cat(out)


def free_factor_stats(images: torch.Tensor) -> dict[str, float]:
    """Spread of the lit centre (px) and mean lit area (px) of images in [-1, 1]."""
    lit = ((images + 1) / 2).amax(1) > 0.2  # B x H x W
    area = lit.float().sum((1, 2))
    coords = torch.arange(world.SIZE, dtype=torch.float32) + 0.5
    w = lit.float() / area.clamp(min=1)[:, None, None]
    cx = (w.sum(1) * coords).sum(-1)
    cy = (w.sum(2) * coords).sum(-1)
    return {
        "centre_std_x": cx.std().item(),
        "centre_std_y": cy.std().item(),
        "lit_area_mean": area.mean().item(),
        "lit_area_std": area.std().item(),
    }


def measure(
    pipe,
    evaluators,
    n: int = 128,
    scales=(1.0, 3.0),
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 128,
    paraphrase: bool = True,
    return_images: bool = False,
):
    """Per-factor and all-factor accuracy of ``n`` samples at each guidance scale."""
    prompts, labels = prompt_set(n, seed, paraphrase)
    results, images = {}, {}
    for g in scales:
        t0 = time.time()
        x = generate(pipe, prompts, g, steps=steps, seed=seed + 1, batch_size=batch_size)
        pred = predict(evaluators, x)
        ok = {f: pred[f] == labels[f] for f in labels}
        r = {f: v.float().mean().item() for f, v in ok.items()}
        r["all"] = torch.stack(list(ok.values())).all(0).float().mean().item()
        r.update(free_factor_stats(x))
        r["seconds"] = time.time() - t0
        results[str(float(g))] = r
        images[str(float(g))] = x
    if return_images:
        return results, prompts, images
    return results


def sample_grid(pipe, path, n_prompts=12, scales=(1.0, 3.0, 5.0), seeds=(0, 1), steps=25):
    """PNG grid: one row per prompt, columns = scale x seed (seeds show the free factors vary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts, _ = prompt_set(n_prompts, seed=999)
    cols = [(g, s) for g in scales for s in seeds]
    fig, axes = plt.subplots(n_prompts, len(cols), figsize=(1.2 * len(cols) + 2.2, 1.2 * n_prompts), squeeze=False)
    for j, (g, s) in enumerate(cols):
        x = generate(pipe, prompts, g, steps=steps, seed=s)
        for i in range(n_prompts):
            ax = axes[i, j]
            ax.imshow(((x[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"g={g:g} seed={s}", fontsize=7)
            if j == 0:
                ax.set_ylabel(prompts[i], fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    from .shapes_model import load_evaluators, load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--canonical", action="store_true", help="canonical prompts, no paraphrases")
    ap.add_argument("--out", default=".", help="folder for shapes_report.json / shapes_samples.png")
    args = ap.parse_args(argv)

    pipe = load_pipeline(args.checkpoint)
    ev = load_evaluators(args.checkpoint)
    t0 = time.time()
    res = measure(
        pipe,
        ev,
        n=args.n,
        scales=args.scales,
        steps=args.steps,
        seed=args.seed,
        paraphrase=not args.canonical,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "n_prompts": args.n,
        "ddim_steps": args.steps,
        "seed": args.seed,
        "paraphrased_prompts": not args.canonical,
        "scheduler": type(pipe.scheduler).__name__,
        "clip_sample": bool(pipe.scheduler.config.get("clip_sample", False)),
        "results": res,
        "seconds": time.time() - t0,
    }
    (out / "shapes_report.json").write_text(json.dumps(report, indent=2) + "\n")
    sample_grid(pipe, out / "shapes_samples.png", scales=tuple(args.scales), steps=args.steps)
    for g, r in res.items():
        print(
            f"guidance {g}: all {r['all']:.3f}  shape {r['shape']:.3f}  colour {r['colour']:.3f}"
            f"  style {r['style']:.3f}  centre std {r['centre_std_x']:.2f}/{r['centre_std_y']:.2f}"
            f"  area {r['lit_area_mean']:.1f}"
        )
    return report


if __name__ == "__main__":
    main()
