"""hub_cards: save, load, push and pull the artifacts of ``interventions``, with model cards.

A leaf package: it knows repo layouts, cards and the Hugging Face Hub, nothing of hooks (the
artifact classes of ``interventions`` call it, never the reverse). Only JSON and safetensors are
ever read. ``huggingface_hub`` is imported on first use, so ``import hub_cards`` stays fast.

>>> from hub_cards import save_sae, load_sae, write_card, push, pull  # doctest: +SKIP
>>> save_sae("out/saes/unet.mid_block", cfg=cfg, tensors=tensors)  # doctest: +SKIP
>>> write_card("out/saes", "sae", repo_id="me/unet-saes")  # doctest: +SKIP
>>> push("out/saes", "me/unet-saes", tag="v1")  # doctest: +SKIP
>>> cfg, tensors = load_sae(pull("me/unet-saes", revision="v1", subfolder="unet.mid_block"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cards import format_steps, render_card, write_card
from .errors import ArtifactError
from .hub import check_folder, pull, push
from .layouts import (
    SAE_LENS_VERSION,
    check_safetensors,
    load_sae,
    load_steering_vector,
    read_safetensors,
    save_sae,
    save_steering_vector,
)

if TYPE_CHECKING:
    from .models import ModelHubMixin

__all__ = [
    "SAE_LENS_VERSION",
    "ArtifactError",
    "ModelHubMixin",
    "check_folder",
    "check_safetensors",
    "format_steps",
    "load_sae",
    "load_steering_vector",
    "pull",
    "push",
    "read_safetensors",
    "render_card",
    "save_sae",
    "save_steering_vector",
    "write_card",
]


def __getattr__(name: str) -> Any:
    if name == "ModelHubMixin":  # imports huggingface_hub: only on first use
        from .models import ModelHubMixin

        return ModelHubMixin
    raise AttributeError(f"module 'hub_cards' has no attribute {name!r}")
