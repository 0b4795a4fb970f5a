"""Personalization tasks on the shapes world: bind an identifier word to one "subject".

The shapes tokenizer has no unused words, so each task reuses a word of it as its identifier, as
DreamBooth reuses "sks". Task ``t`` teaches ``"a <identifier>"`` to mean one subject, a fixed
(shape, colour, style), from a few instance renders (random position and size). A sample is right
when the evaluators see all three factors of the subject. DreamBooth's class prompt is the
subject's shape word (``"a circle"``).

Two identifier sets name the same four subjects (:data:`IDENTIFIER_SETS`):

- ``"synonyms"``: each shape's synonym (``disk``, ``box``, ``pyramid``, ``plus``). The frozen text
  encoder maps each onto its class word (centred cosine 0.96-1.00), so every task writes into its
  class word's direction.
- ``"far"``: the words :func:`~.identifiers.choose_identifiers` picks from the encoder alone
  (largest centred cosine to each other and to any shape word as small as possible):
  ``in``, ``red``, ``green``, ``yellow``, given to the subjects in that order.

>>> task = make_tasks(2, "synonyms")[0]
>>> task.prompt, task.class_prompt, task.subject
('a disk', 'a circle', ('circle', 'red', 'stripes'))
>>> [t.prompt for t in make_tasks(3, "far")]
['a in', 'a red', 'a green']
>>> instance_images(task, 4, seed=0).shape
torch.Size([4, 3, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recipes.worlds import shapes as world
from recipes.worlds.shapes_eval import predict

__all__ = [
    "Task",
    "SUBJECTS",
    "IDENTIFIER_SETS",
    "DEFAULT_IDENTIFIERS",
    "TASKS",
    "make_tasks",
    "instance_images",
    "accuracy",
]


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


#: four subjects with different colours and textures (shape, colour, style), taught in this order
SUBJECTS = (
    ("circle", "red", "stripes"),
    ("square", "green", "dots"),
    ("triangle", "blue", "checker"),
    ("cross", "yellow", "solid"),
)
#: identifier words for the subjects, in order (module docstring)
IDENTIFIER_SETS = {
    "synonyms": ("disk", "box", "pyramid", "plus"),
    "far": ("in", "red", "green", "yellow"),
}
DEFAULT_IDENTIFIERS = "synonyms"


def make_tasks(n: int, identifiers: str = DEFAULT_IDENTIFIERS) -> tuple[Task, ...]:
    """The first ``n`` subjects (2 to 4), named by the identifier set ``identifiers``."""
    if identifiers not in IDENTIFIER_SETS:
        raise ValueError(f"unknown identifier set {identifiers!r}; use one of {sorted(IDENTIFIER_SETS)}")
    if not 2 <= n <= len(SUBJECTS):
        raise ValueError(f"a continual sequence needs 2 to {len(SUBJECTS)} tasks, got {n}")
    return tuple(Task(w, *subject) for w, subject in zip(IDENTIFIER_SETS[identifiers], SUBJECTS[:n], strict=False))


#: all four tasks with the default identifiers
TASKS = make_tasks(len(SUBJECTS))


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
