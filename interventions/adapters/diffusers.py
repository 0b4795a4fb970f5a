"""Adapters for diffusers pipelines and bare diffusers denoisers.

How each family lays out classifier-free guidance (measured on diffusers 0.42, see
``shared/research/feasibility.md``), and how this adapter reads it without ``chunk(2)`` guesses:

- Stable Diffusion / SDXL / SD3 (``pipe.do_classifier_free_guidance``): one batched call per
  step, rows ``[uncond, cond]``. SD3's skip-layer-guidance pass (``skip_layers=``) is branch
  ``"skip_layers"``.
- StableAudioPipeline (flag passed to ``encode_prompt``): batched, ``[uncond, cond]``.
- DiTPipeline (``class_labels`` with the null class 1000): batched, ``[cond, uncond]``; rows are
  labelled from the class labels themselves.
- Flux with true CFG: two sequential passes per step inside
  ``transformer.cache_context("cond")`` / ``("uncond")``; the adapter reads that name.
- DDPMPipeline (UNet2DModel): unconditional, no branches.

Steps restart whenever the pipeline's scheduler sets its timesteps (one pipeline call = one run).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..context import ALL_ROWS, RunState, Segments
from ..sites import expand
from .base import Adapter, Undo, halves, wrap_attribute

UNCOND_FIRST = ("uncond", "cond")
DIT_NULL_CLASS = 1000


def is_pipeline(obj: Any) -> bool:
    """A diffusers pipeline (read from its class: ``components`` is a costly property)."""
    return type(obj).__module__.startswith("diffusers") and hasattr(type(obj), "components")


def is_diffusers_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.startswith("diffusers")


def _label_runs(labels: torch.Tensor, null: int) -> Segments:
    """Contiguous row blocks labelled cond / uncond from class labels (null class = uncond)."""
    names = ["uncond" if int(v) == null else "cond" for v in labels.reshape(-1).tolist()]
    out: list[tuple[str | None, slice]] = []
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            out.append((names[start], slice(start, i)))
            start = i
    return tuple(out) if out else ALL_ROWS


class DiffusersModelAdapter(Adapter):
    """A bare diffusers denoiser (UNet2DConditionModel, a DiT, ...): the root call is a pass."""

    name = "diffusers-model"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None) -> None:
        super().__init__(target, cfg=cfg)
        self.denoiser = ""
        self._sequential: str | None = None  # name of the active cache_context, if any

    def _denoiser_module(self) -> nn.Module:
        return self.target

    def install(self, state: RunState) -> list[Undo]:
        undo: list[Undo] = []
        den = self._denoiser_module()
        if hasattr(den, "cache_context"):
            undo.append(wrap_attribute(den, "cache_context", self._track_cache_context))
        return undo

    def _track_cache_context(self, original: Callable[..., Any]) -> Callable[..., Any]:
        adapter = self

        class _Tracked:
            def __init__(self, name: str, **kw: Any) -> None:
                self.name, self.inner = name, original(name, **kw)

            def __enter__(self) -> Any:
                adapter._sequential = self.name
                return self.inner.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                adapter._sequential = None
                return self.inner.__exit__(*exc)

        return _Tracked

    def segments(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> Segments:
        if self._sequential is not None:
            return ((self._sequential, slice(None)),)
        if kwargs.get("skip_layers") is not None:
            return (("skip_layers", slice(None)),)
        labels = kwargs.get("class_labels")
        if isinstance(labels, torch.Tensor) and labels.numel() == batch:
            return _label_runs(labels, DIT_NULL_CLASS)
        return self._batched(batch)

    def _batched(self, batch: int) -> Segments:
        return halves(self.cfg, batch) if self.cfg else ALL_ROWS

    def layout(self, path: str, ndim: int) -> str | None:
        if ndim == 3 and self._channels_by_time(path):
            return "BCT"
        return {4: "BCHW", 3: "BNC", 2: "BC"}.get(ndim)

    def _channels_by_time(self, path: str) -> bool:
        """StableAudioDiTModel's own input/output and pre/post convolutions, and an audio VAE's
        sites, carry channels x time rather than tokens."""
        den = self._prefix()
        if type(self._denoiser_module()).__name__ == "StableAudioDiTModel":
            local = path[len(den) :].lstrip(".") if den else path
            if path == den or local in ("preprocess_conv", "postprocess_conv"):
                return True
        return self._audio_vae() and path.split(".", 1)[0] == "vae"

    def _prefix(self) -> str:
        return ""

    def _audio_vae(self) -> bool:
        return False

    def groups(self) -> Mapping[str, list[str]]:
        """``cross_attn`` / ``self_attn`` / ``attn`` from diffusers ``Attention`` modules (joint
        MMDiT attention counts as self-attention), ``blocks`` from the denoiser's block lists."""
        den = self._prefix()
        pre = f"{den}." if den else ""
        paths: dict[str, nn.Module] = {}
        for prefix, comp in self.components().items():
            if prefix == den:
                paths.update({self._join(prefix, n): m for n, m in comp.named_modules()})
        attn = [p for p, m in paths.items() if type(m).__name__ == "Attention"]
        cross = [p for p in attn if getattr(paths[p], "is_cross_attention", False)]
        block_patterns = (
            "down_blocks.*",
            "mid_block",
            "up_blocks.*",
            "transformer_blocks.*",
            "single_transformer_blocks.*",
        )
        blocks = [pre + b for b in block_patterns if expand(pre + b, list(paths))]
        groups = {"attn": attn, "cross_attn": cross, "self_attn": [p for p in attn if p not in cross], "blocks": blocks}
        return {name: sites for name, sites in groups.items() if sites}

    @staticmethod
    def _join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix and name else prefix or name


