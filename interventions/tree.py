"""The module tree a session addresses: one module, or a pipeline's components under their names.

Literal paths are looked up along the path (cost: its depth), so attaching to a few named sites
of a large model never walks the whole tree; the full list of paths is built only when a glob or
an error message needs it.
"""

from __future__ import annotations

from torch import nn


class ModuleTree:
    """Modules by path. Every module a lookup passes is also checked, once per tree, for having
    been compiled with ``torch.compile`` (hooks added below it would be ignored): ``compiled``
    collects the paths of those found."""

    def __init__(self, components: dict[str, nn.Module]) -> None:
        self.components = components
        self._single = "" in components
        self._paths: dict[str, nn.Module] | None = None
        self.checked: set[int] = set()
        self.compiled: set[str] = set()

    def get(self, path: str) -> nn.Module | None:
        """The module at ``path``, or None (a tight walk down ``_modules``: this runs per site on
        every attach)."""
        if self._single:
            module: nn.Module | None = self.components[""]
            parts = path.split(".") if path else []
            prefix: list[str] = []
        else:
            head, _, rest = path.partition(".")
            module = self.components.get(head)
            parts = rest.split(".") if rest else []
            prefix = [head]
        if module is None:
            return None
        checked = self.checked
        if id(module) not in checked:
            self._check(module, prefix)
        for i, part in enumerate(parts):
            module = module._modules.get(part)  # type: ignore[union-attr]
            if module is None:
                return None
            if id(module) not in checked:
                self._check(module, prefix + parts[: i + 1])
        return module

    def _check(self, module: nn.Module, path: list[str]) -> None:
        self.checked.add(id(module))
        if _is_compiled(module):
            self.compiled.add(".".join(path) or type(module).__name__)

    def component_of(self, path: str) -> str:
        """The component a module path lies in (``""`` for a single model)."""
        return "" if self._single else path.partition(".")[0]

    def paths(self) -> dict[str, nn.Module]:
        """Every module path (computed once per tree)."""
        if self._paths is None:
            table: dict[str, nn.Module] = {}
            for prefix, comp in self.components.items():
                for name, mod in comp.named_modules():
                    table[f"{prefix}.{name}" if prefix and name else prefix or name] = mod
            self._paths = table
        return self._paths


def _is_compiled(module: nn.Module) -> bool:
    """``torch.compile(module)`` wraps it (an ``OptimizedModule``); ``module.compile()`` sets
    ``_compiled_call_impl`` on the instance."""
    return module.__dict__.get("_compiled_call_impl") is not None or type(module).__name__ == "OptimizedModule"
