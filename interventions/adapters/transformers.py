"""Adapter for transformers models (decoder LMs and encoders): named groups, token layout.

Every forward of the root model is one call (during ``generate`` one call per new token), so
``When(calls=...)`` selects generation steps. There are no CFG branches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..sites import expand
from .base import Adapter


def is_transformers_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.startswith("transformers")


def _block_list(model: nn.Module) -> str | None:
    """The path of the longest ModuleList of identical layers: the transformer blocks."""
    best, size = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > size:
            kinds = {type(m) for m in mod}
            if len(kinds) == 1:
                best, size = name, len(mod)
    return best


class TransformersAdapter(Adapter):
    name = "transformers"

    def layout(self, path: str, ndim: int) -> str | None:
        return "BNC" if ndim == 3 else None

    def groups(self) -> Mapping[str, list[str]]:
        blocks = _block_list(self.target)
        if blocks is None:
            return {}
        paths = [n for n, _ in self.target.named_modules()]
        candidates = {
            "blocks": [f"{blocks}.*"],
            "self_attn": [f"{blocks}.*.self_attn", f"{blocks}.*.attn", f"{blocks}.*.attention"],
            "mlp": [f"{blocks}.*.mlp", f"{blocks}.*.feed_forward"],
            "cross_attn": [f"{blocks}.*.crossattention", f"{blocks}.*.encoder_attn"],
        }
        return {
            g: [p for p in pats if expand(p, paths)]
            for g, pats in candidates.items()
            if any(expand(p, paths) for p in pats)
        }
