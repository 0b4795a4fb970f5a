"""There and Back Again (arXiv 2410.23530; code luk-st/taba): how DDIM noise, the sample made from
it and the sample's DDIM inversion relate, for any diffusers denoiser.

- :mod:`recipes.taba.experiment`: models (:func:`pipeline_model`, :func:`gmm_model`), one batch's
  measurements (:func:`measure`) and fixed noise through training checkpoints
  (:func:`training_dynamics`);
- :mod:`recipes.taba.metrics`: the triangle's distances and angles, nearest-neighbour assignment,
  flat-region statistics, when a curve stabilises;
- :mod:`recipes.taba.plots`: the figures; :mod:`recipes.taba.cli`: ``interventions run taba``.

Sampling and inversion are :func:`interventions.inversion.ddim_sample` /
:func:`~interventions.inversion.ddim_invert` (diffusers' ``DDIMScheduler`` and
``DDIMInverseScheduler``, plus the forward-noising fix for the first inversion steps). Inversion
evaluates the model at the level ``x`` is at (``model_timestep="source"``), as the paper's ADM code
does and as its diffusers-based fix does in effect; diffusers' own convention (``"target"``) is
kept selectable: with it the fix does not restore flat regions' spread (0.74 instead of 0.985 on the
Gaussian-mixture world; see :func:`interventions.inversion.ddim_invert`).

>>> import torch
>>> from recipes.taba import gmm_model, measure
>>> r = measure(gmm_model(seed=0), torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), steps=10)
>>> sorted(r["variants"])
['source_fix0', 'source_fix2']
"""

from .experiment import Model, gmm_model, load_training_checkpoint, measure, pipeline_model, training_dynamics
from .metrics import assignment_accuracy, flat_mask, flat_stats, stable_from, triangle

__all__ = [
    "Model",
    "assignment_accuracy",
    "flat_mask",
    "flat_stats",
    "gmm_model",
    "load_training_checkpoint",
    "measure",
    "pipeline_model",
    "stable_from",
    "training_dynamics",
    "triangle",
]
