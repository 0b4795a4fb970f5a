"""The module tree a session addresses: one module, or a pipeline's components under their names.

Literal paths are looked up through their parent path, each path once per tree (sibling sites
share their walk: attaching 20 sites of one block costs a step each), so attaching to a few named
sites of a large model never walks the whole tree; the full list of paths is built only when a
glob or an error message needs it. A tree lives for one attach: a module replaced or compiled
since the last session is seen.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_MISSING: Any = object()


class ModuleTree:
    """Modules by path. Every module a lookup passes is also checked, once per tree, for having
    been compiled with ``torch.compile`` (hooks added below it would be ignored): ``compiled``
    collects the paths of those found."""

    def __init__(self, components: dict[str, nn.Module]) -> None:
        self.components = components
        self.single = "" in components  # one model: paths start below it (else at a component)
        self._paths: dict[str, nn.Module] | None = None
        self.compiled: set[str] = set()
        self._found: dict[str, nn.Module | None] = {}  # every path looked up (or passed) so far
        for name, module in components.items():
            self._found[name] = module
            if is_compiled(module):
                self.compiled.add(name or type(module).__name__)

    def get(self, path: str) -> nn.Module | None:
        """The module at ``path``, or None: one step down from its parent's path (looked up
        the same way), so each path is walked once per tree."""
        found = self._found
        module = found.get(path, _MISSING)
        if module is not _MISSING:
            return module
        parent_path, dot, name = path.rpartition(".")
        module = None
        if dot or self.single:  # a top-level path of a pipeline is a component: in ``found`` or absent
            parent = found.get(parent_path, _MISSING)
            if parent is _MISSING:
                parent = self.get(parent_path)
            module = None if parent is None else parent._modules.get(name)
            if module is not None and is_compiled(module):
                self.compiled.add(path)
        found[path] = module
        return module

    def component_of(self, path: str) -> str:
        """The component a module path lies in (``""`` for a single model)."""
        return "" if self.single else path.partition(".")[0]

    def paths(self) -> dict[str, nn.Module]:
        """Every module path (computed once per tree)."""
        if self._paths is None:
            table: dict[str, nn.Module] = {}
            for prefix, comp in self.components.items():
                for name, mod in comp.named_modules():
                    table[f"{prefix}.{name}" if prefix and name else prefix or name] = mod
            self._paths = table
        return self._paths


def is_compiled(module: nn.Module) -> bool:
    """``torch.compile(module)`` wraps it (an ``OptimizedModule``); ``module.compile()`` sets
    ``_compiled_call_impl`` on the instance (``None`` on the class). Inlined in
    :meth:`interventions.resolution.Resolution.modules`."""
    return module._compiled_call_impl is not None or type(module).__name__ == "OptimizedModule"
