"""Hypothesis strategies and assertions for code built on ``interventions``.

Libraries that build on ours property-test their own hooks with these, as our own tests do:

>>> from hypothesis import given, settings
>>> from interventions.testing import module_trees, assert_no_hooks_left
>>> @settings(max_examples=5, deadline=None)
... @given(module_trees())
... def test_my_hook_is_removed(model):
...     ...  # attach your hooks, run, then assert_no_hooks_left(model)

Requires ``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from .hooks import Ablate, AddVector, Cache, Lambda, Patch
from .session import attach

Width = int


class Block(nn.Module):
    """A container that applies its named children in order (random module trees are built of
    these, so paths mix names and indices like real models)."""

    def __init__(self, children: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


_NAMES = st.sampled_from(["attn", "mlp", "proj", "norm", "conv", "layers", "blocks", "out", "inp", "mid"])


def _leaf(width: int, kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(width, width)
    if kind == "tanh":
        return nn.Tanh()
    return nn.LayerNorm(width)


@st.composite
def module_trees(draw: st.DrawFn, width: int = 8, max_depth: int = 3, max_children: int = 3) -> nn.Module:
    """Random trees of containers (named and indexed) over Linear / Tanh / LayerNorm leaves, all
    mapping ``[batch, width]`` to ``[batch, width]``."""

    def node(depth: int) -> nn.Module:
        if depth >= max_depth or draw(st.booleans()):
            return _leaf(width, draw(st.sampled_from(["linear", "tanh", "norm"])), draw(st.integers(0, 2**16)))
        n = draw(st.integers(1, max_children))
        if draw(st.booleans()):
            return nn.Sequential(*[node(depth + 1) for _ in range(n)])
        names = draw(st.lists(_NAMES, min_size=n, max_size=n, unique=True))
        return Block({name: node(depth + 1) for name in names})

    root = node(1)
    return root if isinstance(root, (Block, nn.Sequential)) else nn.Sequential(root)


def module_paths(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


@st.composite
def site_patterns(draw: st.DrawFn, model: nn.Module) -> str:
    """A pattern over ``model``'s paths: a real path, with some segments turned into ``*``/``**``."""
    path = draw(st.sampled_from(module_paths(model)))
    parts = path.split(".")
    out = []
    for part in parts:
        choice = draw(st.sampled_from(["keep", "keep", "star", "dstar"]))
        out.append(part if choice == "keep" else "*" if choice == "star" else "**")
    return ".".join(out)


def activations(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> st.SearchStrategy[torch.Tensor]:
    """Finite tensors of a given shape (values in [-4, 4])."""
    n = 1
    for s in shape:
        n *= s
    floats = st.floats(-4, 4, allow_nan=False, width=32)
    return st.lists(floats, min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=dtype).reshape(shape))


@st.composite
def hook_stacks(draw: st.DrawFn, width: int, max_size: int = 4) -> list[Any]:
    """Random lists of hooks valid on a ``[batch, width]`` site."""
    hooks: list[Any] = []
    for _ in range(draw(st.integers(1, max_size))):
        kind = draw(st.sampled_from(["add", "ablate_zero", "project", "patch", "lambda", "cache"]))
        vec = draw(activations((width,)))
        if kind == "add":
            hooks.append(AddVector(vec, scale=draw(st.floats(-2, 2, width=32)), restore_norm=draw(st.booleans())))
        elif kind == "ablate_zero":
            hooks.append(Ablate("zero"))
        elif kind == "project":
            hooks.append(Ablate("project_positive", direction=vec + 1.0))
        elif kind == "patch":
            hooks.append(Patch(vec, alpha=draw(st.floats(0, 1, width=32))))
        elif kind == "lambda":
            hooks.append(Lambda(lambda x, ctx: x * 0.5))
        else:
            hooks.append(Cache())
    return hooks


# The torch hook dicts a session could leave entries in (state-dict hooks are left out: models
# register those themselves in __init__, and they never run during a forward or backward).
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


@dataclass(frozen=True, eq=False)
class Attached:
    """What one object carries that a session could leave behind: each torch hook entry as
    ``(dict name, handle id, hook)``, and each instance attribute that shadows a method of its
    class as ``(name, value)`` (how sessions wrap ``scheduler.step`` or ``pipe.encode_prompt``).
    Compared by the identity of the hooks and wrappers, so swapping one hook for another of the
    same kind is a difference, as a count comparison would miss."""

    hooks: tuple[tuple[str, Any, Any], ...] = ()
    wrappers: tuple[tuple[str, Any], ...] = ()

    def differs_from(self, other: Attached) -> list[str]:
        """Readable differences from ``other`` (the earlier state); empty when the same objects."""
        out = []
        for label, now, then in (("hook", self.hooks, other.hooks), ("wrapper", self.wrappers, other.wrappers)):
            added = [e for e in now if not any(_same(e, f) for f in then)]
            removed = [e for e in then if not any(_same(e, f) for f in now)]
            out += [f"{label} added {_describe(e)}" for e in added]
            out += [f"{label} gone {_describe(e)}" for e in removed]
        return out


