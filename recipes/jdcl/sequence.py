"""JDCL and its baselines over a sequence of class-incremental tasks (any number, any joint model).

For each task ``k`` a *local* model is trained on task ``k``'s data alone (shared by every method).
The continual methods start from the task-1 local model and, for ``k >= 2``:

* ``naive``: fine-tune the previous model on task ``k``'s data;
* ``replay``: a copy of the previous model trained on generated replay only (class-balanced:
  ``per_class`` samples of each old class from the previous model, of each new class from the
  local model, labelled by the generator's own classifier), denoising + label cross-entropy;
* ``jdcl``: the same replay (drawn from its own previous model) plus diffusion and classifier
  distillation (teacher: previous model for old classes, local model for new ones);
* ``joint``: one model trained on every task's data (the upper bound; final row only).

The accuracy matrix ``A[i][j]`` is the accuracy on task ``j``'s test data after task ``i`` (all
classes allowed); ``average`` = mean of the last row; ``forgetting`` = mean over the earlier tasks
of (best earlier accuracy - final accuracy) (Chaudhry et al. 2018, as JDCL reports it).

>>> import torch
>>> from recipes.jdcl.mlp import JointMLP
>>> g = torch.Generator().manual_seed(0)
>>> tasks = [Task(torch.randn(8, 2), torch.tensor([c, c + 1] * 4), torch.randn(4, 2), torch.tensor([c, c + 1] * 2), [c, c + 1]) for c in (0, 2)]
>>> config = SequenceConfig(steps=1, global_steps=1, batch_size=4, per_class=2, sample_steps=2, max_draws=8)
>>> run = run_sequence(tasks, lambda s: JointMLP(2, 4, width=8, depth=1, hidden=8), config, seed=0)
>>> sorted(run["methods"]), len(run["methods"]["jdcl"]["matrix"])
(['jdcl', 'joint', 'naive', 'replay'], 2)
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recipes.joint_diffusion.hub import save_joint
from recipes.joint_diffusion.train import Augment, TrainConfig, accuracy, train_joint

from .continual import DistillConfig, Model, balanced_replay, fine_tune, train_global

__all__ = ["Task", "SequenceConfig", "run_sequence", "stage_count", "forgetting", "save_global"]


@dataclass
class Task:
    """One task's training and test data (labels are global class ids) and its classes."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[int]


@dataclass
class SequenceConfig:
    """``steps``: local, naive and joint training; ``global_steps``: each replay/JDCL stage;
    ``per_class``: replay quota of each class; ``max_draws``: samples a generator may draw per stage;
    ``guidance``: the classifier-free guidance scale of class-conditional generators."""

    steps: int = 2000
    global_steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    diffusion_weight: float = 1.0
    per_class: int = 500
    sample_steps: int = 50
    max_draws: int = 20_000
    diffusion_kd: float = 1.0
    classifier_kd: float = 1.0
    guidance: float = 3.0  # classifier-free guidance of class-conditional generators' replay


def forgetting(matrix: list[list[float]]) -> float | None:
    """Mean over all tasks but the last of ``max_{i < T-1} A[i][j] - A[T-1][j]`` (None for one row)."""
    if len(matrix) < 2:
        return None
    last = len(matrix) - 1
    return statistics.fmean(max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last))


def stage_count(tasks: int) -> int:
    """How many times :func:`run_sequence` reports a finished stage for ``tasks`` tasks: a local
    model per task; per later task naive fine-tuning, the new classes' replay and, for replay and
    JDCL each, the old classes' replay and the global model; the joint model."""
    return tasks + 6 * (tasks - 1) + 1


def save_global(model: Model, folder: str | os.PathLike, summary: dict[str, Any], description: str) -> None:
    """Save a JDCL global model in the Hub layout, its card's metrics the method's ``summary``
    (a run's ``methods["jdcl"]``: final average accuracy and forgetting)."""
    metrics = {"average": summary["average"], "forgetting": summary["forgetting"]}
    save_joint(model, folder, metrics=metrics, recipe="jdcl", description=description)


def _summary(matrix: list[list[float]]) -> dict[str, Any]:
    return {"matrix": matrix, "average": statistics.fmean(matrix[-1]), "forgetting": forgetting(matrix)}


