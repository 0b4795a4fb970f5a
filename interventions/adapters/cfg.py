"""Which rows of a diffusers denoiser call belong to which CFG branch: a layout strategy (where the
branch order comes from) composed into one labeller of denoiser calls (what else a call can say
about its rows). Adapters hold one; nothing here chunks a batch blindly.

Layouts: ``Declared`` (``attach(..., cfg=(...))``), ``PipelineFlags`` (read from the pipeline: its
``do_classifier_free_guidance`` property or the flag it passes to ``encode_prompt``, PAG's
perturbed block, InstructPix2Pix's image-only block), ``Unlabelled`` (a bare denoiser nobody
declared: its rows carry no branch, and hooks that select one are refused when they meet them).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ..context import ALL_ROWS, BRANCHES, RunState, Segments
from .base import Undo, call_before, halves, wrap_attribute

UNCOND_FIRST = ("uncond", "cond")
PIX2PIX = ("cond", "image_cond", "uncond")  # text + image, image only, neither
PAG_CFG = ("uncond", "cond", "perturbed")
PAG = ("cond", "perturbed")
# the cache_context of a batched CFG call (LTX, CogVideoX, Mochi): its rows are split by the layout
BATCHED_PASS = "cond_uncond"


class CfgLayout(Protocol):
    def order(self) -> tuple[str, ...] | None:
        """The branch of each equal row block of a batched call, in order; None: no branches."""
        ...

    def install(self, state: RunState) -> list[Undo]: ...


class Unlabelled:
    def order(self) -> tuple[str, ...] | None:
        return None

    def install(self, state: RunState) -> list[Undo]:
        return []


class Declared:
    def __init__(self, order: Sequence[str]) -> None:
        self._order = tuple(order)

    def order(self) -> tuple[str, ...] | None:
        return self._order

    def install(self, state: RunState) -> list[Undo]:
        return []


class PipelineFlags:
    """The order a diffusers pipeline batches, read from its flags at each call (a pipeline
    decides CFG per call, from ``guidance_scale``). What never changes is read once."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._flag_property, self._pag, self._pix2pix = _class_traits(type(pipe))  # type: ignore[arg-type]
        self._captured: bool | None = None  # the flag the pipeline last passed to encode_prompt
        self._runs: RunState | None = None  # where a pipeline call begins and ends, if the pipeline marks both

    def order(self) -> tuple[str, ...] | None:
        # the properties read what the pipeline's __call__ set: before a first call (the denoiser run
        # by hand) they raise, and after one they describe that call: outside a call the rows carry
        # no branch
        if self._runs is not None and not self._runs.open:
            return None
        flag = getattr(self.pipe, "do_classifier_free_guidance", None) if self._flag_property else self._captured
        if self._pag and getattr(self.pipe, "do_perturbed_attention_guidance", False):
            return PAG_CFG if flag else PAG
        if flag is None:
            return None
        if flag and self._pix2pix:
            return PIX2PIX
        return UNCOND_FIRST if flag else ("cond",)

    def install(self, state: RunState) -> list[Undo]:
        """A call ends at ``maybe_free_model_hooks`` (273 of diffusers' 299 pipelines; it begins at
        ``check_inputs``, see the pipeline adapter). Pipelines without the flag property
        (StableAudio) pass the flag to ``encode_prompt``."""
        undo: list[Undo] = []
        pipe = self.pipe
        if callable(getattr(pipe, "check_inputs", None)) and callable(getattr(pipe, "maybe_free_model_hooks", None)):
            self._runs = state
            undo.append(call_before(pipe, "maybe_free_model_hooks", state.pipeline_call_ended))
        encode = getattr(pipe, "encode_prompt", None)
        if encode is None or self._flag_property or "do_classifier_free_guidance" not in _params(encode):
            return undo
        return [*undo, wrap_attribute(pipe, "encode_prompt", self._capture)]

    def _capture(self, original: Callable[..., Any]) -> Callable[..., Any]:
        names = _params(original)

        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = dict(zip(names, args, strict=False)) | kwargs
            self._captured = bool(bound.get("do_classifier_free_guidance", False))
            return original(*args, **kwargs)

        return encode_prompt


