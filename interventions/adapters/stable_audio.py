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
from ..groups import hidden_site, nonempty, once
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

    @once
    def groups(self) -> Mapping[str, list[str]]:
        """The DiT's layers and their ``self_attn`` / ``cross_attn`` / ``ff`` sublayers (each returns
        its hidden state as a tensor)."""
        if self.denoiser is None:
            return {}
        pre = f"{self.denoiser}.transformer.layers" if self.denoiser else "transformer.layers"
        try:
            layers = self.target.get_submodule(pre)
        except AttributeError:
            return {}
        groups: dict[str, list[str]] = {"blocks": [], "self_attn": [], "cross_attn": [], "attn": [], "mlp": []}
        for i, layer in enumerate(layers.children()):
            path = f"{pre}.{i}"
            groups["blocks"].append(hidden_site(path, layer))
            for name, sub in layer.named_children():
                group = {"self_attn": "self_attn", "cross_attn": "cross_attn", "ff": "mlp"}.get(name)
                if group is not None:
                    groups[group].append(hidden_site(f"{path}.{name}", sub))
                    if group != "mlp":
                        groups["attn"].append(groups[group][-1])
        return nonempty(groups)
