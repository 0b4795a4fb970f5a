"""JDCL on the shapes world with class-balanced replay (:mod:`recipes.jdcl.sequence`): the tasks
of :mod:`recipes.jdcl.run` (same data and seeds), generators trained for more steps (optionally
class-conditional, their replay drawn per class by classifier-free guidance), replay drawn
until each class has its quota, and every replay set scored by the shipped evaluator of the split's
factor (does it agree with the generator's label? is the background black as in real images?).

>>> config = BalancedConfig(seeds=(0,), n_train=8, n_test=4, steps=1, global_steps=1, per_class=2, sample_steps=2, max_draws=8)
>>> run = run_balanced(config, progress=False)["runs"][0]
>>> sorted(run["replay"][0]["new"]["judge"])
['evaluator_agrees', 'foreground']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from recipes.joint_diffusion.model import JointDiffusion
from recipes.joint_diffusion.train import weak_augment
from recipes.mediffusion.data import foreground, two_class_shapes
from recipes.worlds import shapes as world

from .sequence import SequenceConfig, Task, run_sequence, save_global, stage_count

__all__ = ["SPLITS", "BalancedConfig", "shapes_tasks", "evaluator_judge", "run_balanced"]

#: Two class-incremental tasks per split: the classes are values of that factor of the shapes world.
SPLITS = {
    "shape": (("circle", "square"), ("triangle", "cross")),
    "colour": (("red", "green"), ("blue", "yellow")),
}
#: Written under ``out`` after every stage: ``{"stages_done": n, "stages": total}``.
PROGRESS = "progress.json"
EVALUATORS = Path(__file__).resolve().parents[1] / "worlds" / "checkpoints" / "shapes" / "evaluators"


@dataclass
class BalancedConfig:
    seeds: tuple[int, ...] = (0,)
    split: str = "colour"
    n_train: int = 400  # per task
    n_test: int = 300  # per task
    steps: int = 1000  # local (generator) models, naive fine-tuning, joint training
    global_steps: int = 1000
    per_class: int = 200
    sample_steps: int = 50
    max_draws: int = 4096
    diffusion_weight: float = 1.0
    widths: tuple[int, ...] = (8, 16)
    hidden: int = 32
    class_conditional: bool = False  # generators conditioned on the class, replay drawn by CFG
    guidance: float = 3.0
    prediction: str = "v_prediction"  # the UNet's output (epsilon: its samples are noise at this size)


def shapes_tasks(split: str, n_train: int, n_test: int, seed: int) -> list[Task]:
    """The split's tasks, drawn exactly as :func:`recipes.jdcl.run.run_jdcl` draws them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    out = []
    for k, classes in enumerate(SPLITS[split]):
        train = two_class_shapes(n_train, classes, torch.Generator().manual_seed(100 * seed + k), factor=split)
        test = two_class_shapes(n_test, classes, torch.Generator().manual_seed(10_000 + k), factor=split)
        out.append(Task(train.images, train.labels + 2 * k, test.images, test.labels + 2 * k, [2 * k, 2 * k + 1]))
    return out


def evaluator_judge(split: str):
    """``judge(samples, labels)``: the share of samples the split's evaluator calls their label's
    class, and the share of foreground pixels (real renders: about 0.2)."""
    from recipes.worlds.shapes_eval import load_evaluators

    evaluator = load_evaluators(EVALUATORS)[split]
    values = world.FACTORS[split]
    index = torch.tensor([values.index(name) for task in SPLITS[split] for name in task])

    @torch.no_grad()
    def judge(samples: Tensor, labels: Tensor) -> dict[str, float]:
        if samples.shape[0] == 0:
            return {"evaluator_agrees": float("nan"), "foreground": float("nan")}
        agrees = (evaluator(samples).argmax(-1) == index[labels]).float().mean().item()
        return {"evaluator_agrees": agrees, "foreground": foreground(samples).float().mean().item()}

    return judge


def run_balanced(config: BalancedConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Every method per seed with class-balanced replay, a progress bar over the stages; under
    ``out``, ``jdcl_balanced.json`` (after every seed), :data:`PROGRESS` (after every stage) and each seed's JDCL global model in the Hub layout with its card
    (``jdcl_model_seed<S>/``, read back by ``recipes.joint_diffusion.hub.load_joint``)."""
    sequence = SequenceConfig(
        steps=config.steps,
        global_steps=config.global_steps,
        batch_size=32,
        lr=2e-3,
        diffusion_weight=config.diffusion_weight,
        per_class=config.per_class,
        sample_steps=config.sample_steps,
        max_draws=config.max_draws,
        guidance=config.guidance,
    )
    result: dict[str, Any] = {"config": asdict(config), "runs": []}
    judge = evaluator_judge(config.split)
    stages = stage_count(len(SPLITS[config.split]))
    bar = tqdm(total=stages * len(config.seeds), desc="JDCL stages", unit="stage", disable=not progress)
    finished = [0]  # counted here: a disabled bar counts nothing
    for seed in config.seeds:
        tasks = shapes_tasks(config.split, config.n_train, config.n_test, seed)

        def model(s: int) -> JointDiffusion:
            torch.manual_seed(s)
            return JointDiffusion(
                num_classes=4,
                widths=config.widths,
                hidden=config.hidden,
                class_conditional=config.class_conditional,
                prediction=config.prediction,
            )

        def on_stage(name: str, seed: int = seed) -> None:
            finished[0] += 1
            bar.set_postfix_str(f"seed {seed}: {name}", refresh=False)
            bar.update()
            if out:  # read by a parent running the seeds in workers (recipes.seed_workers)
                Path(out).mkdir(parents=True, exist_ok=True)
                record = {"stages_done": finished[0], "stages": stages * len(config.seeds)}
                (Path(out) / f"{PROGRESS}.tmp").write_text(json.dumps(record) + "\n")
                (Path(out) / f"{PROGRESS}.tmp").replace(Path(out) / PROGRESS)  # never read half-written

        finals: dict[str, Any] = {}
        run = run_sequence(tasks, model, sequence, seed, weak_augment, judge, finals, on_stage)
        result["runs"].append(run)
        if progress:
            tqdm.write(json.dumps({"seed": seed, **{k: v["matrix"] for k, v in run["methods"].items()}}))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "jdcl_balanced.json").write_text(json.dumps(result, indent=1) + "\n")
            save_global(
                finals["jdcl"], Path(out) / f"jdcl_model_seed{seed}", run["methods"]["jdcl"], _card(config, seed)
            )
    bar.close()
    return result


def _card(config: BalancedConfig, seed: int) -> str:
    """What the saved global model is, for its Hub card."""
    first, second = SPLITS[config.split]
    generators = (
        f"class-conditional (replay drawn per class with classifier-free guidance {config.guidance:g})"
        if config.class_conditional
        else "unconditional"
    )
    return (
        f"The global model JDCL trained after two class-incremental tasks of the shapes world ({config.split} split: "
        f"{' vs '.join(first)}, then {' vs '.join(second)}; one 4-way head, classes in that order), seed {seed}: a tiny "
        "diffusers UNet2DModel whose pooled down-block features feed an MLP classifier, distilled from the task-1 "
        f"model and the task-2 local model on class-balanced generated replay ({config.per_class} per class; "
        f"{generators}). `model.classify(x)` gives logits, `model.denoise(x_t, t, labels)` the noise prediction "
        f"(labels None: no class; the UNet outputs {config.prediction}; 16 x 16 RGB in [-1, 1])."
    )
