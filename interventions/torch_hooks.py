"""Adding and removing a session's torch module hooks as a set, without a handle per hook.

``register_forward_hook`` builds a ``RemovableHandle`` for every hook (two weak references, a
list of them, a counter): about 2 us a hook, half of what entering a 20-site session cost. A
session adds its hooks together and removes them together, so it writes the entries torch's
``register_*`` methods write (the hook under an id, its ``with_kwargs`` / ``always_call`` flags
under the same id), with ids drawn from torch's own counter so that they never collide with a
handle made elsewhere, and deletes exactly those entries when removed. ``tests/test_torch_hooks.py``
checks that the entries equal the ones torch's methods write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Torch hooks added to modules, removed together by :meth:`remove` (idempotent)."""

    __slots__ = ("_added", "_plain")

    def __init__(self) -> None:
        self._added: list[tuple[Any, int, tuple[Any, ...]]] = []  # (hooks dict, id, flag dicts)
        self._plain: list[tuple[Any, int]] = []  # (hooks dict, id) of hooks without flags: most of them

    def forward(self, module: nn.Module, fn: Callable[..., Any], *, always_call: bool = False) -> None:
        """``module.register_forward_hook(fn, always_call=always_call)``."""
        key = _next_id()
        module._forward_hooks[key] = fn
        flags: tuple[Any, ...] = ()
        if always_call:
            flags = (module._forward_hooks_always_called,)
            flags[0][key] = True
        self._added.append((module._forward_hooks, key, flags))

    def forward_all(self, pairs: list[tuple[nn.Module, Callable[..., Any]]]) -> None:
        """``forward(module, fn)`` for each pair in order, the ids drawn together (a session
        registers its sites' hooks at once: a call per hook was a tenth of entering one)."""
        first = RemovableHandle.next_id
        RemovableHandle.next_id = first + len(pairs)
        plain = self._plain
        for key, (module, fn) in enumerate(pairs, first):
            hooks = module._forward_hooks
            hooks[key] = fn
            plain.append((hooks, key))

    def forward_pre(
        self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False
    ) -> None:
        """``module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend)``."""
        key = _next_id()
        hooks = module._forward_pre_hooks
        hooks[key] = fn
        flags: tuple[Any, ...] = ()
        if with_kwargs:
            flags = (module._forward_pre_hooks_with_kwargs,)
            flags[0][key] = True
        if prepend:
            hooks.move_to_end(key, last=False)  # type: ignore[attr-defined]  # an OrderedDict, as in torch
        self._added.append((hooks, key, flags))

    def remove(self) -> None:
        """Remove every hook added (each under its own id: the order does not matter)."""
        for hooks, key in self._plain:
            hooks.pop(key, None)
        self._plain.clear()
        added = self._added
        while added:
            hooks, key, flags = added.pop()
            hooks.pop(key, None)
            for d in flags:
                d.pop(key, None)

    def __len__(self) -> int:
        return len(self._added) + len(self._plain)


def _next_id() -> int:
    key = RemovableHandle.next_id
    RemovableHandle.next_id = key + 1
    return key
