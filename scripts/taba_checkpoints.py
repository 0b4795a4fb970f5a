"""Intermediate checkpoints of the shapes model's training, for the training-dynamics part of
``recipes.taba`` (how early generations and noise <-> sample assignments stabilise).

Why a script: the shipped shapes checkpoint is only the end of its run (5,750 steps). This re-runs
the same recipe from scratch (``python -m recipes.worlds.train shapes``, seed 0, constant lr 1e-3,
evaluators skipped: they do not touch the denoiser's random streams) in segments with ``--resume``,
and after each segment writes the EMA UNet and text encoder in float16 safetensors (plus their
``config.json``) to ``OUT/step_NNNNN/{unet,text_encoder}/``. The first 4,000 steps of the shipped run
used the same seed and lr, so these lie on its trajectory (up to float rounding across machines);
later steps are refused (``CONSTANT_LR_STEPS``).

Run it in the background, never in CI (1-2.9 s per step at one thread on the shared machine)::

    nohup python scripts/taba_checkpoints.py --steps 50 150 400 1000 > /tmp/taba_ckpt.log 2>&1 &

``recipes.taba.load_training_checkpoint(folder)`` loads one on top of the shipped pipeline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "recipes" / "worlds" / "checkpoints" / "shapes_training"
#: The shipped run kept lr 1e-3 for this many steps, then cosine-decayed it towards 1e-4 over a
#: 2,500-step invocation that it stopped at 5,750 (its ``training.json``). ``train --lr-final``
#: decays over each invocation's own steps, so segments ending between 4,000 and 5,750 cannot
#: follow that schedule: past this step the script would leave the shipped model's trajectory.
CONSTANT_LR_STEPS = 4000


def _write_half(module, folder: Path, weights: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(folder / weights), metadata={"format": "pt"})
    config = module.config if isinstance(module.config, dict) else module.config.to_dict()
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, default=str) + "\n")


def _save(unet, text_encoder, dest: Path, step: int, seed: int) -> None:
    _write_half(unet, dest / "unet", "diffusion_pytorch_model.safetensors")
    _write_half(text_encoder, dest / "text_encoder", "model.safetensors")
    info = {"step": step, "seed": seed, "dtype": "float16", "ema": True}
    (dest / "checkpoint.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {dest}", flush=True)


def main(argv=None) -> None:
    from recipes.worlds import shapes_model as sm
    from recipes.worlds import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 150, 400, 1000], help="save after these steps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work", type=Path, default=Path("/tmp/taba_ckpt_work"), help="full pipeline + train state")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue a previous run's --work state")
    args = ap.parse_args(argv)
    if max(args.steps) > CONSTANT_LR_STEPS:
        ap.error(
            f"--steps past {CONSTANT_LR_STEPS} ({max(args.steps)}): the shipped run decayed the lr from there over "
            "one 2,500-step invocation, which segments cannot reproduce; save at most up to step 4000"
        )
    torch.set_num_threads(1)
    done = 0
    if args.resume:
        done = json.loads((args.work / "pipe" / "training.json").read_text())["steps"]
    for target in sorted(args.steps):
        if target <= done:
            continue
        t0 = time.time()
        common = ["--out", str(args.work / "pipe"), "--state", str(args.work / "state"), "--seed", str(args.seed)]
        train.main(
            ["shapes", "--steps", str(target - done), *common, "--threads", "1", "--skip-evaluators"]
            + ["--eval-every", "0", "--save-every", "100000", "--log-every", "50"]
            + (["--resume"] if done else [])
        )
        pipe = sm.load_pipeline(args.work / "pipe")
        _save(pipe.unet, pipe.text_encoder, args.out / f"step_{target:05d}", target, args.seed)
        print(f"step {target}: {time.time() - t0:.0f} s", flush=True)
        done = target


if __name__ == "__main__":
    main()
