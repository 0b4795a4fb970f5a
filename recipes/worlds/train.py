"""Retrain a world's tiny models from scratch: ``python -m recipes.worlds.train shapes`` (or
``tones``).

Options: ``--steps N`` (denoiser steps, default 4000), ``--out DIR`` (default: the shipped
checkpoint folder), ``--seed S`` (default 0), ``--resume`` (continue from the training state in
``--state``), ``--lr-final LR`` (cosine-decay the lr over this run's steps; default constant),
``--threads T``, ``--skip-evaluators`` / ``--only-evaluators``.

Shapes recipe (measured on 2 CPU cores): the ``UNet2DConditionModel`` denoiser and
the ``CLIPTextModel`` text encoder are trained jointly in pixel space with DDPM (1000 steps, cosine
schedule, epsilon prediction), AdamW lr 1e-3, batch 64, gradient clipping at 1, 10% empty prompts
(for classifier-free guidance) and an EMA of the weights (decay ``min(0.999, (1+n)/(10+n))``); the
EMA weights are what is saved. About 2.6 it/s on 2 CPU cores. The evaluators (three CNNs) train
first, in about 2-3 minutes.

``--device`` (default cpu) trains there: models, optimiser and EMA live on it; batches, timesteps
and noise are drawn on the CPU from the seeded generator (the same on every device) and moved;
``--dtype bfloat16`` autocasts the forward passes (default float32, what the shipped checkpoints
used). ``training.json`` records both.

Only safetensors and JSON are written. The output folder receives the EMA pipeline (and the
evaluators) every ``--save-every`` steps; the resumable training state (raw weights, EMA, AdamW
moments, RNG state) goes to ``--state`` (default ``~/.cache/interventions/train_state/``), which
is not meant to be shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F


def _flatten_optimizer(opt) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).clone().contiguous()
    return tensors, json.dumps(sd["param_groups"])


def _unflatten_optimizer(opt, tensors: dict[str, torch.Tensor], groups_json: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    groups = json.loads(groups_json)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_state(path: Path, step, unet, text, ema_unet, ema_text, opt, gen, extra) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    t = {}
    for prefix, m in (("unet.", unet), ("text.", text), ("ema_unet.", ema_unet), ("ema_text.", ema_text)):
        t.update({prefix + k: v.detach().cpu().clone().contiguous() for k, v in m.state_dict().items()})
    opt_t, groups = _flatten_optimizer(opt)
    t.update({k: v.cpu() for k, v in opt_t.items()})
    t["rng"] = gen.get_state()
    meta = {"step": str(step), "param_groups": groups, "extra": json.dumps(extra)}
    tmp = path / "state.safetensors.tmp"
    save_file(t, str(tmp), metadata=meta)
    tmp.replace(path / "state.safetensors")


def _load_state(path: Path, unet, text, ema_unet, ema_text, opt, gen):
    from safetensors import safe_open

    with safe_open(str(path / "state.safetensors"), framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    for prefix, m in (("unet.", unet), ("text.", text), ("ema_unet.", ema_unet), ("ema_text.", ema_text)):
        m.load_state_dict({k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)})
    _unflatten_optimizer(opt, t, meta["param_groups"])
    gen.set_state(t["rng"])
    return int(meta["step"]), json.loads(meta["extra"])


def _default_state_dir(world: str, out: Path) -> Path:
    """Outside the package: ``~/.cache/interventions/train_state/<world>-<hash of out>``."""
    import hashlib

    tag = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return Path.home() / ".cache" / "interventions" / "train_state" / f"{world}-{tag}"


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters(), strict=False):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers(), strict=False):
        be.copy_(b)


def _with_segment(history: dict, command: str, seg_start: int, step_now: int, seconds: float) -> dict:
    """A copy of ``history`` whose ``segments`` end with this invocation's (what TRAINING.md tabulates)."""
    hist = copy.deepcopy(history)
    hist["segments"] = hist["segments"] + [
        {"command": command, "from_step": seg_start, "to_step": step_now, "seconds": round(seconds, 1)}
    ]
    return hist


def _record_eval(history: dict, step_now: int, n: int, short: dict, seconds: float) -> None:
    history["evals"].append({"step": step_now, "n": n, "results": short})
    print(f"\n[step {step_now}] prompt following ({n} prompts, {seconds:.0f} s): {short}", flush=True)


