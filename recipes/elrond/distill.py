"""Distil the shapes model (DDIM 10 steps, guidance 3) into a 2-step student without guidance.

Method: guided progressive distillation (Meng et al., "On Distillation of Guided Diffusion
Models", CVPR 2023, arXiv 2210.03142, stage 1 folds classifier-free guidance into the student;
Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022,
arXiv 2202.00512, for the step-matching loss), in one round that divides the steps by 5 instead of repeated
halvings (the teacher's 10 steps into the student's 2, as Luhman & Luhman, arXiv 2101.02388,
match a whole trajectory at once). The student starts from the teacher's UNet and sees only the
prompt's embedding; for each of its two DDIM jumps (901 -> 401, 401 -> 0,
:data:`recipes.elrond.student.STUDENT_TIMESTEPS`) its target is the ``x0`` that would make that
one jump land where the teacher's 5 guided DDIM steps landed from the same point (Salimans & Ho,
Algorithm 2), weighted by ``max(SNR, 1)`` ("truncated SNR"). The inputs are the teacher's own
points, drawn once into a pool of trajectories.

Prompts: half full paraphrased prompts of the world, half "a" followed by a random subset of a
style, a colour and a shape word ("a striped circle", "a circle", "a"): the partial prompts that
ELROND steers.

    nice -n 10 python -m recipes.elrond.distill --pool 512 --steps 300 --save-every 25 --seed 0 \\
        --out recipes/elrond/checkpoints/student

The student is saved (float16 safetensors + config.json + training.json) every ``--save-every``
steps and at the end, so an interrupted run leaves its last save.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recipes.worlds.saving import drop_source_paths

from .student import STUDENT_TIMESTEPS, alphas_cumprod, ddim_jump, previous_alpha, teacher_trajectory

__all__ = ["training_prompts", "make_pool", "distillation_loss", "jump_target", "main"]


def training_prompts(n: int, generator: torch.Generator) -> list[str]:
    """Half full paraphrased prompts, half "a" + a random subset of (style, colour, shape) words.

    >>> training_prompts(4, torch.Generator().manual_seed(0))
    ['a checkered cross', 'a striped green', 'a solid cross', 'a solid']
    """
    from recipes.worlds import shapes as world

    full = world.sample(n, generator).prompts
    out = []
    for i in range(n):
        if torch.rand((), generator=generator) < 0.5:
            out.append(full[i])
            continue
        keep = (torch.rand(3, generator=generator) < 0.5).tolist()
        picks = [int(torch.randint(4, (), generator=generator)) for _ in range(3)]
        words = [
            world.SYNONYMS[f][world.FACTORS[f][p]][0]
            for f, p, k in zip(("style", "colour", "shape"), picks, keep, strict=True)
            if k
        ]
        out.append(" ".join(["a", *words]))
    return out


def make_pool(pipe: Any, n: int, seed: int, batch: int = 64) -> dict[str, Any]:
    """``n`` teacher trajectories: prompts, their embeddings, and the points at 901 / 401 / 0."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    prompts = training_prompts(n, g)
    parts: dict[str, list[Tensor]] = {"cond": [], "x901": [], "x401": [], "x0": []}
    for lo in tqdm(range(0, n, batch), desc="teacher trajectories"):
        chunk = prompts[lo : lo + batch]
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(chunk, "cpu", 1, True, negative_prompt=[""] * len(chunk))
        noise = torch.randn(len(chunk), 3, 16, 16, generator=g)
        traj = teacher_trajectory(pipe, cond, uncond, noise)
        for k, v in (("cond", cond), ("x901", traj[901]), ("x401", traj[401]), ("x0", traj[0])):
            parts[k].append(v)
    return {"prompts": prompts, **{k: torch.cat(v) for k, v in parts.items()}}


def distillation_loss(unet: Any, pool: dict[str, Any], rows: Tensor, segment: Tensor, alphas: Tensor) -> Tensor:
    """Truncated-SNR-weighted ``x0`` error of the student's one jump against the teacher's 5 steps;
    ``segment[i]`` is 0 (901 -> 401) or 1 (401 -> 0) for pool row ``rows[i]``."""
    names = ("x901", "x401", "x0")
    x_t = torch.stack([pool[names[s]][r] for r, s in zip(rows.tolist(), segment.tolist(), strict=True)])
    target = torch.stack([pool[names[s + 1]][r] for r, s in zip(rows.tolist(), segment.tolist(), strict=True)])
    t = torch.tensor(STUDENT_TIMESTEPS)[segment]
    a_t = alphas[t].view(-1, 1, 1, 1)
    a_prev = torch.stack([previous_alpha(int(s), alphas) for s in t]).view(-1, 1, 1, 1)
    eps = unet(x_t, t, encoder_hidden_states=pool["cond"][rows]).sample
    x0, _ = ddim_jump(x_t, eps, a_t, a_prev)
    weight = (a_t / (1 - a_t)).clamp_min(1.0)
    return (weight * (x0 - jump_target(x_t, target, a_t, a_prev)) ** 2).mean()


def jump_target(x_t: Tensor, landing: Tensor, a_t: Tensor, a_prev: Tensor) -> Tensor:
    """The ``x0`` whose one DDIM jump from ``x_t`` (at ``a_t``) lands on ``landing`` (at ``a_prev``):
    the distillation target of Salimans & Ho, Algorithm 2."""
    ratio = ((1 - a_prev) / (1 - a_t)).sqrt()
    return (landing - ratio * x_t) / (a_prev.sqrt() - ratio * a_t.sqrt())


def _save(unet: Any, out: Path, info: dict[str, Any]) -> None:
    half = type(unet).from_config(unet.config).to(torch.float16)
    half.load_state_dict({k: v.to(torch.float16) for k, v in unet.state_dict().items()})
    half.save_pretrained(out, safe_serialization=True)
    drop_source_paths(out)
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.elrond.distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=512, help="teacher trajectories")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW, cosine decay to 0 after 20 warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("recipes/elrond/checkpoints/student"))
    args = ap.parse_args(argv)
    if args.pool < 2 or args.steps < 1 or args.batch < 2:
        raise SystemExit("distill: --pool and --batch must be at least 2, --steps at least 1")
    torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    from recipes.worlds.shapes_model import load_pipeline

    start = time.time()
    pipe = load_pipeline()
    pool = make_pool(pipe, args.pool, args.seed)
    pool_seconds = time.time() - start
    unet = type(pipe.unet).from_config(pipe.unet.config)
    unet.load_state_dict(pipe.unet.state_dict())
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    alphas = alphas_cumprod()
    g = torch.Generator().manual_seed(args.seed + 1)
    info: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "pool_seconds": round(pool_seconds)}
    losses: list[float] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for step in tqdm(range(1, args.steps + 1), desc="distil", mininterval=30):
        rows = torch.randint(args.pool, (args.batch,), generator=g)
        segment = torch.randint(2, (args.batch,), generator=g)
        loss = distillation_loss(unet, pool, rows, segment, alphas)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step} loss {sum(losses[-25:]) / 25:.4f} ({time.time() - start:.0f} s)", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            info.update(steps_done=step, seconds=round(time.time() - start), loss_per_25=_means(losses, 25))
            _save(unet, args.out, info)
    print(f"saved {args.out} after {args.steps} steps ({time.time() - start:.0f} s)")
    return 0


def _means(values: list[float], k: int) -> list[float]:
    return [round(sum(values[i : i + k]) / len(values[i : i + k]), 5) for i in range(0, len(values), k)]


if __name__ == "__main__":
    raise SystemExit(main())