class DiffusersPipelineAdapter(DiffusersModelAdapter):
    """A whole diffusers pipeline: sites are ``<component>.<path>`` (``unet.mid_block``)."""

    name = "diffusers-pipeline"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None) -> None:
        Adapter.__init__(self, _ModuleStandIn(), cfg=cfg)
        self.pipe = target
        # the registered components are the config entries holding (library, class) pairs
        # (``pipe.components`` would inspect the constructor's signature on every attach; reading
        # a plain config value such as ``requires_safety_checker`` as an attribute is deprecated)
        names = [k for k, v in target.config.items() if not k.startswith("_") and isinstance(v, (list, tuple))]
        self._comps = {k: m for k in names if isinstance(m := getattr(target, k, None), nn.Module)}
        names = [n for n in ("unet", "transformer", "prior") if n in self._comps]
        self.denoiser = names[0] if names else None
        self._sequential = None
        self._cfg_flag: bool | None = None

    def components(self) -> dict[str, nn.Module]:
        return self._comps

    def roots(self) -> list[str]:
        return list(self._comps)

    def _denoiser_module(self) -> nn.Module:
        return self._comps[self.denoiser] if self.denoiser else nn.Module()

    def _prefix(self) -> str:
        return self.denoiser or ""

    def _audio_vae(self) -> bool:
        return type(self._comps.get("vae")).__name__ == "AutoencoderOobleck"

    def install(self, state: RunState) -> list[Undo]:
        undo = super().install(state)
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            undo.append(wrap_attribute(scheduler, "set_timesteps", _before(state.new_run)))
        encode = getattr(self.pipe, "encode_prompt", None)
        has_property = isinstance(getattr(type(self.pipe), "do_classifier_free_guidance", None), property)
        if encode is not None and not has_property and "do_classifier_free_guidance" in _params(encode):
            undo.append(wrap_attribute(self.pipe, "encode_prompt", self._capture_cfg_flag))
        return undo

    def _capture_cfg_flag(self, original: Callable[..., Any]) -> Callable[..., Any]:
        names = _params(original)

        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = dict(zip(names, args, strict=False)) | kwargs
            self._cfg_flag = bool(bound.get("do_classifier_free_guidance", False))
            return original(*args, **kwargs)

        return encode_prompt

    def _batched(self, batch: int) -> Segments:
        if self.cfg:
            return halves(self.cfg, batch)
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        if flag is None:
            flag = self._cfg_flag
        if flag is None:  # unconditional pipeline (DDPM): no branches
            return ALL_ROWS
        return halves(UNCOND_FIRST, batch) if flag else (("cond", slice(None)),)


class _ModuleStandIn(nn.Module):
    """Placeholder target: a pipeline is not a module; its components are."""


def _params(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _before(callback: Callable[[], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            callback()
            return original(*args, **kwargs)

        return wrapper

    return make
