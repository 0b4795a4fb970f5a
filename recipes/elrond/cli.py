"""``interventions run elrond``: ELROND's variation directions of prompts, from gradients in the
prompt-embedding space (arXiv 2602.10216).

::

    interventions run elrond                                   # the shapes ladder, seeds 0 1 2 (~5 min, 1 thread)
    interventions run elrond --prompt "a striped circle" --steer "a striped circle" --seeds 0
    interventions run elrond --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda \\
        --prompt "a photo of a dog" --n 1024 --batch 2 --sample-steps 25 --regen-steps 4 \\
        --guidance 7.5 --strength 8 --steer "a photo of a dog"

For each ``--prompt`` and seed: ``--n`` samples, random pairs, the concept token's gradients
(``--word``, default the last word) streamed to ``<out>/grads_<distance>/<prompt>/seed<S>`` (a
DiskStore; a rerun reads them back; ``grads`` for pixel), and the complexity table: the complexity
column (the median gradient norm, :mod:`recipes.elrond.complexity`) beside the paper's components
to 95% of the variance and spectral gap; with the whole ladder, whether the column falls along it
on each seed (``ladder_holds``). On the shapes model the distance defaults to ``canonical``
(position and size factored out, :mod:`recipes.elrond.distance`), under which the column orders
the ladder; ``--distance pixel`` is the paper's (any other ``--model`` uses it). The complexity
ordering alone, on the pre-registered fresh seeds::

    interventions run elrond --no-steer --seeds 20 21 22 23 24

For each ``--steer`` prompt: PCA directions (the paper's explained-variance threshold) and TopK SAE
directions of the first seed's gradients, saved to ``elrond_directions_<prompt>[_canonical].safetensors``; on
the shapes model also the evaluators' verdict on steering along the top directions and on random
steering, on ``--steer-seeds`` (noise the gradients never saw). Writes
``elrond_<model>[_canonical].json`` and ``.png``.

``--model`` is ``shapes`` (the shipped checkpoint), a folder or a Hub id of a Stable Diffusion
1.x/2.x or SDXL pipeline (loaded with ``use_safetensors=True``; for SDXL the regeneration passes the
UNet's ``added_cond_kwargs``, :mod:`recipes.elrond.gradients`). ``--unet FILE.safetensors`` loads a
UNet state dict into that pipeline's UNet (strictly: every key, every shape), ``--lcm`` samples with
an ``LCMScheduler`` at trailing timestep spacing: 4 steps sample at 999 / 759 / 499 / 259 and the
regeneration's DDIM, which takes the pipeline's spacing, runs 999 / 749 / 499 / 249, the timesteps
DMD2 (an SDXL UNet distilled to 4 steps, sampled without CFG) was distilled for (SDXL base's own
leading spacing would regenerate from 751, not from noise)::

    interventions run elrond --model stabilityai/stable-diffusion-xl-base-1.0 --unet dmd2_sdxl_4step_unet.safetensors \\
        --lcm --dtype float16 --device cuda --prompt "a photo of a dog" --steer "a photo of a dog" \\
        --n 1024 --batch 2 --sample-steps 4 --regen-steps 4 --guidance 1

The authors (``tianweiy/DMD2`` on the Hub) ship the 4-step UNet as a pickle (``.bin``), which this
CLI does not load; their LoRA is safetensors, so the UNet file can be made without pickle: load
the base with ``StableDiffusionXLPipeline.from_pretrained(base, use_safetensors=True)``, then
``pipe.load_lora_weights("tianweiy/DMD2", weight_name="dmd2_sdxl_4step_lora_fp16.safetensors")``,
``pipe.fuse_lora()``, ``pipe.unload_lora_weights()`` and
``safetensors.torch.save_file(pipe.unet.state_dict(), "dmd2_sdxl_4step_unet.safetensors")``. Not
run here: no weights and no GPU on these machines.

``--student [FOLDER]`` runs the few-step student experiment instead (shapes only; default the
shipped student, :mod:`recipes.elrond.student`): for each ``--prompt`` (default "a striped circle"
and "a circle") the top PCA directions of the teacher's gradients (first ``--seeds``), then teacher,
student and randomly steered student on each ``--steer-seeds`` (:mod:`recipes.elrond.collapse`), at
strengths ``U[3, 6]`` unless ``--strength`` says otherwise (:mod:`recipes.elrond.strength`).
Writes ``elrond_student.json``, ``elrond_student.png`` and ``elrond_student_samples.png``::

    interventions run elrond --student --seeds 0 --steer-seeds 101 102 103 --threads 1
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_model", "main"]

LADDER = ["a", "a circle", "a striped circle", "a striped red circle"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="interventions run elrond", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="shapes | a pipeline folder | a Hub id (SD 1.x / 2.x / SDXL)")
    ap.add_argument("--unet", type=Path, help="a UNet state dict (.safetensors) for --model's UNet, e.g. DMD2's")
    ap.add_argument("--lcm", action="store_true", help="sample with an LCMScheduler, trailing spacing (DMD2)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="--model's dtype")
    ap.add_argument("--prompt", action="append", help="prompt (repeat); default: the shapes ladder " + str(LADDER))
    ap.add_argument("--word", help="concept word (default: each prompt's last word)")
    ap.add_argument("--steer", action="append", help="prompt whose directions are kept and steered (repeat)")
    ap.add_argument("--no-steer", action="store_true", help="concept complexity only: no directions, no steering")
    ap.add_argument(
        "--self-null",
        action="store_true",
        help="also collect self-pair gradients (B = A) and count the directions above that null (twice the work)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="gradient seeds (images and pairs)")
    ap.add_argument("--steer-seeds", type=int, nargs="+", default=[101, 102, 103], help="held-out steering noise")
    ap.add_argument("--n", type=int, default=128, help="pairs (= samples) per prompt and seed")
    ap.add_argument("--n-steer", type=int, default=64, help="samples per steering measurement")
    ap.add_argument(
        "--strength",
        type=float,
        default=None,
        help="steering strength (|e_tok| is ~6.7 on shapes); default 8, and for --student 6: random steering at "
        "U[s/2, s], chosen on selection seeds by python -m recipes.elrond.strength",
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--regen-steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument(
        "--distance",
        default=None,
        choices=["pixel", "canonical"],
        help="dist(regen(A), B): pixel MSE (the paper) or MSE after moving both to a canonical position and size "
        "(the shapes model's default: it orders the ladder; pixel for any other --model; --student uses pixel)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; default 1 on the shapes model (its 1M-parameter UNet: 2 threads on the shared 2-core "
        "machine burned 3.3x the CPU for the same run), torch's own default for any other --model",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/elrond"))
    ap.add_argument(
        "--student", nargs="?", const="shipped", help="run the few-step student experiment (a folder; default shipped)"
    )
    return ap


def load_model(
    model: str, device: str = "cpu", unet: Path | None = None, lcm: bool = False, dtype: str = "float32"
) -> Any:
    """The pipeline of ``--model`` (safetensors only), with ``--unet``'s weights and ``--lcm``'s
    scheduler.

    >>> load_model("shapes").__class__.__name__
    'StableDiffusionPipeline'
    """
    if model == "shapes":
        if unet is not None or lcm or dtype != "float32":
            raise SystemExit("interventions run elrond: --unet, --lcm and --dtype are for a --model pipeline")
        from recipes.worlds.shapes_model import load_pipeline

        return load_pipeline(device=device)
    if not Path(model).exists() and (not _HUB_ID.match(model) or model.startswith((".", "/", "~"))):
        raise SystemExit(f"interventions run elrond: --model {model!r}: no such folder (and not a Hub id)")
    if unet is not None and (unet.suffix != ".safetensors" or not unet.is_file()):
        raise SystemExit(f"interventions run elrond: --unet {unet}: not a .safetensors file (only safetensors load)")
    from diffusers import DiffusionPipeline, LCMScheduler
    from safetensors.torch import load_file

    pipe = DiffusionPipeline.from_pretrained(model, use_safetensors=True, torch_dtype=getattr(torch, dtype))
    if not hasattr(pipe, "unet") or not hasattr(pipe, "encode_prompt"):
        raise SystemExit(
            f"interventions run elrond: --model {model!r} is a {type(pipe).__name__}: no text-conditioned UNet"
        )
    if unet is not None:
        try:
            weights = {k: v.to(pipe.unet.dtype) for k, v in load_file(str(unet)).items()}
            missing, unexpected = pipe.unet.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # a shape that does not fit
            raise SystemExit(f"interventions run elrond: --unet {unet} does not fit {model!r}'s UNet: {e}") from None
        if missing or unexpected:
            raise SystemExit(
                f"interventions run elrond: --unet {unet} does not fit {model!r}'s UNet: {len(missing)} keys missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
    if lcm:
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .complexity import complexity_table, ladder_holds
    from .experiment import measure
    from .gradients import Setting, concept_position
    from .plots import plot

    threads = args.threads or (1 if args.model == "shapes" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.student is not None:
        return _run_student(args)
    args.strength = 8.0 if args.strength is None else args.strength
    args.distance = args.distance or ("canonical" if args.model == "shapes" else "pixel")
    if args.distance == "canonical" and args.model != "shapes":
        raise SystemExit(
            "interventions run elrond: --distance canonical is the shapes world's (images on a -1 background); "
            "use --distance pixel with --model"
        )
    prompts = args.prompt or (LADDER if args.model == "shapes" else None)
    if not prompts:
        raise SystemExit("interventions run elrond: --prompt is required with a --model other than shapes")
    steer = args.steer or ([p for p in ("a striped circle",) if p in prompts] if args.model == "shapes" else [])
    if args.no_steer:
        steer = []
    if unknown := [p for p in steer if p not in prompts]:
        raise SystemExit(f"interventions run elrond: --steer {unknown} must also be given as --prompt")
    if args.n < 2 or args.n_steer < 2:
        raise SystemExit("interventions run elrond: --n and --n-steer must be at least 2")
    pipe = load_model(args.model, args.device, args.unet, args.lcm, args.dtype)
    for p in prompts:  # unknown words and a missing concept word, before any sampling
        try:
            concept_position(pipe.tokenizer, p, args.word)
        except ValueError as e:
            raise SystemExit(f"interventions run elrond: {e}") from None
    evaluators = None
    if args.model == "shapes":
        from recipes.worlds.shapes_model import load_evaluators

        evaluators = load_evaluators()
    setting = Setting(args.sample_steps, args.regen_steps, args.guidance, args.batch, args.distance)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    grads = args.out / ("grads" if args.distance == "pixel" else f"grads_{args.distance}")
    result = measure(
        pipe, evaluators, prompts, args.seeds, args.n, grads, setting, steer, args.steer_seeds,
        args.strength, args.n_steer, args.self_null,
    )  # fmt: skip
    result["seconds"] = round(time.time() - start, 1)
    print(complexity_table(result))
    if all(p in result["prompts"] for p in LADDER):
        result["ladder_holds"] = {
            s: ladder_holds({p: result["prompts"][p]["complexity"][s]["median_norm"] for p in LADDER}, LADDER)
            for s in args.seeds
        }
        print(f"complexity falls along {LADDER} (per seed): {result['ladder_holds']}")
    name = re.sub(r"[^\w.-]+", "_", Path(args.model).name) + ("" if args.distance == "pixel" else f"_{args.distance}")
    _save_directions(result, args.out, "" if args.distance == "pixel" else f"_{args.distance}")
    (args.out / f"elrond_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"elrond_{name}.png")
    print(f"wrote {args.out / f'elrond_{name}.json'} ({result['seconds']} s)")
    return 0


def _run_student(args: argparse.Namespace) -> int:
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    from .collapse import student_experiment
    from .gradients import Setting, concept_position
    from .strength import STUDENT_STRENGTH
    from .student import load_student
    from .student_plots import plot_samples, plot_student

    args.strength = STUDENT_STRENGTH if args.strength is None else args.strength
    if args.model != "shapes":
        raise SystemExit("interventions run elrond: --student is the shapes model's student; drop --model")
    if args.n < 2 or args.n_steer < 2:
        raise SystemExit("interventions run elrond: --n and --n-steer must be at least 2")
    try:
        student = load_student(None if args.student == "shipped" else args.student)
    except FileNotFoundError as e:
        raise SystemExit(f"interventions run elrond: --student: {e}") from None
    pipe = load_pipeline(device=args.device)
    prompts = args.prompt or ["a striped circle", "a circle"]
    for p in prompts:
        try:
            concept_position(pipe.tokenizer, p)
        except ValueError as e:
            raise SystemExit(f"interventions run elrond: {e}") from None
    setting = Setting(args.sample_steps, args.regen_steps, args.guidance, args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    result, images = student_experiment(
        pipe, student, load_evaluators(), prompts, args.seeds[0], args.n, args.steer_seeds, args.strength,
        args.n_steer, args.out / "grads", setting,
    )  # fmt: skip
    result["seconds"] = round(time.time() - start, 1)
    (args.out / "elrond_student.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_student(result, args.out / "elrond_student.png")
    plot_samples(images, args.out / "elrond_student_samples.png")
    print(f"wrote {args.out / 'elrond_student.json'} ({result['seconds']} s)")
    return 0


def _save_directions(result: dict[str, Any], out: Path, suffix: str = "") -> None:
    """Directions to safetensors (one file per steered prompt); the JSON keeps their metadata only."""
    from safetensors.torch import save_file

    for prompt, entry in result["prompts"].items():
        d = entry.get("directions")
        if d is None:
            continue
        slug = "_".join(prompt.split()) or "empty"
        save_file(
            {"pca": d.pop("pca").contiguous(), "sae": d.pop("sae").contiguous()},
            str(out / f"elrond_directions_{slug}{suffix}.safetensors"),
        )
