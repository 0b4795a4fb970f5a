"""hub_cards: artifact files, model cards and the Hub for ``interventions``.

A leaf package: it knows files, cards and the Hugging Face Hub, nothing of hooks or of what a
config means (the SAE and steering-vector formats belong to ``interventions.sae_format`` and
``interventions.steering_format``, which call this package, never the reverse). Only JSON and
safetensors are ever read. ``huggingface_hub`` is imported on first use, so ``import hub_cards``
stays fast.

>>> from hub_cards import write_card, push, pull  # doctest: +SKIP
>>> write_card("out/saes", "sae", repo_id="me/unet-saes")  # doctest: +SKIP
>>> push("out/saes", "me/unet-saes", tag="v1")  # doctest: +SKIP
>>> folder = pull("me/unet-saes", revision="v1", subfolder="unet.mid_block")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cards import format_steps, render_card, write_card
from .errors import ArtifactError, HubError
from .hub import check_folder, pull, push
from .layouts import check_safetensors, read_artifact, read_json, read_safetensors, write_artifact

if TYPE_CHECKING:
    from .models import ModelHubMixin

__all__ = [
    "ArtifactError",
    "HubError",
    "ModelHubMixin",
    "check_folder",
    "check_safetensors",
    "format_steps",
    "pull",
    "push",
    "read_artifact",
    "read_json",
    "read_safetensors",
    "render_card",
    "write_artifact",
    "write_card",
]


def __getattr__(name: str) -> Any:
    if name == "ModelHubMixin":  # imports huggingface_hub: only on first use
        from .models import ModelHubMixin

        return ModelHubMixin
    raise AttributeError(f"module 'hub_cards' has no attribute {name!r}")
