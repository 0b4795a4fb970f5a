"""``interventions run jdcl``: two class-incremental tasks of the shapes world (``--split colour``:
red vs green, then blue vs yellow; ``--split shape``: circle vs square, then triangle vs cross; one
4-way classifier), JDCL against naive fine-tuning, generative replay without distillation and
joint training on both tasks.

Reports per seed the accuracy matrix ``A[i][j]`` (accuracy on task ``j``'s test images after
training on task ``i``, all four classes allowed), the average accuracy after the last task and
the forgetting of task 1 (``A[0][0] - A[1][0]``); with ``out``, each seed's JDCL global model is
saved there in the Hub layout with its card (``jdcl_model_seed<S>/``, read back by
``recipes.joint_diffusion.hub.load_joint``).

The CLI's defaults are the measured configuration (results README, "class-conditional
v-prediction"): class-balanced replay from class-conditional generators (:mod:`.shapes`), each
seed in its own worker process (:mod:`recipes.seed_workers`; ``--workers 1``: one after another
in this process, the same numbers). :func:`run_jdcl` below is the first runs' replay
(``--per-class 0``): a fixed number of unconditional draws per generator, mismatches dropped.

>>> config = JDCLConfig(seeds=(0,), n_train=16, n_test=8, steps=1, global_steps=1, n_generated=4, sample_steps=2)
>>> result = run_jdcl(config, progress=False)
>>> sorted(result["runs"][0]["methods"])
['jdcl', 'joint', 'naive', 'replay']
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from recipes.joint_diffusion.model import PREDICTIONS, JointDiffusion
from recipes.joint_diffusion.train import TrainConfig, accuracy, train_joint
from recipes.mediffusion.data import two_class_shapes
from recipes.seed_workers import SeedWorkers, add_workers_argument, default_workers, seed_folder

from .continual import DistillConfig, fine_tune, fresh_model, generate, keep_classes, train_global
from .sequence import save_global, stage_count
from .shapes import PROGRESS, BalancedConfig, run_balanced

__all__ = ["JDCLConfig", "TASKS", "run_jdcl", "main"]

#: Two class-incremental tasks per split: the classes are values of that factor of the shapes world.
TASKS = {
    "shape": (("circle", "square"), ("triangle", "cross")),
    "colour": (("red", "green"), ("blue", "yellow")),
}


@dataclass
class JDCLConfig:
    seeds: tuple[int, ...] = (0, 1)
    split: str = "colour"
    n_train: int = 400  # per task
    n_test: int = 300  # per task
    steps: int = 150  # local models, naive fine-tuning, joint training
    global_steps: int = 150
    n_generated: int = 200  # samples drawn from each generator
    sample_steps: int = 20
    widths: tuple[int, ...] = (8, 16)
    hidden: int = 32
    diffusion_weight: float = 0.1


def _tasks(config: JDCLConfig, seed: int):
    if config.split not in TASKS:
        raise ValueError(f"split must be one of {sorted(TASKS)}, got {config.split!r}")
    out = []
    for k, classes in enumerate(TASKS[config.split]):
        g = torch.Generator().manual_seed(100 * seed + k)
        train = two_class_shapes(config.n_train, classes, g, factor=config.split)
        test = two_class_shapes(config.n_test, classes, torch.Generator().manual_seed(10_000 + k), factor=config.split)
        out.append(((train.images, train.labels + 2 * k), (test.images, test.labels + 2 * k)))
    return out


def _row(model: JointDiffusion, tasks) -> list[float]:
    return [accuracy(model, x, y) for _, (x, y) in tasks]


def _local(x: torch.Tensor, y: torch.Tensor, config: JDCLConfig, train: TrainConfig, seed: int) -> JointDiffusion:
    """A fresh 4-way joint model trained (denoising + cross-entropy) on ``x``, ``y`` alone."""
    model = fresh_model(4, config.widths, config.hidden, seed)
    train_joint(model, x, y, unlabelled=x, mode="joint", config=train)
    return model


def run_jdcl(config: JDCLConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Every method per seed; ``jdcl.json`` written under ``out`` after every seed."""
    result: dict[str, Any] = {"config": asdict(config), "runs": []}
    for seed in config.seeds:
        t = time.process_time()
        tasks = _tasks(config, seed)
        (x1, y1), (x2, y2) = tasks[0][0], tasks[1][0]
        train = TrainConfig(steps=config.steps, diffusion_weight=config.diffusion_weight, seed=seed)

        local1 = _local(x1, y1, config, train, seed)
        first = _row(local1, tasks)  # after task 1, every continual method holds this model
        local2 = _local(x2, y2, config, train, seed + 17)
        g = torch.Generator().manual_seed(seed)
        old_x, old_y = keep_classes(*generate(local1, config.n_generated, config.sample_steps, generator=g), [0, 1])
        new_x, new_y = keep_classes(*generate(local2, config.n_generated, config.sample_steps, generator=g), [2, 3])
        replay, labels = torch.cat([old_x, new_x]), torch.cat([old_y, new_y])
        distill = DistillConfig(steps=config.global_steps, denoising=config.diffusion_weight, seed=seed)
        no_kd = DistillConfig(**{**asdict(distill), "diffusion_kd": 0.0, "classifier_kd": 0.0})
        finals = {
            "naive": fine_tune(local1, x2, y2, train),
            "replay": train_global(local1, local2, replay, labels, [0, 1], no_kd),
            "jdcl": train_global(local1, local2, replay, labels, [0, 1], distill),
        }
        joint = _local(torch.cat([x1, x2]), torch.cat([y1, y2]), config, train, seed + 34)
        methods = {}
        for name, model in finals.items():
            matrix = [first, _row(model, tasks)]
            methods[name] = {
                "matrix": matrix,
                "average": statistics.fmean(matrix[-1]),
                "forgetting": matrix[0][0] - matrix[1][0],
            }
        final_joint = _row(joint, tasks)
        methods["joint"] = {"matrix": [final_joint], "average": statistics.fmean(final_joint), "forgetting": None}
        run = {
            "seed": seed,
            "methods": methods,
            "replay_kept": {"old": len(old_y), "new": len(new_y), "drawn_each": config.n_generated},
            "local_task2": _row(local2, tasks),
            "cpu_s": time.process_time() - t,
        }
        result["runs"].append(run)
        if progress:
            print(json.dumps({k: (v["average"], v["forgetting"]) for k, v in methods.items()}))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "jdcl.json").write_text(json.dumps(result, indent=1) + "\n")
            save_global(finals["jdcl"], Path(out) / f"jdcl_model_seed{seed}", methods["jdcl"], _card(config, seed))
    return result


