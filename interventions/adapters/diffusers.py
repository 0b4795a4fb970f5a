"""Adapters for diffusers pipelines and bare diffusers denoisers.

How each family lays out classifier-free guidance (measured on diffusers 0.42 with tiny models
built from config, by a hook on the denoiser), and how this adapter reads it without ``chunk(2)`` guesses:

- Stable Diffusion / SDXL / SD3 (``pipe.do_classifier_free_guidance``): one batched call per
  step, rows ``[uncond, cond]``. SD3's skip-layer-guidance pass (``skip_layers=``) is branch
  ``"skip_layers"``.
- StableAudioPipeline (flag passed to ``encode_prompt``): batched, ``[uncond, cond]``.
- DiTPipeline (``class_labels`` with the null class 1000): batched, ``[cond, uncond]``; rows are
  labelled from the class labels themselves.
- Flux with true CFG: two sequential passes per step inside
  ``transformer.cache_context("cond")`` / ``("uncond")``; the adapter reads that name.
- DDPMPipeline (UNet2DModel): unconditional, no branches.
- InstructPix2Pix (SD and SDXL): three blocks ``[cond, image_cond, uncond]`` (text and image,
  image only, neither); the PAG pipelines: ``[uncond, cond, perturbed]``, or ``[cond, perturbed]``
  without CFG (the perturbed rows run with perturbed self-attention).
- A pipeline whose batch does not split into its layout (one we do not know): the rows stay
  unlabelled, with a warning, so that hooks that ignore branches still run.

Steps restart whenever the pipeline's scheduler sets its timesteps (one pipeline call = one run),
and advance after each ``scheduler.step()``, once per denoiser evaluation of the solver (twice per
step for Heun) and once per step whatever the number of CFG passes.

A diffusers model that takes no timestep (a VAE, an adapter, a projection) is not a denoiser: it
is tracked like a plain module, one ``call`` per ``forward`` / ``encode`` / ``decode``.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from torch import nn

from ..context import RunState, Segments
from ..errors import InterventionError
from ..groups import class_names, hidden_site, leaf, nonempty, once, walk
from .base import TIMESTEP_NAMES, Adapter, Undo, call_before
from .cfg import CfgLayout, Declared, DenoiserCalls, PipelineFlags, Unlabelled

ENTRY_POINTS = ("forward", "encode", "decode")  # how a non-denoiser model is run
# diffusers' attention classes (``FluxAttention``, ``WanAttention`` use the mixin)
_ATTENTION_CLASSES = frozenset({"Attention", "AttentionModuleMixin"})
# a denoiser's block lists, in the order its forward runs them (UNets, DiTs, MMDiTs, Wan)
_BLOCK_LISTS = ("down_blocks", "mid_block", "up_blocks", "transformer_blocks", "single_transformer_blocks", "blocks")


def is_pipeline(obj: Any) -> bool:
    """A diffusers pipeline (read from its class: ``components`` is a costly property)."""
    return type(obj).__module__.startswith("diffusers") and hasattr(type(obj), "components")


def is_diffusers_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.startswith("diffusers")


def is_denoiser(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes a timestep (``timestep``, ``timestep_ratio``,
    ``decoder_noise_time``, ``sigma``...): a VAE or an adapter takes none and is run once per
    pipeline call, not once per step. Read from the class (once per class: a signature costs)."""
    return _takes_timestep(type(model).forward)


