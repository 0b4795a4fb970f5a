"""JDCL's two stages and its baselines on class-incremental tasks of the shapes world.

Per task ``k`` (JDCL, arXiv 2411.08224): (a) a *local* joint model trained on task ``k``'s data
alone; (b) a *global* model, started from the previous global one and trained on generated replay
only: unconditional DDIM samples of the previous global model (kept when its own classifier calls
them an old class) and of the local model (kept when it calls them a new class), with the
denoising loss, diffusion distillation ``MSE(eps_student, eps_teacher)`` and classifier
distillation ``CE(student, softmax(teacher))``, the teacher being the previous global model for
old-class samples and the local model for new-class ones. Baselines: naive fine-tuning of the
previous model on the new task's data, generative replay without distillation (the same replay,
its labels and the denoising loss only) and joint training on every task's data (upper bound).

>>> import torch
>>> model = JointDiffusion(num_classes=4, widths=(8, 16), hidden=16).eval()
>>> images, labels = generate(model, 6, steps=2, generator=torch.Generator().manual_seed(0))
>>> images.shape, labels.shape
(torch.Size([6, 3, 16, 16]), torch.Size([6]))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn import functional as F

from recipes.joint_diffusion.model import JointDiffusion
from recipes.joint_diffusion.train import Augment, TrainConfig, train_joint, weak_augment

from .mlp import JointMLP

__all__ = [
    "DistillConfig",
    "generate",
    "keep_classes",
    "balanced_replay",
    "train_global",
    "fine_tune",
    "fresh_model",
]

#: Either joint model: the stages only use their shared interface.
Model = TypeVar("Model", JointDiffusion, JointMLP)


@dataclass
class DistillConfig:
    """Weights of the global stage's losses (``diffusion_kd``/``classifier_kd`` 0: no distillation);
    ``label_drop``: for class-conditional models, the share of samples denoised with "no class"
    (keeps the unconditional half of classifier-free guidance)."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    denoising: float = 0.1
    diffusion_kd: float = 1.0
    classifier_kd: float = 1.0
    labels: float = 1.0
    label_drop: float = 0.2  # class-conditional models: share of replay labels hidden from the denoiser
    seed: int = 0


def fresh_model(num_classes: int, widths: tuple[int, ...], hidden: int, seed: int) -> JointDiffusion:
    torch.manual_seed(seed)
    return JointDiffusion(num_classes=num_classes, widths=widths, hidden=hidden)


@torch.no_grad()
def generate(
    model: Model,
    n: int,
    steps: int = 25,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    label: int | None = None,
    guidance: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """``n`` DDIM samples (eta 0, ``steps`` steps) and the model's own class for each: unconditional,
    or of class ``label`` with classifier-free guidance of scale ``guidance`` (class-conditional models)."""
    model.eval()
    scheduler = model.ddim_scheduler()
    scheduler.set_timesteps(steps)
    images, labels = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, *model.sample_shape), generator=generator)
        for t in scheduler.timesteps:
            tt = torch.full((b,), int(t), dtype=torch.long)
            if label is None:
                eps = model.denoise(x, tt)
            else:
                eps = model.guided_eps(x, tt, torch.full((b,), label, dtype=torch.long), guidance)
            x = scheduler.step(eps, t, x).prev_sample
        if scheduler.config.clip_sample:
            x = x.clamp(-1, 1)
        images.append(x)
        labels.append(model.classify(x).argmax(-1))
    return torch.cat(images), torch.cat(labels)


