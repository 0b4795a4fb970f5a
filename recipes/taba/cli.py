"""``interventions run taba``: the "There and Back Again" measurements on a model, per seed.

::

    interventions run taba --model shapes --seeds 0            # the shipped shapes model + its training checkpoints
    interventions run taba --model gmm --seeds 0 1 2           # the Gaussian-mixture world's exact denoiser
    interventions run taba --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda \\
        --n 64 --steps 100 --prompt "a photograph of a cat" --no-dynamics
    interventions run taba --model google/ddpm-cifar10-32 --device cuda --n 256 --steps 100 --no-dynamics

``--model`` is ``gmm``, ``shapes`` (the shipped checkpoint), a folder (a shapes checkpoint folder or
any diffusers pipeline saved with safetensors) or a Hub id (loaded with ``use_safetensors=True``:
repos that ship only pickled weights are refused). For each seed: ``--n`` noises, DDIM sampling
and DDIM inversion with ``--steps`` steps, inversions plain and with the forward-noising fix
(``--forward-steps``), with the model evaluated at the level each step starts from (``source``, the
default: the paper's ADM code, and what its diffusers-based fix does in effect; on the
Gaussian-mixture world the fix restores flat regions' spread to about 1 only this way) and, with ``--model-timesteps target source``, also at the level
it goes to (``target``: diffusers' pipelines, the most exact round trip). Then,
unless ``--no-dynamics``, the same noise through the training checkpoints (``--checkpoints``;
default for ``shapes``: ``recipes/worlds/checkpoints/shapes_training/*`` and the shipped final).
Writes ``taba_<model>_seed<S>.json`` / ``.png``, ``taba_<model>_grid_seed<S>.png``,
``taba_<model>_dynamics_seed<S>.json`` / ``.png`` and ``taba_<model>_summary.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from interventions.inversion import ddim_schedulers

from .experiment import Model, gmm_model, load_training_checkpoint, measure, pipeline_model, training_dynamics

__all__ = ["main", "SHAPES_TRAINING_DIR"]

SHAPES_TRAINING_DIR = Path(__file__).resolve().parents[1] / "worlds" / "checkpoints" / "shapes_training"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="interventions run taba", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="gmm | shapes | a pipeline folder | a Hub id")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n", type=int, default=32, help="noises per seed (one batch)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps for sampling and inversion")
    ap.add_argument("--forward-steps", type=int, nargs="+", default=[2], help="K of the forward-noising fix")
    ap.add_argument(
        "--model-timesteps",
        nargs="+",
        default=["source"],
        choices=["target", "source"],
        help="where inversion evaluates the model: source (default) and/or target level; see ddim_invert",
    )
    ap.add_argument("--prompt", action="append", help="prompt (repeat: one per row, cycled); default '' or the world's")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    ap.add_argument("--flat-threshold", type=float, default=0.02, help="3x3 std below which a pixel is flat")
    ap.add_argument("--checkpoints", nargs="+", type=Path, help="training checkpoints, in training order")
    ap.add_argument("--no-dynamics", action="store_true", help="skip the training-checkpoint part")
    ap.add_argument("--tol", type=float, default=0.05, help="stabilisation tolerance of the dynamics curves")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("taba_out"))
    return ap


def _is_shapes(model: str) -> bool:
    index = Path(model) / "model_index.json"
    return model == "shapes" or (index.is_file() and "recipes.worlds.shapes_model" in index.read_text())


def _load_pipeline(model: str, device: str) -> Any:
    """A shapes folder through its loader, anything else through diffusers (safetensors only)."""
    if _is_shapes(model):
        from recipes.worlds.shapes_model import load_pipeline

        return load_pipeline(None if model == "shapes" else Path(model), device=device)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(model, use_safetensors=True).to(device)


def _check_model(model: str) -> None:
    if model in ("gmm", "shapes") or Path(model).exists():
        return
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise SystemExit(f"interventions run taba: --model {model!r}: no such folder (and not a Hub id)")


def _checkpoint_step(folder: Path, index: int) -> int:
    info = folder / "checkpoint.json"
    if info.is_file():
        return int(json.loads(info.read_text())["step"])
    digits = re.findall(r"\d+", folder.name)
    return int(digits[-1]) if digits else index


def _checkpoint_models(args, base_pipe, prompts) -> list[tuple[int, Model]]:
    """``--checkpoints`` in order; for ``shapes`` by default the training checkpoints and then the
    shipped model at its final step (``training.json``)."""
    pipes = []
    for i, folder in enumerate(args.checkpoints or []):
        if not folder.is_dir():
            raise SystemExit(f"interventions run taba: checkpoint {str(folder)!r} is not a folder")
        full = (folder / "model_index.json").is_file()
        pipe = _load_pipeline(str(folder), args.device) if full else load_training_checkpoint(folder, base_pipe)
        pipes.append((_checkpoint_step(folder, i), pipe))
    if args.checkpoints is None:
        from recipes.worlds.shapes_model import CHECKPOINT_DIR

        folders = sorted(p for p in SHAPES_TRAINING_DIR.glob("step_*") if p.is_dir())
        if not folders:
            raise SystemExit(
                f"interventions run taba: no checkpoints in {SHAPES_TRAINING_DIR}; see scripts/taba_checkpoints.py"
            )
        pipes = [(_checkpoint_step(f, i), load_training_checkpoint(f, base_pipe)) for i, f in enumerate(folders)]
        pipes.append((json.loads((CHECKPOINT_DIR / "training.json").read_text())["steps"], base_pipe))
    return [(step, pipeline_model(p, prompts, args.guidance, args.flat_threshold)) for step, p in pipes]


def _prompts(args, n: int, seed: int) -> list[str] | None:
    if args.prompt:
        return [args.prompt[i % len(args.prompt)] for i in range(n)]
    if _is_shapes(args.model):
        from recipes.worlds import shapes

        return shapes.sample(n, torch.Generator().manual_seed(10_000 + seed)).prompts
    return None


def _summary(result: dict) -> dict:
    """The headline numbers of one seed (what the results README tabulates)."""
    out = {"assign": result["assign"], "noise_flat_std": result["noise_flat"]["std_flat"], "variants": {}}
    for name, v in result["variants"].items():
        out["variants"][name] = {
            "distance": v["distance"],
            "angle": v["angle"],
            "flat_std": v["flat"]["std_flat"],
            "textured_std": v["flat"]["std_textured"],
            "assign": v["assign"],
        }
    return out


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit code (see the module docstring)."""
    from .plots import plot_dynamics, plot_grid, plot_measurements

    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _check_model(args.model)
    if args.n < 2 or args.steps < 1 or any(not 0 <= k < args.steps for k in args.forward_steps):
        raise SystemExit("interventions run taba: need --n >= 2, --steps >= 1 and 0 <= --forward-steps < --steps")
    name = re.sub(r"[^\w.-]+", "_", Path(args.model).name if Path(args.model).exists() else args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    base = None if args.model == "gmm" else _load_pipeline(args.model, args.device)
    if base is not None:
        ddim_schedulers(base.scheduler)  # refuses a scheduler that cannot invert before any work
    dynamics = not args.no_dynamics and base is not None
    summary: dict[str, Any] = {"model": args.model, "args": {k: str(v) for k, v in vars(args).items()}, "seeds": {}}
    for seed in args.seeds:
        t0 = time.time()
        prompts = _prompts(args, args.n, seed)
        model = gmm_model(seed) if base is None else pipeline_model(base, prompts, args.guidance, args.flat_threshold)
        noise = torch.randn(args.n, *model.shape, generator=torch.Generator().manual_seed(seed)).to(args.device)
        result = measure(model, noise, args.steps, args.forward_steps, 1000 + seed, args.model_timesteps, progress=True)
        tensors = result.pop("tensors")
        (args.out / f"taba_{name}_seed{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
        _save_fig(plot_measurements(result, f"{args.model}, seed {seed}"), args.out / f"taba_{name}_seed{seed}.png")
        if len(model.shape) == 3:
            _save_fig(
                plot_grid(tensors, title=f"{args.model}, seed {seed}"), args.out / f"taba_{name}_grid_seed{seed}.png"
            )
        summary["seeds"][seed] = _summary(result)
        if dynamics:
            dyn = training_dynamics(_checkpoint_models(args, base, prompts), noise, args.steps, args.tol)
            grid = {f"step {s}": x for s, x in zip(dyn["train_steps"], dyn.pop("samples"), strict=True)}
            _save_fig(
                plot_grid(grid, title=f"fixed noise, seed {seed}"),
                args.out / f"taba_{name}_dynamics_grid_seed{seed}.png",
            )
            (args.out / f"taba_{name}_dynamics_seed{seed}.json").write_text(json.dumps(dyn, indent=1) + "\n")
            _save_fig(
                plot_dynamics(dyn, f"{args.model}, seed {seed}"), args.out / f"taba_{name}_dynamics_seed{seed}.png"
            )
            summary["seeds"][seed]["dynamics"] = {k: dyn[k] for k in ("train_steps", "curves", "stable_from")}
        summary["seeds"][seed]["seconds"] = round(time.time() - t0, 1)
        print(f"seed {seed}: {json.dumps(summary['seeds'][seed])}", flush=True)
    (args.out / f"taba_{name}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}/taba_{name}_*", file=sys.stderr)
    return 0