def _card(config: JDCLConfig, seed: int) -> str:
    """What the saved global model is, for its Hub card."""
    first, second = TASKS[config.split]
    return (
        f"The global model JDCL trained after two class-incremental tasks of the shapes world ({config.split} split: "
        f"{' vs '.join(first)}, then {' vs '.join(second)}; one 4-way head, classes in that order), seed {seed}: a tiny "
        "diffusers UNet2DModel whose pooled down-block features feed an MLP classifier, distilled from the task-1 "
        "model and the task-2 local model on their generated replay. `model.classify(x)` gives logits, "
        "`model.denoise(x_t, t)` the noise prediction (16 x 16 RGB in [-1, 1])."
    )


def parser() -> argparse.ArgumentParser:
    """The shapes world's options (``--world mixture`` has its own: :mod:`recipes.jdcl.mixture`)."""
    p = argparse.ArgumentParser(
        prog="interventions run jdcl",
        description=__doc__.split("\n\n")[0],
        epilog="--world mixture: the Gaussian-mixture world instead (its options: --world mixture --help)",
    )
    p.add_argument("--world", choices=("shapes", "mixture"), default="shapes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--split", choices=sorted(TASKS), default="colour", help="tasks split by colour or by shape")
    p.add_argument("--n-train", type=int, default=400, help="training images per task")
    p.add_argument("--n-test", type=int, default=300, help="test images per task")
    p.add_argument("--steps", type=int, default=1500, help="steps of local, naive and joint training")
    p.add_argument("--global-steps", type=int, default=800)
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the replay sampler")
    p.add_argument("--diffusion-weight", type=float, default=1.0, help="weight of the denoising loss")
    p.add_argument(
        "--per-class",
        type=int,
        default=200,
        help="class-balanced replay (recipes.jdcl.shapes): draw until each class has this many samples; 0: the "
        "first runs' replay instead, --n-generated draws per generator (needs --no-conditional --prediction epsilon)",
    )
    p.add_argument("--max-draws", type=int, default=4096, help="samples per generator at most (balanced replay)")
    p.add_argument("--n-generated", type=int, default=200, help="with --per-class 0: samples drawn per generator")
    p.add_argument(
        "--conditional",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="class-conditional generators, each class's replay drawn by classifier-free guidance",
    )
    p.add_argument("--guidance", type=float, default=3.0, help="with --conditional: the guidance scale")
    p.add_argument(
        "--prediction",
        choices=PREDICTIONS,
        default="v_prediction",
        help="the UNet's output (epsilon, the earlier default: its samples are noise at this size)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (of each worker)")
    add_workers_argument(p)
    p.add_argument("--out", help="folder for jdcl_balanced.json (jdcl.json with --per-class 0) and the models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    world = argparse.ArgumentParser(add_help=False)
    world.add_argument("--world", choices=("shapes", "mixture"), default="shapes")
    chosen, rest = world.parse_known_args(argv)
    if chosen.world == "mixture":
        from .mixture import main as mixture_main

        return mixture_main(rest)
    p = parser()
    args = p.parse_args(argv)
    for name in ("n_train", "n_test", "steps", "global_steps", "n_generated", "sample_steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be >= 1 (1: seeds one after another in this process), got {args.workers}")
    if args.per_class == 0 and (args.conditional or args.prediction != "epsilon"):
        p.error(
            "--per-class 0 runs the first replay (unconditional epsilon-prediction generators, no class quota): "
            "add --no-conditional --prediction epsilon, or give --per-class N >= 1 for class-balanced replay"
        )
    if args.per_class < 0 or args.max_draws < args.per_class:
        p.error(f"need 0 <= --per-class <= --max-draws, got {args.per_class}, {args.max_draws}")
    workers = args.workers or default_workers(len(args.seeds), args.threads)
    if workers > 1 and len(args.seeds) > 1:
        return _parallel(p, args, workers)
    torch.set_num_threads(args.threads)
    if args.per_class:
        _report(run_balanced(_balanced(args), out=args.out, progress=not args.no_progress), args.out)
        return 0
    config = JDCLConfig(
        seeds=tuple(args.seeds),
        split=args.split,
        n_train=args.n_train,
        n_test=args.n_test,
        steps=args.steps,
        global_steps=args.global_steps,
        n_generated=args.n_generated,
        sample_steps=args.sample_steps,
        diffusion_weight=args.diffusion_weight,
    )
    _report(run_jdcl(config, out=args.out, progress=not args.no_progress), args.out)
    return 0


def _report(result: dict[str, Any], out: str | None) -> None:
    """The per-seed table of every method's accuracy matrix; with ``out``, their seed-mean figure
    ``jdcl_matrices.png``."""
    from .report import markdown, merge, plot

    merged = merge([result])
    print(markdown(merged))
    if out:
        plot(merged, Path(out) / "jdcl_matrices.png")


def _balanced(args: argparse.Namespace) -> BalancedConfig:
    return BalancedConfig(
        seeds=tuple(args.seeds),
        split=args.split,
        n_train=args.n_train,
        n_test=args.n_test,
        steps=args.steps,
        global_steps=args.global_steps,
        per_class=args.per_class,
        sample_steps=args.sample_steps,
        max_draws=args.max_draws,
        diffusion_weight=args.diffusion_weight,
        class_conditional=args.conditional,
        guidance=args.guidance,
        prediction=args.prediction,
    )


def _parallel(p: argparse.ArgumentParser, args: argparse.Namespace, workers: int) -> int:
    """Every seed in its own worker process (:mod:`recipes.seed_workers`); the seeds' results are
    merged into the file the in-process run writes (runs in ``--seeds`` order, the same config) and
    each seed's saved model moved to where the in-process run puts it."""
    import shutil
    import tempfile

    name = "jdcl_balanced.json" if args.per_class else "jdcl.json"
    seed_runs = SeedWorkers(  # the first runs' replay (--per-class 0) reports no stages: its bar counts seeds
        module="recipes.jdcl.run",
        result=name,
        parent_only=frozenset({"no_progress"}),
        extra=("--no-progress",),
        progress_file=PROGRESS if args.per_class else None,
        unit="stage" if args.per_class else "seed",
        finished_units=(lambda record: record["stages_done"]) if args.per_class else None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        t0 = time.time()
        units = stage_count(len(TASKS[args.split])) if args.per_class else 1
        paths = seed_runs.run(p, args, out, workers, not args.no_progress, units_per_seed=units)
        records = [json.loads(path.read_text()) for path in paths]
        merged = {
            "config": {**records[0]["config"], "seeds": list(args.seeds)},
            "runs": [r["runs"][0] for r in records],
        }
        (out / name).write_text(json.dumps(merged, indent=1) + "\n")
        _report(merged, args.out)
        for seed in args.seeds:
            model = seed_folder(out, seed) / f"jdcl_model_seed{seed}"
            shutil.rmtree(out / model.name, ignore_errors=True)
            shutil.move(model, out / model.name)
        print(f"{len(args.seeds)} seeds in {time.time() - t0:.0f} s ({workers} workers)")
    return 0


if __name__ == "__main__":  # the worker processes of recipes.seed_workers
    raise SystemExit(main())
