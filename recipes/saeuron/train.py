"""Collect activations and train the SAE that :mod:`recipes.saeuron` ships for the shapes world.

As SAeUron does: outputs of one cross-attention block, cond branch of CFG, every denoising step,
streamed to a :class:`~interventions.DiskStore`; a TopK SAE trained with BatchTopK, AuxK and
unit-norm decoder rows (:func:`interventions.sae_train.train_sae`, ``kind="batchtopk"``: per-token
top-k at inference). Also writes ``latents.safetensors``: the token-averaged latents of the
canonical prompts per step on the selection seeds, the statistics features are scored with.

    python -m recipes.saeuron.train --out recipes/saeuron/checkpoints/shapes   # ~3 min, one thread
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from interventions import DiskStore
from interventions.sae import SAE, SAEInfo
from interventions.sae_train import TrainConfig, train_sae

from . import concepts
from .sampling import Sampling, cache_cond, step_statistics

__all__ = ["DEFAULT_SITE", "SELECTION_SEEDS", "STATISTICS", "write_statistics", "main"]

STATISTICS = "latents.safetensors"

#: the last cross-attention block of the up path (SD 1.5's up_blocks.1.attentions.2 in SAeUron)
DEFAULT_SITE = "unet.up_blocks.0.attentions.1:output.0"
#: seeds of the canonical prompts whose latents select features; evaluation uses others
SELECTION_SEEDS = [100, 101]


def write_statistics(pipe: Any, sae: SAE, out: Path, sampling: Sampling) -> None:
    """``latents.safetensors``: per-step latents of the canonical prompts (averaged over the
    selection seeds: every concept's mean is unchanged, the file half as big) and the block's
    per-step mean, with the site and sampler settings they belong to."""
    prompts = concepts.canonical().prompts
    latents, block_means = step_statistics(pipe, sae, prompts, SELECTION_SEEDS, sampling)
    latents = latents.view(len(SELECTION_SEEDS), len(prompts), *latents.shape[1:]).mean(0)  # per prompt, seeds averaged
    meta = {
        "site": sae.info.site,
        "seeds": json.dumps(SELECTION_SEEDS),
        "steps": str(sampling.steps),
        "guidance": str(sampling.guidance),
        "prompts": "recipes.saeuron.concepts.canonical()",
    }
    tensors = {"latents": latents.half().contiguous(), "block_means": block_means.contiguous()}
    save_file(tensors, str(out / STATISTICS), metadata=meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.saeuron.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the SAE (SAELens layout) and latents.safetensors")
    p.add_argument("--site", default=DEFAULT_SITE)
    p.add_argument("--expansion", type=int, default=16, help="d_sae = expansion x d_in (paper 16)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3, help="passes over the factor combinations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stats-only", action="store_true", help="keep the SAE in --out, rewrite latents.safetensors")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from recipes.worlds import load

    world = load("shapes")
    pipe, sampling = world.model, Sampling()
    if args.stats_only:
        write_statistics(pipe, SAE.load(args.out), Path(args.out), sampling)
        return 0
    t0 = time.time()
    prompts = concepts.training(args.repeats, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = DiskStore(tmp, buffer_bytes=32 << 20)
        cache_cond(pipe, args.site, prompts.prompts, args.seed, sampling, store)
        store.flush()
        collect_s = time.time() - t0
        d_in = store.get(store.keys()[0]).shape[1]
        cfg = TrainConfig(
            steps=args.train_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            eval_tokens=4096,
            progress=False,
        )
        info = SAEInfo(
            site=args.site,
            layout="BCHW",
            base_model="recipes.worlds shapes (shipped checkpoint)",
            branch="cond",
            method="SAeUron (interventions recipes.saeuron): BatchTopK training, AuxK 1/32, unit-norm decoder",
            dataset=f"shapes world, {len(prompts)} training prompts x {sampling.steps} DDIM steps, cond branch",
        )
        sae, report = train_sae(
            store,
            d_sae=args.expansion * d_in,
            kind="batchtopk",
            k=args.k,
            layout="BCHW",
            site=args.site,
            branch="cond",
            config=cfg,
            info=info,
        )
        store.close()
    train_s = time.time() - t0 - collect_s
    out = Path(args.out)
    sae.save(out, report=report)
    write_statistics(pipe, sae, out, sampling)
    summary = {
        "command": "python -m recipes.saeuron.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "report": str(report),
        "collect_s": round(collect_s, 1),
        "train_s": round(train_s, 1),
        "tokens": len(prompts) * sampling.steps * 64,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
