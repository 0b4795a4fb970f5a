"""The adapter interface, and the generic adapter that any ``nn.Module`` gets.

An adapter says what differs between model families: the module tree to address (a pipeline's
components under their names), which module's call is one denoising pass, how to read the
timestep from that call, which batch rows belong to which CFG branch, the activation layout of
a site, and named site groups. A plain module needs none of this: every call of the root is a
"call" and there are no steps or branches unless the user declares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..context import ALL_ROWS, RunState, Segments
from ..errors import AdapterError

Undo = Callable[[], None]
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas")


def halves(order: Sequence[str], batch: int) -> Segments:
    """Equal contiguous row blocks, one per branch name, in the given order."""
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
        if value.numel() == 0:
            return None
        return float(value.reshape(-1)[0].item())
    if isinstance(value, (int, float)):
        return float(value)
    return None


def wrap_attribute(obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Undo:
    """Replace ``obj.name`` on the instance by ``make(original)``; return the undo function.

    Only the instance is touched (never the class), so other objects are unaffected and undo
    restores exactly what was there, nested wrappers included.
    """
    had_own = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, make(getattr(obj, name)))

    def undo() -> None:
        if had_own:
            setattr(obj, name, previous)
        else:
            try:
                delattr(obj, name)
            except AttributeError:
                pass

    return undo


class Adapter:
    """Generic adapter: a plain module, no steps; optional user-declared batched CFG layout."""

    name = "generic"

    def __init__(self, target: Any, *, cfg: Sequence[str] | None = None, denoiser: str | None = None) -> None:
        if not isinstance(target, nn.Module):
            raise AdapterError(
                f"cannot attach to a {type(target).__name__}: pass an nn.Module or a diffusers "
                "pipeline (an object with a .components dict of modules)"
            )
        self.target = target
        self.cfg = tuple(cfg) if cfg else None
        self.denoiser = denoiser

    # -- module tree ---------------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        """Prefix -> module; the session addresses ``prefix.sub.path`` (no prefix for "")."""
        return {"": self.target}

    def roots(self) -> list[str]:
        """Paths whose call starts a new "call" index when no denoiser is known."""
        return [""]

    # -- denoiser calls ------------------------------------------------------------------------
    def read_timestep(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
        for name in TIMESTEP_NAMES:
            if name in kwargs:
                return scalar_timestep(kwargs[name])
        return scalar_timestep(args[1]) if len(args) > 1 else None

    def segments(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> Segments:
        return halves(self.cfg, batch) if self.cfg else ALL_ROWS

    def install(self, state: RunState) -> list[Undo]:
        """Instance-level wrappers (scheduler, pipeline methods) the adapter needs; undo list."""
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
