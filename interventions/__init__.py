"""interventions: composable hooks (cache, patch, steer, SAE edits, gradients) for any PyTorch
model, diffusion pipelines with their denoising steps and CFG branches included.

>>> import torch
>>> from interventions import attach, Cache, Patch
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> clean = Cache()
>>> with attach(model, {"1": clean}):
...     y_clean = model(torch.ones(1, 4))
>>> with attach(model, {"1": Patch(clean)}):
...     y_patched = model(torch.zeros(1, 4))
>>> torch.equal(y_clean, y_patched)
True
"""

from .attribution import activation_patching, attribution_patching
from .context import Context, When
from .distributed import harvest, open_harvest, train_sae_distributed
from .errors import (
    AdapterError,
    CompiledModelError,
    HookError,
    InterventionError,
    ShapeMismatchError,
    SiteNeverFiredError,
    SiteNeverFiredWarning,
    StopForward,
    StoreError,
)
from .heads import eager_attention, head_sites, pattern_sites
from .hooks import Ablate, AddVector, Cache, EditGrad, Grads, Hook, Lambda, Patch, SAEEdit
from .membership import denoising_loss, mean_denoising_loss, per_sample_grad_norms
from .patching import PatchingTable, patching_sweep
from .session import Session, attach
from .sites import Site, SiteError, SiteNotFoundError
from .store import DiskStore, MemoryStore
from .trainable import DAS, LoReFT

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "AdapterError",
    "AddVector",
    "Cache",
    "CompiledModelError",
    "Context",
    "DAS",
    "DiskStore",
    "EditGrad",
    "Grads",
    "Hook",
    "HookError",
    "InterventionError",
    "Lambda",
    "LoReFT",
    "MemoryStore",
    "Patch",
    "PatchingTable",
    "SAEEdit",
    "Session",
    "ShapeMismatchError",
    "Site",
    "SiteError",
    "SiteNeverFiredError",
    "SiteNeverFiredWarning",
    "SiteNotFoundError",
    "StopForward",
    "StoreError",
    "When",
    "activation_patching",
    "attach",
    "attribution_patching",
    "denoising_loss",
    "eager_attention",
    "harvest",
    "head_sites",
    "mean_denoising_loss",
    "open_harvest",
    "patching_sweep",
    "pattern_sites",
    "per_sample_grad_norms",
    "train_sae_distributed",
]
