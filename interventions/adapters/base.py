"""The adapter interface, and the generic adapter that any ``nn.Module`` gets.

An adapter says what differs between model families: the module tree to address (a pipeline's
components under their names), which module's call is one denoising pass, how to read the
timestep from that call, which batch rows belong to which CFG branch, the activation layout of
a site, and named site groups. A plain module needs none of this: every call of the root is a
"call" and there are no steps or branches unless the user declares them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import FunctionType
from typing import Any

import torch
from torch import nn

from ..context import ALL_ROWS, BRANCHES, RunState, Segments, check_branch
from ..errors import AdapterError, InterventionError

Undo = Callable[[], None]
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas")


def halves(order: Sequence[str], batch: int) -> Segments:
    """Equal contiguous row blocks, one per branch name, in the given order."""
    return _halves(tuple(order), batch)


@functools.lru_cache(maxsize=256)  # read at every denoiser call: a few layouts and batch sizes per run
def _halves(order: tuple[str, ...], batch: int) -> Segments:
    n = len(order)
    if batch % n:
        raise AdapterError(f"a CFG batch of {batch} rows cannot be split into {n} equal branches {tuple(order)}")
    size = batch // n
    return tuple((name, slice(i * size, (i + 1) * size)) for i, name in enumerate(order))


def scalar_timestep(value: Any) -> float | None:
    """The timestep of a call as a float (the first element of a per-row timestep tensor)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if not value.ndim:  # the common case (a pipeline's ``t``): one item, no reshape and index
            return float(value.item())
        if value.numel() == 0:
            return None
        return float(value.reshape(-1)[0].item())
    if isinstance(value, (int, float)):
        return float(value)
    return None


@dataclass(slots=True)
class _Layer:
    """One wrapper in an attribute's chain: whether it is still on, and what the instance held
    before it was installed (restored when it comes off)."""

    active: bool
    had_own: bool
    previous: Any


# the wrappers made while an adapter's install runs, undone if it fails part-way (see Adapter)
_installing: ContextVar[list[Undo] | None] = ContextVar("interventions_installing", default=None)


