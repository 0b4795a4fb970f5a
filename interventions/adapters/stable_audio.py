"""Adapter for stable-audio-tools diffusion models (``create_model_from_config``, diffusion_cond).

``DiffusionTransformer.forward(x, t, ..., cfg_scale=..., batch_cfg=True)`` builds the CFG batch
itself: with ``cfg_scale != 1`` the transformer layers see ``2B`` rows, ``[cond, uncond]``
(the unconditional rows get zeroed / null conditioning). The timestep ``t`` is the second
argument of that call. Layers live under ``model.model.transformer.layers.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..context import Segments
from ..sites import expand
from .base import Adapter, halves, scalar_timestep

COND_FIRST = ("cond", "uncond")


def is_stable_audio_tools(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.startswith("stable_audio_tools")


def _find_dit(model: nn.Module) -> str | None:
    for name, mod in model.named_modules():
        if type(mod).__name__ == "DiffusionTransformer":
            return name
    return None


class StableAudioToolsAdapter(Adapter):
    name = "stable-audio-tools"

    def __init__(self, target: Any, **kw: Any) -> None:
        super().__init__(target, **kw)
        self.denoiser = _find_dit(target)

    def read_timestep(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
        return scalar_timestep(kwargs["t"] if "t" in kwargs else args[1] if len(args) > 1 else None)

    def segments(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> Segments:
        order = self.cfg or COND_FIRST
        scale = kwargs.get("cfg_scale", 1.0)
        if scale != 1.0 and kwargs.get("batch_cfg", True):
            return halves(order, 2 * batch)
        return (("cond", slice(None)),)

    def layout(self, path: str, ndim: int) -> str | None:
        if ndim != 3:
            return None
        leaf = path.rsplit(".", 1)[-1]
        tokens = ".transformer" in f".{path}" or leaf in ("to_cond_embed", "to_global_embed")
        return "BNC" if tokens else "BCT"

    def groups(self) -> Mapping[str, list[str]]:
        den = self.denoiser
        if den is None:
            return {}
        pre = f"{den}." if den else ""
        paths = [n for n, _ in self.target.named_modules()]
        candidates = {
            "blocks": [f"{pre}transformer.layers.*"],
            "self_attn": [f"{pre}transformer.layers.*.self_attn"],
            "cross_attn": [f"{pre}transformer.layers.*.cross_attn"],
        }
        return {g: p for g, p in candidates.items() if all(expand(x, paths) for x in p)}
