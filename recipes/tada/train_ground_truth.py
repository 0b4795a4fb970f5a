"""Train the ground-truth model of :mod:`recipes.tada.ground_truth`: fine-tune the shipped tones
DiT with the split view, so that only ``--block`` can see ``--factor``.

``python -m recipes.tada.train_ground_truth --factor timbre --block 2 --steps 1000 --minutes 25``

Starts from the shipped tones checkpoint (its text encoder stays frozen: the masked prompt is
encoded by the same encoder), v-prediction on fresh world clips as the tones world was trained
(``recipes.worlds.train``), AdamW, gradient clipping at 1, 10% empty prompts, EMA of the weights
(what is saved). ``--minutes`` stops early (and saves) when the time is up. Writes safetensors and
JSON only, plus TRAINING.md with the command, seed and time.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from recipes.worlds import tones as world
from recipes.worlds import tones_model as tm
from recipes.worlds.train import tones_loss

from .ground_truth import CHECKPOINT, SplitViewModel, install_split_view


def split_view_loss(model: SplitViewModel, alphas, rope, batch_size: int, p_uncond: float, gen) -> torch.Tensor:
    """One batch's v-prediction loss with the split-view conditioning (the world's loss; the text
    side frozen)."""

    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model.encode_prompts(prompts)

    return tones_loss(model.transformer, encode, alphas, rope, batch_size, p_uncond, gen)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", default="timbre", choices=list(world.FACTORS))
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=25.0, help="stop (and save) after this much training time")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--out", default=str(CHECKPOINT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    base = tm.load_model()
    model = SplitViewModel(
        base.transformer, base.text_encoder, base.tokenizer, base.scheduler, base.rope_theta, args.factor, args.block
    )
    model.text_encoder.requires_grad_(False)
    ema = copy.deepcopy(model.transformer).requires_grad_(False)
    install_split_view(model.transformer, args.block)  # the EMA copy saves weights only
    model.transformer.train()
    opt = torch.optim.AdamW(model.transformer.parameters(), lr=args.lr)
    alphas = tm.build_train_scheduler().alphas_cumprod
    rope = tm.rotary_embedding(model.transformer)
    gen = torch.Generator().manual_seed(args.seed + 10)
    command = "python -m recipes.tada.train_ground_truth " + " ".join(sys.argv[1:] if argv is None else argv)
    t0, losses, step = time.time(), [], 0

    def save(step_now: int) -> None:
        saved = tm.TonesModel(ema, model.text_encoder, model.tokenizer, tm.build_scheduler(), model.rope_theta)
        info = {
            "fine_tuned_from": "recipes/worlds/checkpoints/tones",
            "command": command,
            "steps": step_now,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "p_uncond": args.p_uncond,
            "seconds": round(time.time() - t0, 1),
            "loss_last_50": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5),
        }
        tm.save_model(saved, out, extra=info)
        (out / "ground_truth.json").write_text(
            json.dumps({"factor": args.factor, "visible_block": args.block, "mask_word_token": "<unk>"}, indent=2)
            + "\n"
        )
        shutil.copy(tm.CHECKPOINT_DIR / "sampling.json", out / "sampling.json")

    bar = tqdm(range(args.steps), desc=f"split view ({args.factor} -> block {args.block})", mininterval=10)
    for step in bar:
        loss = split_view_loss(model, alphas, rope, args.batch_size, args.p_uncond, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.transformer.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.transformer.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if (step + 1) % args.save_every == 0:
            save(step + 1)
            print(f"step {step + 1}: loss {losses[-1]:.4f}, {time.time() - t0:.0f} s", flush=True)
        if time.time() - t0 > 60 * args.minutes:
            print(f"time budget reached at step {step + 1}", flush=True)
            break
    save(step + 1)
    print(f"done: {step + 1} steps, {time.time() - t0:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