def wrap_attribute(obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Undo:
    """Replace ``obj.name`` on the instance by ``make(original)``; return the undo function.

    Only the instance is touched (never the class), so other objects are unaffected. Wrappers
    nest and may be undone in any order (sessions are removed in any order): undo switches its
    wrapper off, so that it passes calls straight to the one below and the wrappers above keep
    working, then takes every switched-off wrapper off the top of the chain. Once all are undone
    the instance holds exactly what it held before (its own value, or none). A value that someone
    else set on top later is left alone; the wrappers below it then just pass calls through.
    """
    below = getattr(obj, name)
    inner = make(below)
    layer = _Layer(True, name in vars(obj), vars(obj).get(name))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return (inner if layer.active else below)(*args, **kwargs)

    return _install(obj, name, wrapper, inner, layer)


def call_before(obj: Any, name: str, callback: Callable[[], None]) -> Undo:
    """``wrap_attribute`` with a wrapper that runs ``callback`` before each call of the original:
    one layer instead of two (a pipeline session wraps three such methods at every attach)."""
    below = getattr(obj, name)
    layer = _Layer(True, name in vars(obj), vars(obj).get(name))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if layer.active:
            callback()
        return below(*args, **kwargs)

    return _install(obj, name, wrapper, below, layer)


class _Wrapper:
    """An instance wrapper as installed: calls ``call``; refuses to be copied or pickled. A copy
    of the object made inside a session (``copy.deepcopy(pipe.vae)``) would carry the wrapper,
    bound to the original's method: the copy would run the original's weights, and keep the
    wrapper after the session ended."""

    def __init__(self, call: Callable[..., Any], layer: _Layer) -> None:
        self._call, self._layer = call, layer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __deepcopy__(self, memo: Any) -> Any:
        raise _copied(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise _copied(self)


def _copied(wrapper: _Wrapper) -> InterventionError:
    return InterventionError(
        f"cannot copy or pickle {getattr(wrapper, '__qualname__', 'a method')!r} while a session wraps it: the "
        "copy would call the original object's method and keep the session's wrapper after it ended. Copy the "
        "model before attaching or after the session's block (session.remove())"
    )


def _install(obj: Any, name: str, wrapper: Callable[..., Any], wrapped: Callable[..., Any], layer: _Layer) -> Undo:
    installed = looks_like(_Wrapper(wrapper, layer), wrapped)
    _set(obj, name, installed)

    def undo() -> None:
        layer.active = False
        _unwind(obj, name)

    pending = _installing.get()
    if pending is not None:
        pending.append(undo)
    return undo


def _set(obj: Any, name: str, value: Any) -> None:
    """``setattr(obj, name, value)``; written to the instance's dict directly where the class
    holds a plain method of that name (what ``setattr`` would do after ``nn.Module.__setattr__``'s
    checks for parameters, buffers and submodules, a third of wrapping a module's method)."""
    if _shadows_method(obj, name):
        vars(obj)[name] = value
    else:
        setattr(obj, name, value)


def _unset(obj: Any, name: str) -> None:
    """``delattr(obj, name)``, past ``nn.Module.__delattr__`` as :func:`_set` is past its setattr."""
    if _shadows_method(obj, name):
        del vars(obj)[name]
    else:
        delattr(obj, name)


def _shadows_method(obj: Any, name: str) -> bool:
    return isinstance(getattr(type(obj), name, None), FunctionType)


def looks_like(wrapper: Callable[..., Any], wrapped: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` with the name and signature of ``wrapped`` (``inspect.signature`` follows
    ``__wrapped__``: diffusers reads ``scheduler.step``'s parameters). What ``functools.wraps``
    does that matters here, at a tenth of its cost: sessions wrap several methods per attach."""
    wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]
    for attribute in ("__name__", "__qualname__"):
        value = getattr(wrapped, attribute, None)
        if value is not None:
            setattr(wrapper, attribute, value)
    wrapper.__doc__ = getattr(wrapped, "__doc__", None)
    return wrapper


def _unwind(obj: Any, name: str) -> None:
    """Take the switched-off wrappers off the top of ``obj.name``'s chain."""
    while True:
        layer = getattr(vars(obj).get(name), "_layer", None)
        if not isinstance(layer, _Layer) or layer.active:
            return
        if layer.had_own:
            _set(obj, name, layer.previous)
        else:
            _unset(obj, name)


def _undone_on_failure(install: Callable[[Any, RunState], list[Undo]]) -> Callable[[Any, RunState], list[Undo]]:
    """``install`` that undoes the wrappers it made when it raises part-way: the session only
    learns of them from the list it returns, so it could not."""

    @functools.wraps(install)
    def guarded(self: Any, state: RunState) -> list[Undo]:
        made: list[Undo] = []
        token = _installing.set(made)
        try:
            undo = install(self, state)
        except BaseException:
            for u in reversed(made):
                u()
            raise
        finally:
            _installing.reset(token)
        outer = _installing.get()  # a subclass's install calling super().install()
        if outer is not None:
            outer.extend(made)
        return undo

    return guarded


class Adapter:
    """Generic adapter: a plain module, no steps; optional user-declared batched CFG layout.

    A subclass's ``install`` is guarded: if it raises part-way, the wrappers it already made with
    :func:`wrap_attribute` are undone before the error reaches the session.
    """

    name = "generic"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "install" in vars(cls):
            cls.install = _undone_on_failure(vars(cls)["install"])  # type: ignore[method-assign, assignment]

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None, denoiser: str | None = None) -> None:
        if not isinstance(target, nn.Module):
            raise AdapterError(
                f"cannot attach to a {type(target).__name__}: pass an nn.Module or a diffusers "
                "pipeline (an object with a .components dict of modules)"
            )
        for name in cfg or ():
            check_branch(name, "attach(cfg=...)", BRANCHES)
        if cfg and len(set(cfg)) != len(cfg):
            raise ValueError(
                f"attach(cfg={tuple(cfg)!r}) names a branch twice: cfg lists the batch's row blocks in order, one "
                "per branch (e.g. ('uncond', 'cond')), and two blocks under one name would be recorded as one"
            )
        self.target = target
        self.cfg = tuple(cfg) if cfg else None
        self.denoiser = denoiser

    # -- module tree ---------------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        """Prefix -> module; the session addresses ``prefix.sub.path`` (no prefix for "")."""
        return {"": self.target}

    def denoisers(self) -> list[str]:
        """The components whose calls are denoising passes: each call is a step (or part of one),
        its rows may be CFG branches. A plain model has none unless ``cfg`` declares it one."""
        return [] if self.denoiser is None else [self.denoiser]

    def entry_points(self, component: str) -> tuple[str, ...]:
        """Methods through which a component that is no denoiser is run, when not (only) through
        ``forward`` (a VAE's ``encode`` / ``decode``); empty: each ``forward`` is one call."""
        return ()

    # -- denoiser calls ------------------------------------------------------------------------
    def read_timestep(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
        for name in TIMESTEP_NAMES:
            if name in kwargs:
                return scalar_timestep(kwargs[name])
        return scalar_timestep(args[1]) if len(args) > 1 else None

    def segments(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> Segments:
        return halves(self.cfg, batch) if self.cfg else ALL_ROWS

    def install(self, state: RunState) -> list[Undo]:
        """Instance-level wrappers (scheduler, pipeline methods) the adapter needs; undo list.
        They report what they see through ``state``'s methods (``new_run``, ``restart_steps``,
        ``scheduler_stepped``) and never set its fields."""
        return []

    # -- sites ---------------------------------------------------------------------------------
    def layout(self, path: str, ndim: int) -> str | None:
        return None

    def groups(self) -> Mapping[str, list[str]]:
        return {}

    def batch_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """Rows of the denoiser call (the first tensor argument's leading dimension)."""
        for v in (*args, *kwargs.values()):
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
        return None
