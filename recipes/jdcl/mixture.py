"""JDCL on the Gaussian-mixture world: class-incremental tasks over the classes of a random
mixture (:func:`recipes.worlds.gaussian_mixture.random_mixture`), a :class:`~recipes.jdcl.mlp.JointMLP`
per model, every method of :mod:`recipes.jdcl.sequence`.

Here a generator learns its data in seconds, so JDCL's claims can be tested: naive fine-tuning
forgets the old classes, JDCL (class-balanced generated replay + distillation) stays near joint
training.

>>> config = MixtureConfig(seeds=(0,), tasks=2, n_train=32, n_test=16, steps=2, global_steps=2, per_class=4, sample_steps=2)
>>> result = run_mixture(config, progress=False)
>>> result["runs"][0]["methods"]["jdcl"]["matrix"][0] == result["runs"][0]["methods"]["naive"]["matrix"][0]
True
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from recipes.worlds.gaussian_mixture import random_mixture

from .mlp import JointMLP
from .sequence import SequenceConfig, Task, run_sequence, save_global

__all__ = ["MixtureConfig", "mixture_tasks", "run_mixture", "main"]


@dataclass
class MixtureConfig:
    """The world (``tasks`` x ``classes_per_task`` classes of ``components`` Gaussians each in
    ``dim`` dims, means ``~ N(0, spread^2)``), the data per task and the training budget."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    tasks: int = 3
    classes_per_task: int = 2
    components: int = 2
    dim: int = 8
    spread: float = 1.0
    n_train: int = 2000  # per task
    n_test: int = 1000  # per task
    width: int = 128
    depth: int = 3
    steps: int = 300
    global_steps: int = 300
    per_class: int = 300
    sample_steps: int = 25


def mixture_tasks(config: MixtureConfig, seed: int) -> list[Task]:
    """The world of ``seed`` split into ``config.tasks`` tasks of consecutive classes."""
    if config.tasks < 2 or config.classes_per_task < 1 or config.components < 1:
        raise ValueError(
            f"need tasks >= 2, classes_per_task >= 1 and components >= 1, got "
            f"{config.tasks}, {config.classes_per_task}, {config.components}"
        )
    num_classes = config.tasks * config.classes_per_task
    g = torch.Generator().manual_seed(seed)
    world = random_mixture(num_classes * config.components, config.dim, g, config.spread, num_classes=num_classes)
    out = []
    for k in range(config.tasks):
        classes = list(range(k * config.classes_per_task, (k + 1) * config.classes_per_task))
        part = world.restrict(classes)
        data = []
        for n in (config.n_train, config.n_test):
            x, comp = part.sample(n, g, return_components=True)
            data += [x, part.classes[comp]]
        out.append(Task(*data, classes=classes))
    return out


def run_mixture(config: MixtureConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Every method per seed; ``jdcl_mixture.json`` written under ``out`` after every seed, with
    each seed's final JDCL global model in the Hub layout (``jdcl_mixture_model_seed<S>/``, read
    back by ``recipes.joint_diffusion.hub.load_joint``)."""
    num_classes = config.tasks * config.classes_per_task
    sequence = SequenceConfig(
        steps=config.steps,
        global_steps=config.global_steps,
        per_class=config.per_class,
        sample_steps=config.sample_steps,
        batch_size=min(256, config.n_train),
    )
    result: dict[str, Any] = {"config": asdict(config), "sequence": asdict(sequence), "runs": []}
    for seed in config.seeds:
        tasks = mixture_tasks(config, seed)

        def model(s: int) -> JointMLP:
            torch.manual_seed(s)
            return JointMLP(config.dim, num_classes, width=config.width, depth=config.depth)

        finals: dict[str, Any] = {}
        run = run_sequence(tasks, model, sequence, seed, finals=finals)
        result["runs"].append(run)
        if progress:
            print(json.dumps({"seed": seed, **{k: (v["average"], v["forgetting"]) for k, v in run["methods"].items()}}))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "jdcl_mixture.json").write_text(json.dumps(result, indent=1) + "\n")
            save_global(
                finals["jdcl"],
                Path(out) / f"jdcl_mixture_model_seed{seed}",
                run["methods"]["jdcl"],
                _card(config, seed),
            )
    return result


def _card(config: MixtureConfig, seed: int) -> str:
    """What the saved global model is, for its Hub card."""
    return (
        f"The global model JDCL trained after {config.tasks} class-incremental tasks of the Gaussian-mixture world "
        f"(seed {seed}: {config.tasks * config.classes_per_task} classes of {config.components} Gaussians each in "
        f"{config.dim} dimensions, {config.classes_per_task} new classes per task, one head over all classes): a "
        "residual-MLP denoiser whose block outputs feed an MLP classifier, distilled from the previous global model "
        "and each task's local model on their class-balanced generated replay. `model.classify(x)` gives logits, "
        "`model.denoise(x_t, t)` the noise prediction."
    )


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per method: mean and std over seeds of the final average accuracy, task-1 final accuracy
    and forgetting."""
    table: dict[str, Any] = {}
    for name in result["runs"][0]["methods"]:
        runs = [r["methods"][name] for r in result["runs"]]
        stats = {}
        for key, values in (
            ("average", [m["average"] for m in runs]),
            ("task1_final", [m["matrix"][-1][0] for m in runs]),
            ("forgetting", [m["forgetting"] for m in runs if m["forgetting"] is not None]),
        ):
            if values:
                stats[key] = (statistics.fmean(values), statistics.pstdev(values))
        table[name] = stats
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interventions run jdcl --world mixture", description=__doc__.split("\n\n")[0]
    )
    defaults = MixtureConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    for name in ("tasks", "classes_per_task", "components", "dim", "n_train", "n_test", "steps", "global_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--per-class", type=int, default=defaults.per_class, help="replay samples of each class")
    parser.add_argument("--sample-steps", type=int, default=defaults.sample_steps, help="DDIM steps of the replay")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="folder for jdcl_mixture.json and each seed's JDCL model")
    args = parser.parse_args(argv)
    ints = ("classes_per_task", "components", "dim", "n_train", "n_test", "steps", "global_steps", "per_class")
    for name in (*ints, "sample_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tasks < 2:
        parser.error(f"--tasks must be >= 2 (a continual run), got {args.tasks}")
    torch.set_num_threads(args.threads)
    fields = {k: getattr(args, k) for k in ("tasks", *ints, "sample_steps")}
    result = run_mixture(MixtureConfig(seeds=tuple(args.seeds), **fields), out=args.out)
    print(json.dumps(summary(result), indent=1))
    return 0