@functools.lru_cache(maxsize=256)
def _takes_timestep(forward: Callable[..., Any]) -> bool:
    try:
        names = list(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return True
    return any(n in TIMESTEP_NAMES or "timestep" in n or n.endswith("_time") or "sigma" in n for n in names)


class DiffusersModelAdapter(Adapter):
    """A bare diffusers denoiser (UNet2DConditionModel, a DiT, ...: a model whose ``forward``
    takes a timestep, see :func:`is_denoiser`): the root call is a pass."""

    name = "diffusers-model"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None, layout: CfgLayout | None = None) -> None:
        super().__init__(target, cfg=cfg, denoiser="")
        if layout is None:
            layout = Declared(cfg) if cfg else Unlabelled()
        self.calls = DenoiserCalls(layout, type(target).__name__)

    def _denoiser_module(self) -> nn.Module:
        return self.target

    def install(self, state: RunState) -> list[Undo]:
        comps = self.components()
        return self.calls.install(state, [comps.get(d, self.target) for d in self.denoisers()])

    def segments(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> Segments:
        return self.calls.segments(module, kwargs, batch)

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

    @once
    def groups(self) -> Mapping[str, list[str]]:
        """The denoiser's groups: ``attn`` / ``self_attn`` / ``cross_attn`` from diffusers attention
        modules (joint MMDiT attention counts as self-attention), ``mlp`` from its
        ``FeedForward`` modules of the image stream, ``blocks`` from its block lists; each the site
        of the module's hidden-state output (see :mod:`interventions.groups`).

        In a pipeline with several denoisers, the plain groups span every denoiser of the main
        one's class, in the pipeline's order (Wan 2.2's ``transformer`` and ``transformer_2``
        take turns over the steps: ``@cross_attn`` means both experts' layers, not the first
        expert's alone), and each denoiser also has its own groups under its name
        (``@transformer_2.cross_attn``, ``@controlnet.cross_attn``)."""
        comps = self.components()
        main = self._prefix()
        if main not in comps:
            return {}
        dens = [d for d in self.denoisers() if d in comps] if main else [main]
        own = {d: _denoiser_groups(comps[d], d) for d in dens}
        plain: dict[str, list[str]] = {}
        for d in dens:
            if type(comps[d]) is type(comps[main]):
                for name, sites in own[d].items():
                    plain.setdefault(name, []).extend(sites)
        qualified = {f"{d}.{name}": sites for d in dens if len(dens) > 1 for name, sites in own[d].items()}
        return nonempty(plain | qualified)


class DiffusersModuleAdapter(DiffusersModelAdapter):
    """A diffusers model that is not a denoiser (``AutoencoderKL``, ``AutoencoderOobleck``, a
    T2I adapter): like a plain module, each call has its own ``call`` index, with no steps and no
    branches. A VAE is mostly run through ``encode`` / ``decode``, which never pass through
    ``forward``, so each entry point counts a call; nested entries (``forward`` calling
    ``encode`` then ``decode``) stay one call."""

    name = "diffusers-module"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None) -> None:
        super().__init__(target, cfg=cfg)
        self.denoiser = None  # no steps: each call is recorded on its own

    def entry_points(self, component: str) -> tuple[str, ...]:
        return _entry_points(self.target)

    def _channels_by_time(self, path: str) -> bool:
        return type(self.target).__name__ == "AutoencoderOobleck"


class DiffusersPipelineAdapter(DiffusersModelAdapter):
    """A whole diffusers pipeline: sites are ``<component>.<path>`` (``unet.mid_block``)."""

    name = "diffusers-pipeline"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None) -> None:
        super().__init__(_STAND_IN, cfg=cfg, layout=Declared(cfg) if cfg else PipelineFlags(target))
        self.calls.owner = type(target).__name__
        self.pipe = target
        roles, found = _roles(target)
        self._found = {k: found[k] for k in roles.modules + roles.schedulers}  # as attached
        self._comps: dict[str, nn.Module] = {k: found[k] for k in roles.modules}
        self._schedulers: list[Any] = [found[k] for k in roles.schedulers]
        # every component run with a timestep in the denoising loop is stepped (a ControlNet, Wan's
        # transformer_2, a prior and its decoder); the main one (groups, layouts) comes first
        self._denoisers = list(roles.denoisers)
        main = [n for n in ("unet", "transformer", "prior") if n in self._denoisers]
        self.denoiser = main[0] if main else (self._denoisers[0] if self._denoisers else None)

    def components(self) -> dict[str, nn.Module]:
        return self._comps

    def denoisers(self) -> list[str]:
        return self._denoisers

    def entry_points(self, component: str) -> tuple[str, ...]:
        return _entry_points(self._comps[component])

    def _denoiser_module(self) -> nn.Module:
        return self._comps[self.denoiser] if self.denoiser else nn.Module()

    def _prefix(self) -> str:
        return self.denoiser or ""

    def _audio_vae(self) -> bool:
        return type(self._comps.get("vae")).__name__ == "AutoencoderOobleck"

    def install(self, state: RunState) -> list[Undo]:
        """A pipeline call begins a run (``check_inputs`` is the first thing a pipeline's
        ``__call__`` runs: the text encoders' calls then count from 0 again), each scheduler's
        ``set_timesteps`` restarts the steps (the run itself where no ``check_inputs`` exists),
        and each ``scheduler.step`` ends a denoiser evaluation."""
        undo = super().install(state)
        begins_run = callable(getattr(self.pipe, "check_inputs", None))
        if begins_run:

            def begin_run() -> None:
                self._refuse_replaced()
                state.pipeline_call_began()

            undo.append(call_before(self.pipe, "check_inputs", begin_run))
        for scheduler in self._schedulers:
            restart = state.timesteps_set if begins_run else state.new_run
            undo.append(call_before(scheduler, "set_timesteps", restart))
            if callable(getattr(scheduler, "step", None)):
                undo.append(call_before(scheduler, "step", state.scheduler_stepped))
        return undo

    def _refuse_replaced(self) -> None:
        """A component or scheduler set on the pipeline while a session is attached is not the one
        hooked and wrapped: its sites would never fire and its steps would go uncounted."""
        for name, held in self._found.items():
            now = getattr(self.pipe, name, None)
            if now is not held:
                raise InterventionError(
                    f"pipe.{name} was replaced ({type(held).__name__} -> {type(now).__name__}) while a session is "
                    f"attached to the pipeline: the session's hooks and step tracking are on the old {name}. End "
                    "the session (its with block, or session.remove()) and attach again after setting it"
                )