def keep_classes(images: Tensor, labels: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    """The samples whose label is one of ``classes`` (a generator's mismatches are dropped)."""
    keep = torch.isin(labels, torch.tensor(classes))
    return images[keep], labels[keep]


def balanced_replay(
    model: Model,
    classes: list[int],
    per_class: int,
    steps: int = 25,
    batch_size: int = 256,
    max_draws: int = 20_000,
    generator: torch.Generator | None = None,
    guidance: float = 3.0,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Class-balanced replay: draw batches from ``model`` until each of ``classes`` has
    ``per_class`` samples (by the model's own classifier) or ``max_draws`` samples were drawn.
    A class-conditional model draws each short class by classifier-free guidance (scale
    ``guidance``) and keeps the samples its classifier calls that class (mismatches dropped).

    Returns the kept samples (at most ``per_class`` of each class), their labels and what was drawn
    (``drawn``, ``kept`` per class): a class the generator rarely produces shows as a short count
    instead of silently vanishing from the replay.
    """
    if per_class < 1 or not classes:
        raise ValueError(f"need per_class >= 1 and at least one class, got {per_class}, {classes}")
    got: dict[int, list[Tensor]] = {c: [] for c in classes}
    count = dict.fromkeys(classes, 0)
    drawn = 0
    conditional = getattr(model, "class_conditional", False)
    while drawn < max_draws and min(count.values()) < per_class:
        short = [c for c in classes if count[c] < per_class] if conditional else [None]
        for label in short:
            if drawn >= max_draws:
                break
            x, y = generate(model, min(batch_size, max_draws - drawn), steps, batch_size, generator, label, guidance)
            drawn += x.shape[0]
            for c in classes:
                take = x[y == c][: per_class - count[c]]
                got[c].append(take)
                count[c] += take.shape[0]
    images = torch.cat([torch.cat(got[c]) for c in classes])
    labels = torch.cat([torch.full((count[c],), c, dtype=torch.long) for c in classes])
    return images, labels, {"drawn": drawn, "kept": {str(c): count[c] for c in classes}}


def _raw(model: Model, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
    """The denoiser's raw output (eps or v, the quantity its loss is measured in)."""
    return model.predict(x_t, t) if labels is None else model.predict(x_t, t, labels)


def fine_tune(
    model: Model, images: Tensor, labels: Tensor, config: TrainConfig, augment: Augment | None = weak_augment
) -> Model:
    """A copy of ``model`` trained jointly (denoising + cross-entropy) on ``images`` (naive fine-tuning)."""
    student = copy.deepcopy(model)
    train_joint(student, images, labels, unlabelled=images, mode="joint", config=config, augment=augment)
    return student


def train_global(
    previous: Model,
    local: Model,
    replay: Tensor,
    labels: Tensor,
    old_classes: list[int],
    config: DistillConfig,
    augment: Augment | None = weak_augment,
) -> Model:
    """The new global model: a copy of ``previous`` trained on ``replay`` (labels from the generators)
    with the denoising loss, label cross-entropy and, unless their weights are 0, diffusion and
    classifier distillation from ``previous`` (old classes) and ``local`` (new classes).
    ``augment``: applied to the classifier's inputs (``None`` for vector data)."""
    if replay.shape[0] != labels.shape[0] or replay.shape[0] == 0:
        raise ValueError(
            f"replay needs one label per sample and at least one sample, got {replay.shape[0]}, {labels.shape[0]}"
        )
    student = copy.deepcopy(previous).train()
    previous.eval()
    local.eval()
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    old = torch.isin(labels, torch.tensor(old_classes))
    distil = config.diffusion_kd > 0 or config.classifier_kd > 0
    conditional = getattr(student, "class_conditional", False)
    for _ in range(config.steps):
        idx = torch.randint(replay.shape[0], (min(config.batch_size, replay.shape[0]),), generator=g)
        x0, y = replay[idx], labels[idx]
        from_old = old[idx].view(-1, *[1] * (x0.ndim - 1))
        t = torch.randint(student.train_timesteps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = student.add_noise(x0, noise, t)
        given = None  # the class the denoisers see (class-conditional models), some hidden
        if conditional:
            given = torch.where(torch.rand(y.shape[0], generator=g) < config.label_drop, -1, y)
        raw = _raw(student, x_t, t, given)
        x_aug = x0 if augment is None else augment(x0, g)
        logits = student.classify(x_aug)
        loss = config.denoising * F.mse_loss(raw, student.target(x0, noise, t))
        loss = loss + config.labels * F.cross_entropy(logits, y)
        if distil:
            with torch.no_grad():
                teacher = torch.where(from_old, _raw(previous, x_t, t, given), _raw(local, x_t, t, given))
                soft = torch.where(from_old.view(-1, 1), previous.classify(x_aug), local.classify(x_aug)).softmax(-1)
            loss = loss + config.diffusion_kd * F.mse_loss(raw, teacher)
            loss = loss + config.classifier_kd * F.cross_entropy(logits, soft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return student.eval()
