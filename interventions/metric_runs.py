"""Running a model on inputs given in any form and reading the metric it is scored by: what
attribution patching, activation patching and patching sweeps share.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> scalar_metric(run_model(model, torch.ones(1, 2)).sum()).shape
torch.Size([])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .errors import InterventionError

Inputs = Any  # a tensor, a tuple (positional), a dict (keywords) or a zero-argument function


def run_model(model: Any, inputs: Inputs) -> Any:
    """``model(inputs)``: a tuple is spread as positional arguments, a dict as keywords, and a
    zero-argument function is called instead (a pipeline call with its own arguments)."""
    if callable(inputs) and not isinstance(inputs, Tensor):
        return inputs()
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def scalar_metric(value: Any) -> Tensor:
    """A metric's value as a 0-d tensor; anything but a one-element tensor is refused."""
    if not isinstance(value, Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InterventionError(f"metric(output) must return a scalar tensor (e.g. a logit difference), got {got}")
    return value.reshape(())
