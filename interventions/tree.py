"""The module tree a session addresses: one module, or a pipeline's components under their names.

Literal paths are looked up along the path (cost: its depth), so attaching to a few named sites
of a large model never walks the whole tree; the full list of paths is built only when a glob or
an error message needs it.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


class ModuleTree:
    def __init__(self, components: dict[str, nn.Module]) -> None:
        self.components = components
        self._paths: dict[str, nn.Module] | None = None

    def get(self, path: str) -> nn.Module | None:
        """The module at ``path``, or None."""
        chain = list(self.chain(path))
        return chain[-1] if chain and len(chain) == self._depth(path) else None

    def chain(self, path: str) -> Iterator[nn.Module]:
        """The modules from the component root down to ``path`` (stops where the path breaks)."""
        if "" in self.components:
            module: nn.Module | None = self.components[""]
            parts = path.split(".") if path else []
        else:
            head, _, rest = path.partition(".")
            module = self.components.get(head)
            parts = rest.split(".") if rest else []
        if module is None:
            return
        yield module
        for part in parts:
            module = module._modules.get(part)
            if module is None:
                return
            yield module

    def component_of(self, path: str) -> str:
        """The component a module path lies in (``""`` for a single model)."""
        return "" if "" in self.components else path.partition(".")[0]

    def _depth(self, path: str) -> int:
        n = len(path.split(".")) if path else 0
        return n + 1 if "" in self.components else n

    def paths(self) -> dict[str, nn.Module]:
        """Every module path (computed once per tree)."""
        if self._paths is None:
            table: dict[str, nn.Module] = {}
            for prefix, comp in self.components.items():
                for name, mod in comp.named_modules():
                    table[f"{prefix}.{name}" if prefix and name else prefix or name] = mod
            self._paths = table
        return self._paths