def _setup_training(args, models, state_dir: Path, reset_lr: bool):
    """Data generator, frozen EMA copies, AdamW over the trainable parameters, and the step, history
    and total of this invocation (restored from ``state_dir`` with ``--resume``; ``reset_lr`` sets
    ``--lr`` again after a resume)."""
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 10)
    emas = tuple(copy.deepcopy(m).eval().requires_grad_(False) for m in models)
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    step, history = 0, {"evals": [], "segments": []}
    if args.resume:
        step, history = _load_state(state_dir, *models, *emas, opt, gen)
        print(f"resumed from {state_dir} at step {step}", flush=True)
        if reset_lr:
            for group in opt.param_groups:
                group["lr"] = args.lr
    total = step + args.steps if args.resume else args.steps
    return gen, emas, params, opt, step, history, total


def _train_loop(args, *, desc, step, total, models, emas, params, opt, loss, save, evaluate, lr_at=None) -> float:
    """The denoiser loop both worlds share: ``loss()`` draws a fresh batch and returns its loss;
    AdamW step after clipping at 1 (``lr_at(step)`` sets the lr first when given), EMA update of
    ``emas`` towards ``models``, a progress bar, ``save(step, seconds)`` every ``--save-every`` steps
    and ``evaluate(step)`` every ``--eval-every`` steps. Returns the seconds spent."""
    from tqdm.auto import tqdm

    for model in models:
        model.train()
    t0 = time.time()
    bar = tqdm(total=total, initial=step, desc=desc, mininterval=10, smoothing=0.05)
    running = None
    device = next(models[0].parameters()).device
    dtype = getattr(torch, args.dtype)
    while step < total:
        with torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext():
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        for ema, model in zip(emas, models, strict=True):
            _ema_update(ema, model, decay)
        running = value.item() if running is None else 0.98 * running + 0.02 * value.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if step % args.log_every == 0:
            print(f"\nstep {step} loss {running:.4f} elapsed {time.time() - t0:.0f} s", flush=True)
        with torch.device("cpu"):  # saving and evaluating work on CPU copies (_on_cpu)
            if step % args.save_every == 0 or step == total:
                save(step, time.time() - t0)
            if args.eval_every and (step % args.eval_every == 0 or step == total):
                evaluate(step)
                save(step, time.time() - t0)
    bar.close()
    return time.time() - t0


