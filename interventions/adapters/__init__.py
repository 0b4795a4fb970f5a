"""Adapters per model family, detected from the object's class (no heavy imports here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Adapter
from .diffusers import DiffusersModelAdapter, DiffusersPipelineAdapter, is_diffusers_model, is_pipeline
from .stable_audio import StableAudioToolsAdapter, is_stable_audio_tools
from .transformers import TransformersAdapter, is_transformers_model

__all__ = [
    "Adapter",
    "DiffusersModelAdapter",
    "DiffusersPipelineAdapter",
    "StableAudioToolsAdapter",
    "TransformersAdapter",
    "detect",
]


def detect(target: Any, *, cfg: Sequence[str] | None = None) -> Adapter:
    """The adapter for ``target``: a diffusers pipeline or model, a stable-audio-tools model, a
    transformers model, or the generic adapter for any other ``nn.Module``."""
    if is_pipeline(target):
        return DiffusersPipelineAdapter(target, cfg=cfg)
    if is_stable_audio_tools(target):
        return StableAudioToolsAdapter(target, cfg=cfg)
    if is_diffusers_model(target):
        return DiffusersModelAdapter(target, cfg=cfg)
    if is_transformers_model(target):
        return TransformersAdapter(target, cfg=cfg)
    return Adapter(target, cfg=cfg, denoiser="" if cfg else None)