def run_sequence(
    tasks: list[Task],
    new_model: Callable[[int], Model],
    config: SequenceConfig,
    seed: int,
    augment: Augment | None = None,
    judge: Callable[[Tensor, Tensor], dict[str, float]] | None = None,
    finals: dict[str, Model] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every method on ``tasks`` for one seed; ``new_model(s)`` builds a fresh joint model from seed ``s``.

    ``judge(samples, labels)``: scores each replay set (e.g. how often a world's evaluator agrees
    with the generator's labels); its numbers go into the run's ``replay`` record. ``finals``: when
    given, filled with each method's model after the last task (to save them; the record is JSON).
    ``on_stage(name)``: called after each stage (:func:`stage_count` of them), e.g. for a progress bar."""
    if len(tasks) < 2:
        raise ValueError(f"a continual run needs at least 2 tasks, got {len(tasks)}")
    start = time.process_time()
    train = TrainConfig(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr, diffusion_weight=config.diffusion_weight
    )

    def fresh(offset: int, x: Tensor, y: Tensor) -> Model:
        torch.manual_seed(1000 * seed + offset)
        model = new_model(1000 * seed + offset)
        cfg = TrainConfig(**{**vars(train), "seed": 1000 * seed + offset})
        train_joint(model, x, y, unlabelled=x, mode="joint", config=cfg, augment=augment)
        return model

    def row(model: Model) -> list[float]:
        return [accuracy(model, t.test_x, t.test_y) for t in tasks]

    def done(stage: str) -> None:
        if on_stage is not None:
            on_stage(stage)

    locals_ = []
    for k, t in enumerate(tasks):
        locals_.append(fresh(k, t.train_x, t.train_y))
        done(f"local model {k + 1}")
    g = torch.Generator().manual_seed(seed)
    distill = DistillConfig(
        steps=config.global_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        denoising=config.diffusion_weight,
        diffusion_kd=config.diffusion_kd,
        classifier_kd=config.classifier_kd,
        seed=seed,
    )
    stages = {"replay": DistillConfig(**{**vars(distill), "diffusion_kd": 0.0, "classifier_kd": 0.0}), "jdcl": distill}
    models: dict[str, Model] = {"naive": locals_[0], "replay": locals_[0], "jdcl": locals_[0]}
    matrices = {name: [row(locals_[0])] for name in models}
    replay_stats: list[dict[str, Any]] = []
    for k in range(1, len(tasks)):
        task = tasks[k]
        old = [c for t in tasks[:k] for c in t.classes]
        cfg = TrainConfig(**{**vars(train), "seed": 1000 * seed + 100 + k})
        models["naive"] = fine_tune(models["naive"], task.train_x, task.train_y, cfg, augment)
        done(f"task {k + 1}: naive")
        draw = {
            "steps": config.sample_steps,
            "max_draws": config.max_draws,
            "generator": g,
            "guidance": config.guidance,
        }
        new_x, new_y, new_info = balanced_replay(locals_[k], task.classes, config.per_class, **draw)
        if judge is not None:
            new_info["judge"] = judge(new_x, new_y)
        done(f"task {k + 1}: new classes' replay")
        stats: dict[str, Any] = {"task": k + 1, "new": new_info}
        for name, stage in stages.items():
            old_x, old_y, old_info = balanced_replay(models[name], old, config.per_class, **draw)
            if judge is not None:
                old_info["judge"] = judge(old_x, old_y)
            stats[f"old_{name}"] = old_info
            done(f"task {k + 1}: {name}'s old-class replay")
            replay, labels = torch.cat([old_x, new_x]), torch.cat([old_y, new_y])
            stage = DistillConfig(**{**vars(stage), "seed": 1000 * seed + 200 + k})
            models[name] = train_global(models[name], locals_[k], replay, labels, old, stage, augment)
            done(f"task {k + 1}: {name}'s global model")
        replay_stats.append(stats)
        for name, model in models.items():
            matrices[name].append(row(model))
    everything = [torch.cat([getattr(t, f) for t in tasks]) for f in ("train_x", "train_y")]
    joint = fresh(len(tasks), *everything)
    done("joint model")
    methods = {name: _summary(m) for name, m in matrices.items()}
    methods["joint"] = {**_summary([row(joint)]), "forgetting": None}
    if finals is not None:
        finals.update(models, joint=joint)
    return {
        "seed": seed,
        "methods": methods,
        "locals": [row(m) for m in locals_],
        "replay": replay_stats,
        "cpu_s": time.process_time() - start,
    }
