"""Fine-tune the shipped tones model on catalogue clips with a known member set.

``python -m recipes.dataset_inference.train --out DIR [--members 1000 --member-fraction 0.25
--steps 2000 --seed 0 --threads 1]``

Every batch mixes ``member_fraction`` clips drawn (with replacement) from the fixed member set
(:func:`recipes.dataset_inference.catalogue.members`, captions fixed) and fresh catalogue clips
(new every step, never seen twice), so the model learns the catalogue distribution while it sees
each member many times: the member set plays the artist whose works were in the training data.
Same objective as :mod:`recipes.worlds.train` (v-prediction, cosine schedule, AdamW, clipping at 1,
``p_uncond`` empty prompts, EMA of the weights, the EMA is saved). EMA snapshots are written to
``--snapshots`` every ``--save-every`` steps (to choose how much memorisation to ship); the final
one goes to ``--out`` with ``training.json`` and ``members.json`` (the member set's seed and size).
Only safetensors and JSON are written.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from recipes.worlds import tones_model as tm

from . import catalogue


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)


def _batch(member_set: catalogue.Clips, n_members: int, n_fresh: int, gen: torch.Generator, step: int):
    idx = torch.randint(len(member_set), (n_members,), generator=gen)
    new = catalogue.fresh(n_fresh, seed=step) if n_fresh else catalogue.Clips(torch.empty(0, 53, 16), [])
    reps = torch.cat([member_set.reps[idx], new.reps])
    return reps, [member_set.prompts[i] for i in idx.tolist()] + new.prompts


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(prog="python -m recipes.dataset_inference.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder of the final EMA model")
    ap.add_argument("--init", default=None, help="tones checkpoint to start from (default: the shipped tones model)")
    ap.add_argument("--snapshots", default=None, help="folder for EMA snapshots step_XXXX/ (default: none)")
    ap.add_argument("--members", type=int, default=1000, help="size of the member set")
    ap.add_argument("--member-seed", type=int, default=catalogue.MEMBER_SEED)
    ap.add_argument("--member-fraction", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not 0 < args.member_fraction <= 1:
        raise SystemExit(f"--member-fraction must lie in (0, 1], got {args.member_fraction}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = "python -m recipes.dataset_inference.train " + " ".join(sys.argv[1:] if argv is None else argv)

    model = tm.load_model(args.init)
    tr, text = model.transformer.train().requires_grad_(True), model.text_encoder.train().requires_grad_(True)
    ema_tr, ema_text = (copy.deepcopy(m).eval().requires_grad_(False) for m in (tr, text))
    params = [p for m in (tr, text) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr)
    alphas = tm.build_train_scheduler().alphas_cumprod
    rope = tm.rotary_embedding(tr, theta=model.rope_theta)
    member_set = catalogue.members(args.members, args.member_seed)
    n_members = round(args.batch_size * args.member_fraction)
    gen = torch.Generator().manual_seed(args.seed + 10)

    def save(folder: Path, step: int, seconds: float) -> None:
        ema_model = tm.TonesModel(ema_tr, ema_text, model.tokenizer, tm.build_scheduler(), model.rope_theta)
        info = {
            "command": command,
            "init": args.init or "recipes/worlds/checkpoints/tones (the shipped tones model)",
            **{k: v for k, v in vars(args).items() if k not in ("out", "snapshots", "init", "steps")},
            "planned_steps": args.steps,
            "steps": step,
            "seconds": round(seconds, 1),
            "history": history,
        }
        tm.save_model(ema_model, folder, extra=info)
        (folder / "members.json").write_text(
            json.dumps({"world": "catalogue", "member_seed": args.member_seed, "members": args.members}, indent=2)
            + "\n"
        )

    history: list[dict] = []
    t0, running = time.time(), None
    bar = tqdm(total=args.steps, desc="tones members", mininterval=10)
    for step in range(1, args.steps + 1):
        reps, prompts = _batch(member_set, n_members, args.batch_size - n_members, gen, step)
        drop = torch.rand(len(prompts), generator=gen) < args.p_uncond
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        t = torch.randint(0, alphas.shape[0], (len(prompts),), generator=gen)
        noise = torch.randn(reps.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1)
        x_t = a.sqrt() * reps + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * reps
        states, pooled = tm.encode_text(text, model.tokenizer, prompts)
        loss = F.mse_loss(tm.denoise(tr, x_t, t.float(), states, pooled, rope), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema_tr, tr, decay)
        _ema_update(ema_text, text, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        if step % 50 == 0:
            history.append({"step": step, "loss": round(running, 5), "seconds": round(time.time() - t0, 1)})
            print(f"step {step} loss {running:.4f} elapsed {time.time() - t0:.0f} s", flush=True)
        if args.snapshots and step % args.save_every == 0:
            save(Path(args.snapshots) / f"step_{step:05d}", step, time.time() - t0)
    bar.close()
    save(Path(args.out), args.steps, time.time() - t0)
    print(f"done: {args.steps} steps, {time.time() - t0:.0f} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
