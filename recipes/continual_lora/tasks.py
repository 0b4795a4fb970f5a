"""Personalization tasks on the shapes world: bind an identifier word to one "subject".

The shapes tokenizer has no unused words, so each task reuses a rare word as its identifier, as
DreamBooth reuses "sks": a shape's synonym (``disk``, ``box``, ...), which the base model draws as
that shape in any colour and texture. Task ``t`` teaches ``"a <identifier>"`` to mean one subject,
a fixed (shape, colour, style), from a few instance renders (random position and size). A sample
is right when the evaluators see all three factors of the subject; the base model scores ~1/16.
DreamBooth's class prompt is the shape's own word (``"a circle"`` for ``"a disk"``).

>>> task = TASKS[0]
>>> task.prompt, task.class_prompt, task.subject
('a disk', 'a circle', ('circle', 'red', 'stripes'))
>>> instance_images(task, 4, seed=0).shape
torch.Size([4, 3, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recipes.worlds import shapes as world
from recipes.worlds.shapes_eval import predict

__all__ = ["Task", "TASKS", "make_tasks", "instance_images", "accuracy"]


@dataclass(frozen=True)
class Task:
    """An identifier word and the subject (shape, colour, style) it should come to mean."""

    identifier: str
    shape: str
    colour: str
    style: str

    def __post_init__(self) -> None:
        vocab = world.vocabulary()
        if self.identifier not in vocab:
            raise ValueError(f"identifier {self.identifier!r} is not a shapes-world word; use one of {sorted(vocab)}")
        for factor, value in (("shape", self.shape), ("colour", self.colour), ("style", self.style)):
            if value not in world.FACTORS[factor]:
                raise ValueError(f"unknown {factor} {value!r}; use one of {world.FACTORS[factor]}")

    @property
    def prompt(self) -> str:
        return f"a {self.identifier}"

    @property
    def class_prompt(self) -> str:
        """DreamBooth's class prompt: the subject's class (its shape) without the identifier."""
        return f"a {self.shape}"

    @property
    def subject(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.style)

    def labels(self, n: int) -> dict[str, torch.Tensor]:
        idx = {f: world.FACTORS[f].index(v) for f, v in zip(("shape", "colour", "style"), self.subject, strict=True)}
        return {f: torch.full((n,), i, dtype=torch.long) for f, i in idx.items()}


#: four subjects with different colours and textures, each named by its shape's synonym
TASKS = (
    Task("disk", "circle", "red", "stripes"),
    Task("box", "square", "green", "dots"),
    Task("pyramid", "triangle", "blue", "checker"),
    Task("plus", "cross", "yellow", "solid"),
)


def make_tasks(n: int) -> tuple[Task, ...]:
    """The first ``n`` of :data:`TASKS` (2 to 4)."""
    if not 2 <= n <= len(TASKS):
        raise ValueError(f"a continual sequence needs 2 to {len(TASKS)} tasks, got {n}")
    return TASKS[:n]


def instance_images(task: Task, n: int, seed: int) -> torch.Tensor:
    """``n`` renders of the task's subject at random positions and sizes (the "photos" of it)."""
    g = torch.Generator().manual_seed(seed)
    f = world.sample_factors(n, g)
    lab = task.labels(n)
    return world.render(lab["shape"], lab["colour"], lab["style"], f["cx"], f["cy"], f["size"])


def accuracy(evaluators, images: torch.Tensor, task: Task) -> float:
    """Fraction of ``images`` (in [-1, 1]) in which shape, colour and style are all the subject's."""
    pred = predict(evaluators, images)
    lab = task.labels(len(images))
    return torch.stack([pred[f] == lab[f] for f in lab]).all(0).float().mean().item()