HookSnapshot = dict[str, Attached]


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return all(x is y or (isinstance(x, (str, int)) and x == y) for x, y in zip(a, b, strict=True))


def _describe(entry: tuple[Any, ...]) -> str:
    where, *keys, value = entry
    return where + "".join(f"[{k}]" for k in keys) + f" = {getattr(value, '__qualname__', repr(value))}"


def _wrappers(obj: Any) -> tuple[tuple[str, Any], ...]:
    """Instance attributes holding a callable where the class has a method of that name."""
    own = getattr(obj, "__dict__", {})
    cls = type(obj)
    return tuple(
        (name, value)
        for name, value in own.items()
        if callable(value) and callable(getattr(cls, name, None)) and not isinstance(value, nn.Module)
    )


def _module_hooks(module: nn.Module) -> tuple[tuple[str, Any, Any], ...]:
    return tuple((d, key, hook) for d in _HOOK_DICTS for key, hook in getattr(module, d, {}).items())


def hook_snapshot(obj: Any) -> HookSnapshot:
    """The hooks and instance wrappers on ``obj`` and everything below it, by path: every module
    of an ``nn.Module``; for a pipeline (anything with a ``components`` mapping, as diffusers
    pipelines have) the pipeline itself under ``""`` and each component under its name (modules
    with all their submodules, the scheduler and other objects for their instance wrappers)."""
    out: HookSnapshot = {}

    def visit(prefix: str, item: Any) -> None:
        if isinstance(item, nn.Module):
            for name, m in item.named_modules():
                path = f"{prefix}.{name}" if prefix and name else prefix or name
                out[path] = Attached(_module_hooks(m), _wrappers(m))
        elif item is not None:
            out[prefix] = Attached(wrappers=_wrappers(item))

    components = getattr(obj, "components", None)
    if not isinstance(obj, nn.Module) and isinstance(components, Mapping):
        out[""] = Attached(wrappers=_wrappers(obj))
        for name, component in components.items():
            visit(name, component)
    else:
        visit("", obj)
    return out


def assert_no_hooks_left(obj: Any, before: HookSnapshot | None = None) -> None:
    """Fail unless ``obj`` (a module or a pipeline) carries exactly the hooks and instance wrappers
    it carried in ``before`` (default: none at all), the same objects, not just as many."""
    now = hook_snapshot(obj)
    empty = Attached()
    left = {
        path: diff
        for path in sorted(set(now) | set(before or {}))
        if (diff := now.get(path, empty).differs_from((before or {}).get(path, empty)))
    }
    assert not left, "hooks or wrappers left behind (remove the session, or the handle that added them): " + "; ".join(
        f"{path or '<root>'}: {', '.join(diff)}" for path, diff in left.items()
    )


def assert_identity(
    model: nn.Module,
    hooks: Mapping[str, Any],
    *inputs: Any,
    call: Callable[..., Any] | None = None,
) -> None:
    """Fail unless running ``model`` with ``hooks`` attached gives a bit-identical output."""
    run = call or model
    with torch.no_grad():
        expected = run(*inputs)
        with attach(model, hooks, on_unfired="ignore"):
            got = run(*inputs)
    assert torch.equal(expected, got), f"output changed: max |diff| = {(expected - got).abs().max().item()}"


__all__ = [
    "Attached",
    "Block",
    "HookSnapshot",
    "activations",
    "assert_identity",
    "assert_no_hooks_left",
    "hook_snapshot",
    "hook_stacks",
    "module_paths",
    "module_trees",
    "site_patterns",
    "tensor_sites",
]


def tensor_sites(model: nn.Module, run: Callable[[], Any], prefix: str = "") -> list[str]:
    """Every output site of ``model``'s submodules that carries a tensor during ``run()``:
    ``path`` for tensor outputs, ``path:output.i`` for tensor elements of tuple outputs.
    Modules called more or less often than ``model`` itself are left out (a module reused within
    one call, like a shared activation, would have several values under one store key)."""
    seen: dict[str, Any] = {}
    calls: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            seen[name] = output

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    sites: list[str] = []
    for name, out in seen.items():
        if not name or calls[name] != calls.get("", 0):
            continue
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(out, torch.Tensor):
            sites.append(path)
        elif isinstance(out, tuple):
            sites += [f"{path}:output.{i}" for i, o in enumerate(out) if isinstance(o, torch.Tensor)]
    return sites
