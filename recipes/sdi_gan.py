"""SDI-GAN: the proton-ZDC method (arXiv 2406.03263) on the calorimeter world.

A conditional DCGAN (noise 10 + 9 conditions -> 56 x 30 photon image in ``log1p`` space) trained
with the non-saturating GAN loss plus three switchable terms (``recipes.gan.losses``):

* Selective Diversity Increase ``l_div mean(sigma) mean(sigma / div)``: diversity in the
  discriminator's penultimate features per unit of noise distance, asked for in proportion to the
  per-condition spread ``sigma`` of the real responses;
* intensity: ``l_in |sum expm1(x_hat) - photon sum|``;
* an auxiliary regressor of the brightest-pixel position, trained on real events, whose MSE on
  generated events enters the generator loss with ``l_aux``.

Run it::

    interventions run sdi_gan --conditions 1500 --epochs 20 --out runs/sdi_gan [--push me/zdc-sdi-gan]
    python -m recipes.sdi_gan --no-sdi --seed 1

Outputs (with ``--out``): ``metrics.json`` (held-out 5-channel Wasserstein, photon-sum
Wasserstein, brightest-pixel error, spread correlation), ``comparison.png``,
``checkpoints/checkpoint.safetensors`` and ``generator/`` (``config.json``, ``model.safetensors``,
``README.md``) ready for ``hub_cards.push``; :func:`recipes.gan.hub.load_generator` reads it back.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from recipes.gan.data import make_split, prepare
from recipes.gan.evaluation import LearningCurve, evaluate, plot_comparison
from recipes.gan.models import count_parameters
from recipes.gan.trainer import GanConfig, GanTrainer

__all__ = ["default_config", "run", "main"]


def default_config(**overrides: Any) -> GanConfig:
    """The recipe's defaults: SDI, intensity and regressor on; learning rates raised for short runs."""
    kw: dict[str, Any] = dict(n_experts=1, lr_g=1e-3, lr_d=4e-4, lr_aux=1e-3)
    kw.update(overrides)
    return GanConfig(**kw)


def run(
    cfg: GanConfig,
    n_conditions: int = 1500,
    n_test: int = 300,
    repeats: int = 4,
    test_repeats: int = 8,
    data_seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    data: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    curve_every: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Train one SDI-GAN on the world and evaluate it on held-out conditions; returns the metrics
    (``curve_every``: also held-out metrics every that many epochs, in ``metrics["curve"]``; ``device``,
    ``dtype``: where and in what precision to train, see :class:`recipes.gan.trainer.GanTrainer`)."""
    train, test = data if data is not None else make_split(n_conditions, n_test, repeats, test_repeats, data_seed)
    trainer = GanTrainer(cfg, prepare(train), device=device, dtype=dtype)
    start, wall = time.process_time(), time.perf_counter()
    curve = None if curve_every is None else LearningCurve(test, test_repeats, curve_every, seed=cfg.seed + 99)
    checkpoints = None if out is None else os.path.join(out, "checkpoints")
    trainer.fit(progress=progress, checkpoint_dir=checkpoints, on_epoch=curve)
    metrics, generated = evaluate(trainer.sampler, test, test_repeats, seed=cfg.seed + 99)
    metrics.update(
        recipe="sdi_gan",
        config=cfg.to_json(),
        n_train_events=len(trainer.data),
        n_test_events=int(test["images"].shape[0]),
        steps=trainer.step,
        device=str(trainer.device),
        dtype=str(trainer.dtype).removeprefix("torch."),
        train_cpu_s=time.process_time() - start,
        train_wall_s=time.perf_counter() - wall,
        parameters={
            "generator_total": count_parameters(trainer.expert.generator),
            "discriminators": count_parameters(trainer.expert.discriminator),
            "regressors": count_parameters(trainer.expert.regressor) if trainer.expert.regressor is not None else 0,
        },
        history=trainer.history,
    )
    if curve is not None:
        metrics["curve"] = curve.points
    if out is not None:
        os.makedirs(out, exist_ok=True)
        plot_comparison(os.path.join(out, "comparison.png"), test, generated, test_repeats, title="SDI-GAN")
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        from recipes.gan.hub import save_generator

        save_generator(trainer.sampler, os.path.join(out, "generator"), metrics=metrics, recipe="sdi_gan")
    metrics["_trainer"] = trainer
    return metrics


def main(argv: list[str] | None = None) -> int:
    from recipes.gan.cli import add_common_arguments, check_common_arguments, common_config, finish

    parser = argparse.ArgumentParser(prog="interventions run sdi_gan", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--l-div", type=float, default=0.1, help="SDI weight (paper 0.1)")
    parser.add_argument("--l-in", type=float, default=1e-3, help="intensity weight (paper 1e-3)")
    parser.add_argument("--l-aux", type=float, default=1e-3, help="regressor weight (paper 1e-3)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    torch.set_num_threads(args.threads)
    cfg = default_config(
        **common_config(args),
        l_div=args.l_div,
        l_in=args.l_in,
        l_aux=args.l_aux,
    )
    metrics = run(
        cfg,
        args.conditions,
        args.test_conditions,
        args.repeats,
        args.test_repeats,
        args.data_seed,
        args.out,
        device=args.device,
    )
    return finish(args, metrics)


if __name__ == "__main__":
    raise SystemExit(main())
