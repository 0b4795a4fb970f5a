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
            hooks.append(Ablate("project", direction=vec + 1.0))
        elif kind == "patch":
            hooks.append(Patch(vec, alpha=draw(st.floats(0, 1, width=32))))
        elif kind == "lambda":
            hooks.append(Lambda(lambda x, ctx: x * 0.5))
        else:
            hooks.append(Cache())
    return hooks


def hook_snapshot(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Counts of every kind of torch hook on every module, for before/after comparison."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {name: tuple(len(getattr(m, k, {})) for k in kinds) for name, m in model.named_modules()}


def assert_no_hooks_left(model: nn.Module, before: dict[str, tuple[int, ...]] | None = None) -> None:
    """Fail if any module carries more torch hooks than in ``before`` (default: none at all)."""
    now = hook_snapshot(model)
    base = before or {name: (0, 0, 0, 0) for name in now}
    left = {name: counts for name, counts in now.items() if counts != base.get(name, (0, 0, 0, 0))}
    assert not left, f"hooks left behind (forward, pre, backward, backward-pre counts): {left}"


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
    "Block",
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