class DenoiserCalls:
    """Labels the rows of each denoiser call: a sequential pass named by the denoiser's
    ``cache_context`` (Flux true CFG, Wan), SD3's skip-layer-guidance pass, class labels where the
    model reserves a null class (DiT: null = uncond), else the layout's equal blocks. A batch that
    does not split into the layout is left unlabelled, with one warning."""

    def __init__(self, layout: CfgLayout, owner: str) -> None:
        self.layout = layout
        self.owner = owner
        self._sequential: str | None = None
        self._warned: set[str] = set()
        self._null_classes: dict[int, int] = {}

    def install(self, state: RunState, denoisers: Sequence[nn.Module]) -> list[Undo]:
        self._null_classes = {id(m): null for m in denoisers if (null := null_class(m)) is not None}
        # read from the class: a failed attribute lookup on a diffusers model runs its __getattr__
        undo = [wrap_attribute(m, "cache_context", self._track) for m in denoisers if hasattr(type(m), "cache_context")]
        return undo + self.layout.install(state)

    def _track(self, original: Callable[..., Any]) -> Callable[..., Any]:
        calls = self

        class _Tracked:
            def __init__(self, name: str, **kw: Any) -> None:
                self.name, self.inner = name, original(name, **kw)

            def __enter__(self) -> Any:
                calls._sequential = self.name
                return self.inner.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                calls._sequential = None
                return self.inner.__exit__(*exc)

        return _Tracked

    def segments(self, module: nn.Module, kwargs: dict[str, Any], batch: int) -> Segments:
        named = self._sequential
        if named is not None and named != BATCHED_PASS:  # "cond_uncond": the batched call, split below
            if named in BRANCHES:
                return ((named, slice(None)),)
            self._warn_once(
                named,
                f"{self.owner}: a denoiser pass named {named!r} (its cache_context) is no CFG branch "
                f"({', '.join(BRANCHES)}); its rows are left unlabelled and hooks restricted with When(branch=...) "
                "are refused there.",
            )
            return ALL_ROWS
        if kwargs.get("skip_layers") is not None:
            return (("skip_layers", slice(None)),)
        if self._null_classes:
            labels = kwargs.get("class_labels")
            null = self._null_classes.get(id(module))
            if null is not None and isinstance(labels, torch.Tensor) and labels.numel() == batch:
                runs = _label_runs(labels, null)
                if len(runs) <= 2:
                    return runs
                self._warn_once(  # a branch in several blocks: a key holds one block
                    "interleaved",
                    f"{self.owner}: the class labels {labels.reshape(-1).tolist()[:8]} interleave the null class "
                    f"{null} with real classes, so the batch has no single cond block and uncond block; its rows "
                    "are left unlabelled (a Cache keeps the whole batch under branch None) and hooks restricted "
                    "with When(branch=...) are refused there. Batch the cond rows first and the null rows after, "
                    "as DiTPipeline does.",
                )
                return ALL_ROWS
        order = self.layout.order()
        if order is None:  # unconditional (DDPM), or a bare denoiser nobody declared
            return ALL_ROWS
        if len(order) == 1:
            return ((order[0], slice(None)),)
        if batch % len(order):
            self._warn_once(
                "unsplit",
                f"{self.owner}: a denoiser batch of {batch} rows does not split into the CFG blocks {order}; this "
                "model batches another layout, so its rows are left unlabelled and hooks restricted with "
                "When(branch=...) are refused there. Declare the layout with attach(..., cfg=(...)) to label them.",
            )
            return ALL_ROWS
        return halves(order, batch)

    def _warn_once(self, reason: str, message: str) -> None:
        """Each reason rows are left unlabelled is said once per session, at its first call."""
        if reason in self._warned:
            return
        self._warned.add(reason)
        warnings.warn(message, stacklevel=4)


def null_class(model: nn.Module) -> int | None:
    """The class label a denoiser reserves for "no class" (its CFG uncond rows), or None. Only
    diffusers' ``LabelEmbedding`` (DiT; ``ada_norm_zero`` transformers) reserves one: index
    ``num_embeds_ada_norm``. A ``UNet2DModel``'s class embedding has none, so its labels say
    nothing about branches (declare them with ``cfg=``)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("norm_type") != "ada_norm_zero":
        return None
    null = config.get("num_embeds_ada_norm")
    return null if isinstance(null, int) else None


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


@functools.lru_cache(maxsize=256)
def _class_traits(cls: type) -> tuple[bool, bool, bool]:
    """Whether a pipeline class has the CFG flag property, the PAG flag property, and is an
    InstructPix2Pix pipeline (read on the class, once: a pipeline's ``__getattr__`` would look a
    name up in its config)."""
    flag = isinstance(getattr(cls, "do_classifier_free_guidance", None), property)
    pag = isinstance(getattr(cls, "do_perturbed_attention_guidance", None), property)
    return flag, pag, any(c.__name__.endswith("InstructPix2PixPipeline") for c in cls.__mro__)


def _params(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