def _on_cpu(*modules: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """CPU copies of the (EMA) modules to save and evaluate (themselves when they are on the CPU)."""
    return tuple(m if next(m.parameters()).device.type == "cpu" else copy.deepcopy(m).cpu() for m in modules)


def shapes_loss(unet, text, tokenizer, alphas, batch_size: int, p_uncond: float, gen: torch.Generator):
    """One shapes batch's epsilon-prediction loss: the renders, dropped prompts, timesteps and noise
    drawn on the CPU from ``gen`` (the same on every device), the models run on their device."""
    from . import shapes as world

    device = alphas.device
    with torch.device("cpu"):
        b = world.sample(batch_size, gen)
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        t = torch.randint(0, alphas.shape[0], (batch_size,), generator=gen)
        noise = torch.randn(b.images.shape, generator=gen)
        prompts = ["" if d else p for p, d in zip(b.prompts, drop.tolist(), strict=False)]
        ids = tokenizer(
            prompts, padding="max_length", max_length=world.MAX_LENGTH, truncation=True, return_tensors="pt"
        )
    t, noise, images = t.to(device), noise.to(device), b.images.to(device)
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * images + (1 - a).sqrt() * noise
    pred = unet(x_t, t, encoder_hidden_states=text(ids.input_ids.to(device))[0]).sample
    return F.mse_loss(pred.float(), noise)


def tones_loss(transformer, encode, alphas, rope, batch_size: int, p_uncond: float, gen: torch.Generator):
    """One tones batch's v-prediction loss, drawn on the CPU like :func:`shapes_loss`;
    ``encode(prompts) -> (states, pooled)`` is the text side (TADA's ground-truth model encodes
    its split views through it)."""
    from . import tones as world
    from . import tones_model as tm

    device = alphas.device
    with torch.device("cpu"):
        f = world.sample_factors(batch_size, gen)
        x0 = world.represent(f)
        prompts = world.make_prompts(f, gen)
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        t = torch.randint(0, alphas.shape[0], (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=False)]
    t, noise, x0 = t.to(device), noise.to(device), x0.to(device)
    a = alphas[t].view(-1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
    states, pooled = encode(prompts)
    return F.mse_loss(tm.denoise(transformer, x_t, t.float(), states, pooled, rope).float(), target)


def train_shapes(args) -> None:
    from . import shapes as world
    from . import shapes_eval
    from . import shapes_model as sm
    from .shapes_report import measure

    out = Path(args.out) if args.out else sm.CHECKPOINT_DIR
    state_dir = Path(args.state) if args.state else _default_state_dir("shapes", out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m recipes.worlds.train " + " ".join(sys.argv[1:])
    t_start = time.time()

    # ---- evaluators ---------------------------------------------------------------------
    have_eval = (out / "evaluators" / "config.json").exists()
    if not args.skip_evaluators and not (args.resume and have_eval):
        t0 = time.time()
        ev = shapes_eval.train_evaluators(seed=args.seed, device=args.device)
        acc = shapes_eval.evaluate(ev)
        acc_noisy = shapes_eval.evaluate(ev, noise=0.1)
        secs = time.time() - t0
        shapes_eval.save_evaluators(
            ev,
            out / "evaluators",
            extra={
                "heldout_accuracy": acc,
                "heldout_accuracy_noise0.1": acc_noisy,
                "train_seconds": round(secs, 1),
                "device": args.device,
                "seed": args.seed,
            },
        )
        print(f"evaluators: {secs:.0f} s, held-out {acc}, with noise 0.1 {acc_noisy}", flush=True)
    if args.only_evaluators:
        return
    evaluators = (
        shapes_eval.load_evaluators(out / "evaluators") if (out / "evaluators" / "config.json").exists() else None
    )

    # ---- denoiser + text encoder ----------------------------------------------------------
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    with torch.device("cpu"):  # seeded weights, the same on every device
        unet, text = sm.build_unet(), sm.build_text_encoder()
        noise_sched = sm.build_train_scheduler()
    unet, text = unet.to(device), text.to(device)
    tokenizer = world.build_tokenizer()
    gen, (ema_unet, ema_text), params, opt, step, history, total = _setup_training(
        args, (unet, text), state_dir, reset_lr=True
    )
    seg_start = step
    alphas = noise_sched.alphas_cumprod.to(device)

    def lr_at(step_now):
        """Constant ``--lr``; with ``--lr-final``, a cosine decay over this invocation's steps."""
        if args.lr_final is None:
            return args.lr
        frac = (step_now - seg_start) / max(1, total - seg_start)
        return args.lr_final + (args.lr - args.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))

    def loss():
        return shapes_loss(unet, text, tokenizer, alphas, args.batch_size, args.p_uncond, gen)

    def save(step_now, seg_seconds):
        pipe = sm.build_pipeline(*_on_cpu(ema_unet, ema_text), tokenizer=tokenizer)
        sm.save_pipeline(pipe, out)
        hist = _with_segment(history, command, seg_start, step_now, seg_seconds)
        _save_state(state_dir, step_now, unet, text, ema_unet, ema_text, opt, gen, hist)
        info = {
            "steps": step_now,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "device": str(device),
            "dtype": args.dtype,
            "history": hist,
        }
        (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")

    def evaluate(step_now):
        if evaluators is None or args.eval_n <= 0:
            return
        pipe = sm.build_pipeline(*_on_cpu(ema_unet, ema_text), tokenizer=tokenizer)
        t0 = time.time()
        res = measure(pipe, evaluators, n=args.eval_n, scales=(1.0, 3.0), steps=25, seed=7)
        short = {
            g: {k: round(v, 3) for k, v in r.items() if k in ("all", "shape", "colour", "style")}
            for g, r in res.items()
        }
        _record_eval(history, step_now, args.eval_n, short, time.time() - t0)

    secs = _train_loop(
        args,
        desc="shapes denoiser",
        step=step,
        total=total,
        models=(unet, text),
        emas=(ema_unet, ema_text),
        params=params,
        opt=opt,
        loss=loss,
        save=save,
        evaluate=evaluate,
        lr_at=lr_at,
    )
    print(f"done: {total} steps, denoiser {secs:.0f} s, total {time.time() - t_start:.0f} s -> {out}", flush=True)


def train_tones(args) -> None:
    """Tones world: ``StableAudioDiTModel`` + ``CLIPTextModel`` trained jointly on the semitone
    representation (see :mod:`recipes.worlds.tones_model`): v-prediction on a 1000-step cosine
    schedule (the DiT sees ``t / 1000``), AdamW, gradient clipping at 1, ``--p-uncond`` empty
    prompts, EMA of the weights (what is saved). Clips are drawn fresh every step."""
    from . import tones as world
    from . import tones_model as tm

    out = Path(args.out) if args.out else tm.CHECKPOINT_DIR
    state_dir = Path(args.state) if args.state else _default_state_dir("tones", out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m recipes.worlds.train " + " ".join(sys.argv[1:])
    t_start = time.time()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    with torch.device("cpu"):  # seeded weights, the same on every device
        tr, text = tm.build_transformer(), tm.build_text_encoder()
        rope = tm.rotary_embedding(tr)
        noise_sched = tm.build_train_scheduler()
    tr, text, rope = tr.to(device), text.to(device), tuple(r.to(device) for r in rope)
    tokenizer = world.build_tokenizer()
    gen, (ema_tr, ema_text), params, opt, step, history, total = _setup_training(
        args, (tr, text), state_dir, reset_lr=False
    )
    seg_start = step
    alphas = noise_sched.alphas_cumprod.to(device)

    def ema_model():
        return tm.TonesModel(*_on_cpu(ema_tr, ema_text), tokenizer, tm.build_scheduler())

    def loss():
        return tones_loss(
            tr, lambda p: tm.encode_text(text, tokenizer, p), alphas, rope, args.batch_size, args.p_uncond, gen
        )

    def save(step_now, seg_seconds):
        hist = _with_segment(history, command, seg_start, step_now, seg_seconds)
        info = {
            "steps": step_now,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "p_uncond": args.p_uncond,
            "ema": args.ema,
            "device": str(device),
            "dtype": args.dtype,
            "history": hist,
        }
        tm.save_model(ema_model(), out, extra=info)
        _save_state(state_dir, step_now, tr, text, ema_tr, ema_text, opt, gen, hist)

    def evaluate(step_now):
        if args.eval_n <= 0:
            return
        t0 = time.time()
        res = tm.evaluate(ema_model(), n=args.eval_n, scales=(1.0, 3.0), steps=25, seed=7)
        short = {g: {k: round(v, 3) for k, v in r.items()} for g, r in res.items()}
        _record_eval(history, step_now, args.eval_n, short, time.time() - t0)

    secs = _train_loop(
        args,
        desc="tones DiT",
        step=step,
        total=total,
        models=(tr, text),
        emas=(ema_tr, ema_text),
        params=params,
        opt=opt,
        loss=loss,
        save=save,
        evaluate=evaluate,
    )
    print(f"done: {total} steps, {secs:.0f} s, total {time.time() - t_start:.0f} s -> {out}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m recipes.worlds.train", description="Retrain a world's tiny models from scratch."
    )
    ap.add_argument("world", choices=["shapes", "tones"])
    ap.add_argument("--steps", type=int, default=4000, help="denoiser steps (added on --resume)")
    ap.add_argument("--out", default=None, help="checkpoint folder (default: the shipped one)")
    ap.add_argument("--state", default=None, help="training-state folder (default under ~/.cache/interventions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="shapes: cosine-decay the lr from --lr to this over this run's steps (default: constant lr)",
    )
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=1000, help="prompt-following check every N steps (0: off)")
    ap.add_argument("--eval-n", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice). On a shared machine "
        "1 is much faster: 2 threads under contention ran 5-10x slower",
    )
    ap.add_argument("--device", default="cpu", help="where to train: cpu, cuda, ... (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast precision")
    ap.add_argument("--skip-evaluators", action="store_true")
    ap.add_argument("--only-evaluators", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.world == "shapes":
        train_shapes(args)
    elif args.world == "tones":
        train_tones(args)


if __name__ == "__main__":
    main()
