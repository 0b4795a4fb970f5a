"""Literal sites parsed and walked once, remembered across sessions as the links of their walk.

Finding a module path costs a parse, then a lookup per segment with the ``torch.compile`` check
of every module passed; a loop that attaches the same sites again and again (a patching sweep, a
benchmark, a training step with a cache) would pay it each time. A :class:`Resolution` keeps, for
one set of literal site patterns, the parsed sites and the links of their walk (a parent's index,
a child's name). Using it again walks those links on the live model in one flat loop: a layer
replaced, wrapped or compiled in between is what the new session finds, exactly as a fresh walk
would find it, and a link that no longer exists sends the session back to the full walk (and its
error). Nothing but names is kept: remembering a model never keeps it alive.

>>> import torch
>>> from interventions import attach, Cache
>>> model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2)))
>>> attach(model, {"0.0": Cache()}).remove()
>>> recall(model, ("0.0",)).modules({"": model})[-1] is model[0][0]
True
>>> model[0][0] = torch.nn.Linear(2, 2)  # replaced: the next session hooks the new layer
>>> recall(model, ("0.0",)).modules({"": model})[-1] is model[0][0]
True
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Sequence

from torch import nn

from .sites import Site

_PER_TARGET = 32  # pattern sets remembered per model or pipeline (the oldest is dropped)
_writing = threading.Lock()
_remembered: weakref.WeakKeyDictionary[object, dict[tuple[str, ...], Resolution]] = weakref.WeakKeyDictionary()


class Resolution:
    """How some literal sites were found from the components' roots: one link per module passed."""

    __slots__ = ("_components", "_links", "sites")

    def __init__(self, components: Sequence[str], sites: Sequence[Site], single: bool) -> None:
        """``components``: the tree's component names in order (``[""]`` for a single model);
        ``sites``: the one site of each pattern, in order; ``single``: whether paths start below one
        model (else a path's first segment is a component). ``self.sites``: each site with the index
        of its module in what :meth:`modules` returns."""
        self._components = tuple(components)
        index = {name: i for i, name in enumerate(components)}
        self._links: list[tuple[int, str]] = []
        self.sites = [(site, self._index(site.module, index, single)) for site in sites]

    def _index(self, path: str, index: dict[str, int], single: bool) -> int:
        """The index of ``path``'s module among the components and links, adding its missing links."""
        i = index.get(path)
        if i is not None:
            return i
        parent, dot, name = path.rpartition(".")
        if not dot and not single:
            raise ValueError(f"{path!r} is not below a component")  # found sites always are
        self._links.append((self._index(parent, index, single), name))
        i = index[path] = len(index)
        return i

    def modules(self, components: dict[str, nn.Module]) -> list[nn.Module] | None:
        """Every module on the remembered links, read from the live ``components``; None where a
        link is gone or passes a module compiled since (the caller then walks afresh and reports)."""
        if len(components) != len(self._components):
            return None
        out: list[nn.Module] = []
        for name in self._components:
            module = components.get(name)
            if module is None:
                return None
            out.append(module)
        optimized = _optimized_module_type()
        for parent, name in self._links:
            child = out[parent]._modules.get(name)
            # tree.is_compiled, inlined: a call per link was a quarter of this walk
            if child is None or child._compiled_call_impl is not None or type(child) is optimized:
                return None
            out.append(child)
        return out


def _optimized_module_type() -> type | None:
    """The class ``torch.compile(module)`` returns, or None while dynamo is not imported (then no
    module can be one)."""
    return getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)


def recall(target: object, patterns: tuple[str, ...]) -> Resolution | None:
    """The resolution remembered for ``patterns`` on ``target``, or None."""
    try:
        return _remembered.get(target, {}).get(patterns)
    except TypeError:  # a target that cannot be weakly referenced or hashed: nothing is remembered
        return None


def remember(target: object, patterns: tuple[str, ...], resolution: Resolution) -> None:
    """Keep ``resolution`` for ``patterns`` on ``target`` (the oldest of many pattern sets dropped)."""
    with _writing:  # sessions attached from several threads at once (each its own)
        try:
            by_patterns = _remembered.setdefault(target, {})
        except TypeError:
            return
        if len(by_patterns) >= _PER_TARGET:
            del by_patterns[next(iter(by_patterns))]
        by_patterns[patterns] = resolution
