"""Adapters per model family, detected from the object's class (no heavy imports here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Adapter
from .diffusers import (
    DiffusersModelAdapter,
    DiffusersModuleAdapter,
    DiffusersPipelineAdapter,
    is_denoiser,
    is_diffusers_model,
    is_pipeline,
)
from .stable_audio import StableAudioToolsAdapter, is_stable_audio_tools
from .transformers import TransformersAdapter, is_transformers_model

__all__ = [
    "Adapter",
    "DiffusersModelAdapter",
    "DiffusersModuleAdapter",
    "DiffusersPipelineAdapter",
    "StableAudioToolsAdapter",
    "TransformersAdapter",
    "detect",
]


def detect(target: Any, *, cfg: Sequence[str] | None = None) -> Adapter:
    """The adapter for ``target``: a diffusers pipeline or denoiser, a stable-audio-tools model, a
    transformers model, or the generic adapter for any other ``nn.Module``. A diffusers model that
    takes no timestep (a VAE) has no steps: each call is recorded on its own, as for a plain module,
    unless ``cfg`` declares it a denoiser."""
    if is_pipeline(target):
        return DiffusersPipelineAdapter(target, cfg=cfg)
    if is_stable_audio_tools(target):
        return StableAudioToolsAdapter(target, cfg=cfg)
    if is_diffusers_model(target):
        if cfg or is_denoiser(target):
            return DiffusersModelAdapter(target, cfg=cfg)
        return DiffusersModuleAdapter(target, cfg=cfg)
    if is_transformers_model(target):
        return TransformersAdapter(target, cfg=cfg)
    return Adapter(target, cfg=cfg, denoiser="" if cfg else None)
