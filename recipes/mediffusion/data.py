"""The two-class shapes task: which of two shapes (circle vs square by default) an image shows,
with colour, style, position and size as nuisances (or, with ``factor="colour"``, which of two
colours, the shape a nuisance).

Every image comes with its *counterpart*: the same colour, style, position and size rendered as
the other class. The pixels where the two differ are the region that changes the class, against
which explanation maps are scored.

>>> import torch
>>> task = two_class_shapes(8, generator=torch.Generator().manual_seed(0))
>>> task.images.shape, task.labels.tolist()[:4], task.region.shape
(torch.Size([8, 3, 16, 16]), [0, 1, 0, 1], torch.Size([8, 16, 16]))
>>> bool(task.region.any(dim=(1, 2)).all())  # every image has pixels that change its class
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recipes.worlds import shapes as world

__all__ = ["ShapesTask", "two_class_shapes", "foreground"]


@dataclass
class ShapesTask:
    """Images (``B x 3 x 16 x 16`` in [-1, 1]), class labels (0/1), the world's index of each
    class (in ``factor``), the counterpart images and the class-changing ``region`` (``B x 16 x 16``)."""

    images: Tensor
    labels: Tensor
    classes: tuple[int, int]
    counterparts: Tensor
    region: Tensor
    factor: str = "shape"

    def class_index(self, labels: Tensor) -> Tensor:
        """The world's index in ``factor`` (what that factor's evaluator predicts) of class labels."""
        return torch.tensor(self.classes)[labels]


def foreground(images: Tensor) -> Tensor:
    """``B x H x W`` bool: pixels where some channel is above the black background (-1)."""
    return (images > -0.99).any(dim=1)


def two_class_shapes(
    n: int,
    classes: tuple[str, str] = ("circle", "square"),
    generator: torch.Generator | None = None,
    factor: str = "shape",
) -> ShapesTask:
    """``n`` images, each of a random class (fair coin), drawn from the shapes world; the classes
    are two values of ``factor`` ("shape" or "colour")."""
    if factor not in ("shape", "colour"):
        raise ValueError(f"factor must be 'shape' or 'colour', got {factor!r}")
    values = world.FACTORS[factor]
    if len(classes) != 2 or len(set(classes)) != 2 or any(c not in values for c in classes):
        raise ValueError(f"classes must be two different {factor}s of {values}, got {classes}")
    index = (values.index(classes[0]), values.index(classes[1]))
    f = world.sample_factors(n, generator)
    labels = torch.randint(2, (n,), generator=generator)
    mine, other = torch.tensor(index)[labels], torch.tensor(index)[1 - labels]
    shape, colour = (mine, f["colour"]) if factor == "shape" else (f["shape"], mine)
    other_shape, other_colour = (other, f["colour"]) if factor == "shape" else (f["shape"], other)
    # keep both renders inside the frame: the larger extent of the two classes bounds the centre
    extent = 1.2 * f["size"]
    lo, hi = extent, world.SIZE - extent
    cx = lo + (hi - lo) * torch.rand(n, generator=generator)
    cy = lo + (hi - lo) * torch.rand(n, generator=generator)
    images = world.render(shape, colour, f["style"], cx, cy, f["size"])
    counterparts = world.render(other_shape, other_colour, f["style"], cx, cy, f["size"])
    region = (images != counterparts).any(dim=1)
    return ShapesTask(images, labels, index, counterparts, region, factor)