class _Roles(NamedTuple):
    """Which registered components of a pipeline are modules, schedulers and denoisers."""

    config: Any  # the pipeline's config object they were read from
    types: tuple[type, ...]  # the class of each registered component, in config order
    modules: tuple[str, ...]
    schedulers: tuple[str, ...]
    denoisers: tuple[str, ...]


_roles_seen: weakref.WeakKeyDictionary[Any, _Roles] = weakref.WeakKeyDictionary()


def _roles(pipe: Any) -> tuple[_Roles, dict[str, Any]]:
    """The roles of ``pipe``'s components and the components themselves (by name), the roles read
    again only when its config object or a component's class changed (a pipeline writes a new
    config when a component is set; reading every entry was half of entering an empty session on
    a pipeline).

    The registered components are the config entries holding (library, class) pairs
    (``pipe.components`` would inspect the constructor's signature; reading a plain config value
    such as ``requires_safety_checker`` as an attribute is deprecated). A scheduler is a component
    that is no module and whose class has ``set_timesteps`` (read on the class: a tokenizer's or a
    model's instance ``__getattr__`` would run, and fail, for each missing name)."""
    config = pipe.config
    seen = _roles_seen.get(pipe)
    if seen is not None and seen.config is config:
        found: dict[str, Any] = {k: getattr(pipe, k, None) for k in seen.modules + seen.schedulers}
        if tuple(map(type, found.values())) == seen.types:
            return seen, found
    names = tuple(k for k, v in config.items() if not k.startswith("_") and isinstance(v, (list, tuple)))
    found = {k: getattr(pipe, k, None) for k in names}
    modules = tuple(k for k, c in found.items() if isinstance(c, nn.Module))
    schedulers = tuple(
        k for k, c in found.items() if k not in modules and callable(getattr(type(c), "set_timesteps", None))
    )
    denoisers = tuple(k for k in modules if is_denoiser(found[k]))
    roles = _Roles(config, tuple(type(found[k]) for k in modules + schedulers), modules, schedulers, denoisers)
    try:
        _roles_seen[pipe] = roles
    except TypeError:  # a pipeline that cannot be weakly referenced: read each time
        pass
    return roles, found


def _denoiser_groups(comp: nn.Module, prefix: str) -> dict[str, list[str]]:
    """One denoiser's groups (see :meth:`DiffusersModelAdapter.groups`), its paths under ``prefix``."""
    attn, cross, mlp = [], [], []
    for path, m in walk(comp, prefix):
        kinds = class_names(m)
        if kinds & _ATTENTION_CLASSES:
            attn.append(hidden_site(path, m))
            if getattr(m, "is_cross_attention", False) is True:
                cross.append(attn[-1])
        elif "FeedForward" in kinds and not leaf(path).endswith("_context"):
            mlp.append(hidden_site(path, m))
    blocks = []
    for name in _BLOCK_LISTS:
        child = comp._modules.get(name)
        members = list(child.named_children()) if isinstance(child, nn.ModuleList) else [("", child)]
        blocks += [hidden_site(_join(_join(prefix, name), i), b) for i, b in members if b is not None]
    self_attn = [p for p in attn if p not in cross]
    return {"attn": attn, "cross_attn": cross, "self_attn": self_attn, "mlp": mlp, "blocks": blocks}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _entry_points(model: nn.Module) -> tuple[str, ...]:
    """A model run through ``encode`` / ``decode`` (a VAE) counts a call at each of them and at
    ``forward``; any other is counted at ``forward`` alone (empty: a forward pre-hook does it)."""
    if not any(callable(getattr(model, n, None)) for n in ENTRY_POINTS[1:]):
        return ()
    return tuple(n for n in ENTRY_POINTS if callable(getattr(model, n, None)))


class _ModuleStandIn(nn.Module):
    """Placeholder target: a pipeline is not a module; its components are."""


_STAND_IN = _ModuleStandIn()  # one for every pipeline adapter: building a module costs µs
