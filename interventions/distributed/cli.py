"""``python -m interventions.distributed`` (also ``interventions distributed``): harvest, check a
harvest, train an SAE on it; run under ``torchrun --nproc-per-node N`` or ``accelerate launch``.

::

    harvest ROOT --job MODULE:FUNCTION --site SITE [--site ...] [--items-per-shard N]
    check ROOT
    train-sae ROOT --out DIR --d-sae N [--kind topk] [--k 32] [--site S] [--steps ...] [--checkpoint-dir D]

``--job`` names a function of yours that returns ``(model, inputs)`` or ``(model, inputs, run)``
(what :func:`~interventions.distributed.harvest` takes), imported in every process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from ..errors import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interventions.distributed",
        description="Harvest activations and train SAEs on every process of a torchrun / accelerate launch job.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    h = sub.add_parser("harvest", help="cache sites for this rank's share of the inputs (resumes a killed run)")
    h.add_argument("root")
    h.add_argument("--job", required=True, help="module:function returning (model, inputs) or (model, inputs, run)")
    h.add_argument("--site", action="append", required=True, help="site pattern to cache (repeatable)")
    h.add_argument("--items-per-shard", type=int, default=8)
    c = sub.add_parser("check", help="check a harvest (every rank's manifest and shards, every input once)")
    c.add_argument("root")
    t = sub.add_parser("train-sae", help="train an SAE on a harvest with DDP over every process of the job")
    t.add_argument("root")
    t.add_argument("--out", required=True, help="folder for the trained SAE (SAELens layout)")
    t.add_argument("--d-sae", type=int, required=True)
    t.add_argument("--kind", default="topk", choices=["topk", "batchtopk", "relu", "jumprelu"])
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--site", help="the site to train on (default: the harvest's only site)")
    t.add_argument("--layout", help="the site's activation layout (BCHW, BCT, ...; default: tokens on the last axis)")
    t.add_argument("--branch", help="train on one CFG branch only (cond / uncond; default: all rows)")
    t.add_argument("--only-steps", type=int, nargs="+", help="train on these denoising steps only (default: all)")
    t.add_argument("--steps", type=int, default=2000, help="training steps")
    t.add_argument("--batch-size", type=int, default=1024, help="tokens per rank and step")
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-shards", type=int, default=1, help="shards held out for b_dec and the report")
    t.add_argument("--checkpoint-dir", help="write checkpoints here and resume from the latest")
    t.add_argument("--bf16-gradients", action="store_true", help="all-reduce gradients in bfloat16 (half the bytes)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: the end only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every refusal is one line on stderr and exit code 2."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from . import harvest, init_from_env, open_harvest, train_sae_distributed

    try:
        if args.command == "check":
            h = open_harvest(args.root)
            print(f"{h.root}: {h.n_items} inputs in {len(h.shards)} shards, sites {h.sites}, complete")
            return 0
        rank, world = init_from_env()
        if args.command == "harvest":
            module, _, func = args.job.partition(":")
            job = getattr(import_module(module), func)()
            model, inputs, run = (*job, None)[:3]
            done = harvest(model, inputs, args.site, args.root, run=run, items_per_shard=args.items_per_shard)
            print(f"rank {rank}/{world}: {done.harvested} inputs harvested now, {done.done_before} before")
            return 0
        from ..sae_train import TrainConfig

        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        sae, report = train_sae_distributed(
            args.root,
            args.d_sae,
            args.kind,
            args.k,
            site=args.site,
            layout=args.layout,
            branch=False if args.branch is None else args.branch,
            steps=args.only_steps,
            config=cfg,
            eval_shards=args.eval_shards,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            bf16_gradients=args.bf16_gradients,
        )
        if rank == 0:
            sae.save(args.out, report=report)
            print(f"{report} on {world} processes -> {args.out}")
        return 0
    except (StoreError, ValueError) as exc:
        print(f"python -m interventions.distributed {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
