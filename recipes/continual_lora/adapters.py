"""LoRA adapters as plain factors, and the operations the continual methods combine them with.

An adapter is ``{module: (A, B)}`` for the UNet's attention projections (``A``: ``r x in``,
``B``: ``out x r``) with ``lora_alpha == r``, so its weight update is exactly ``B @ A`` (peft's
scale ``alpha / r`` is 1). The layers themselves are peft's (:func:`attach`); the files are
diffusers' own LoRA format (:func:`save_adapter`, read back by ``pipe.load_lora_weights``).

>>> A, B = torch.ones(2, 3), torch.ones(4, 2)
>>> tuple(updates({"m": (A, B)})["m"].shape)
(4, 3)
>>> tuple(concat([{"m": (A, B)}, {"m": (A, B)}])["m"][0].shape)  # rank 2 + 2
(4, 3)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "TARGETS",
    "TARGET_SETS",
    "Factors",
    "attach",
    "read_factors",
    "write_factors",
    "updates",
    "fuse",
    "concat",
    "factor_sum",
    "orthogonal_columns",
    "max_abs",
    "to_factors",
    "diffusers_state",
    "save_adapter",
]

#: the attention projections the paper adapts (to_q / to_k / to_v / to_out.0 of every attention)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: what ``attach`` may adapt: the paper's projections of every attention, or only the
#: cross-attentions' key and value maps (the only ones that read the prompt, so the only ones whose
#: update acts on one identifier's direction and not on every image)
TARGET_SETS: dict[str, list[str] | str] = {"attention": list(TARGETS), "cross_kv": r".*attn2\.to_(k|v)"}
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
ADAPTER = "continual"


def attach(
    unet, rank: int, init: Factors | None = None, seed: int = 0, targets: str = "attention"
) -> list[torch.nn.Parameter]:
    """Add a peft LoRA adapter (rank ``rank``, alpha = rank, gaussian A, zero B) to the UNet's
    projections named by ``TARGET_SETS[targets]``, optionally set to ``init``; returns its
    trainable parameters."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if targets not in TARGET_SETS:
        raise ValueError(f"unknown LoRA targets {targets!r}; use one of {sorted(TARGET_SETS)}")
    cfg = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_SETS[targets])
    with torch.random.fork_rng(devices=[]):  # seeded A, without touching the caller's global generator
        torch.manual_seed(seed)
        unet.add_adapter(cfg, adapter_name=ADAPTER)
    if init is not None:
        write_factors(unet, init)
    return [p for n, p in unet.named_parameters() if ".lora_" in n]


def _lora_layers(unet):
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            yield name, module


def read_factors(unet) -> Factors:
    """The attached adapter's ``{module: (A, B)}`` (detached copies)."""
    out = {
        name: (m.lora_A[ADAPTER].weight.detach().clone(), m.lora_B[ADAPTER].weight.detach().clone())
        for name, m in _lora_layers(unet)
    }
    if not out:
        raise RuntimeError("the UNet has no attached continual-LoRA adapter: call attach(unet, rank) first")
    return out


def write_factors(unet, factors: Factors) -> None:
    """Set the attached adapter to ``factors`` (every module, ranks must match)."""
    layers = dict(_lora_layers(unet))
    if set(layers) != set(factors):
        raise ValueError(f"factors name {len(factors)} modules, the adapter has {len(layers)}: they must be the same")
    with torch.no_grad():
        for name, (A, B) in factors.items():
            layers[name].lora_A[ADAPTER].weight.copy_(A)
            layers[name].lora_B[ADAPTER].weight.copy_(B)


def updates(factors: Factors) -> dict[str, torch.Tensor]:
    """Each module's weight update ``B @ A``."""
    return {name: B @ A for name, (A, B) in factors.items()}


def fuse(unet, deltas: dict[str, torch.Tensor]) -> None:
    """Add weight updates into the UNet's (adapter-free) linear layers, as ``fuse_lora`` does."""
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            layer = modules[name]
            if not isinstance(layer, torch.nn.Linear):
                raise TypeError(f"{name} is {type(layer).__name__}: fuse before attaching an adapter")
            layer.weight += delta.to(layer.weight.dtype)


def concat(adapters: list[Factors]) -> Factors:
    """One adapter of rank ``sum(r_i)`` whose update is exactly ``sum_i B_i @ A_i``."""
    return {
        name: (torch.cat([a[name][0] for a in adapters], 0), torch.cat([a[name][1] for a in adapters], 1))
        for name in adapters[0]
    }


def factor_sum(first: Factors, second: Factors) -> Factors:
    """The authors' ortho_init merge: ``(A1 + A2, B1 + B2)`` (same rank; cross terms included)."""
    return {name: (A + second[name][0], B + second[name][1]) for name, (A, B) in first.items()}


def orthogonal_columns(A: torch.Tensor) -> torch.Tensor:
    """The authors' ortho_init of a new ``A``: column ``j`` is the last right-singular vector of
    the old column ``j`` (a unit vector orthogonal to it, from the SVD's null space)."""
    cols = []
    for j in range(A.shape[1]):
        _, _, vh = torch.linalg.svd(A[:, j : j + 1].T)
        cols.append(vh[-1])
    return torch.stack(cols, 1)


def max_abs(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MagMax: per element, the task vector entry with the larger magnitude (ties: ``second``)."""
    return {k: torch.where(second[k].abs() >= v.abs(), second[k], v) for k, v in first.items()}


def to_factors(deltas: dict[str, torch.Tensor], rank: int | None = None) -> Factors:
    """Factors whose update approximates ``deltas`` by truncated SVD (exact at full rank, the
    default ``rank=None``: MagMax's dense merge saved as a full-rank LoRA)."""
    out = {}
    for name, d in deltas.items():
        U, S, Vh = torch.linalg.svd(d.double(), full_matrices=False)
        r = min(d.shape) if rank is None else rank
        out[name] = ((Vh[:r]).to(d.dtype).contiguous(), (U[:, :r] * S[:r]).to(d.dtype).contiguous())
    return out


def diffusers_state(factors: Factors) -> dict[str, torch.Tensor]:
    """peft-named keys (``<module>.lora_A.weight``) in diffusers' LoRA convention, UNet-relative."""
    from diffusers.utils import convert_state_dict_to_diffusers

    state = {}
    for name, (A, B) in factors.items():
        state[f"{name}.lora_A.weight"] = A.contiguous()
        state[f"{name}.lora_B.weight"] = B.contiguous()
    return convert_state_dict_to_diffusers(state)


def save_adapter(factors: Factors, folder: str | os.PathLike[str]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with ``StableDiffusionPipeline.save_lora_weights``
    (diffusers' format; ``pipe.load_lora_weights(folder)`` reads it). Returns the folder."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=diffusers_state(factors), safe_serialization=True
    )
    return folder
