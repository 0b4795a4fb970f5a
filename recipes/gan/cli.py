"""Command-line options shared by ``interventions run sdi_gan`` and ``interventions run expertsim``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["add_common_arguments", "check_common_arguments", "common_config", "finish", "summary"]


def add_common_arguments(parser: argparse.ArgumentParser, epochs: int = 20) -> None:
    """Data, training and output options; ``epochs``: the recipe's default (recipes/results/README.md)."""
    data = parser.add_argument_group("data (calorimeter world)")
    data.add_argument("--conditions", type=int, default=1500, help="training conditions (default 1500)")
    data.add_argument("--repeats", type=int, default=4, help="events per training condition (default 4)")
    data.add_argument("--test-conditions", type=int, default=300, help="held-out conditions (default 300)")
    data.add_argument("--test-repeats", type=int, default=8, help="events per held-out condition (default 8)")
    data.add_argument("--data-seed", type=int, default=0)
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs} (recipes/results/README.md)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--width", type=int, default=8, help="generator width (channels 4w, 2w)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-sdi", action="store_true", help="switch the Selective Diversity Increase loss off")
    train.add_argument("--no-intensity", action="store_true", help="switch the intensity (photon-sum) loss off")
    train.add_argument("--no-aux", action="store_true", help="switch the brightest-pixel regressor off")
    train.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    train.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ... (default cpu)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", help="folder for metrics.json, comparison.png, checkpoints and the Hub folder")
    out.add_argument("--push", metavar="REPO_ID", help="push the trained generator to this Hub repo (needs --out)")
    out.add_argument("--revision", help="branch to push to")
    out.add_argument("--tag", help="tag the pushed commit")
    out.add_argument("--endpoint", help="Hub URL (default $HF_ENDPOINT or huggingface.co)")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``) what would fail or mislead only after training."""
    if args.push and not args.out:
        parser.error("--push needs --out: the trained generator is saved there and that folder is pushed")
    if args.repeats < 2 and not args.no_sdi:
        parser.error("SDI needs the spread of each training condition: --repeats >= 2 (or --no-sdi)")
    if args.test_repeats < 2:
        parser.error("the held-out spread and position metrics need --test-repeats >= 2")
    for name in ("conditions", "test_conditions", "epochs", "batch_size", "width", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def common_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``GanConfig`` fields that :func:`add_common_arguments` sets."""
    return dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        width=args.width,
        sdi=not args.no_sdi,
        intensity=not args.no_intensity,
        aux=not args.no_aux,
    )


def summary(metrics: dict[str, Any]) -> str:
    keys = ("ws_channels", "ws_photon_sum", "position_error", "position_error_floor", "spread_corr")
    parts = [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    if "routing" in metrics:
        parts.append(f"routing purity {metrics['routing']['purity']:.3f} nmi {metrics['routing']['nmi']:.3f}")
    parts.append(f"train {metrics.get('train_cpu_s', 0):.0f} s CPU")
    return ", ".join(parts)


def finish(args: argparse.Namespace, metrics: dict[str, Any]) -> int:
    print(summary(metrics))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'metrics.json')}, comparison.png and generator/")
    else:
        slim = {k: v for k, v in metrics.items() if not k.startswith("_") and k not in ("history", "config")}
        print(json.dumps(slim, indent=1, default=str))
    if args.push:
        from recipes.gan.hub import push_generator

        info = push_generator(
            os.path.join(args.out, "generator"),
            args.push,
            revision=args.revision,
            tag=args.tag,
            endpoint=args.endpoint,
        )
        print(info.commit_url)
    return 0
