"""HookSet writes the entries torch's own ``register_forward_hook`` / ``register_forward_pre_hook``
write (the hook under an id, its flags under the same id, prepend order) and removes exactly them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interventions.torch_hooks import HookSet

DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def _shape(module: nn.Module) -> dict[str, list[tuple[int, object]]]:
    """Each hook dict as (position of the id among all ids, value), so two modules compare equal
    when their entries match though their ids differ."""
    ids = sorted({k for d in DICTS for k in getattr(module, d)})
    return {d: [(ids.index(k), v) for k, v in getattr(module, d).items()] for d in DICTS}


def _pre(m: nn.Module, args: object, kwargs: object = None) -> None:
    return None


def _post(m: nn.Module, args: object, out: object) -> None:
    return None


@pytest.mark.parametrize("always_call", [False, True])
@pytest.mark.parametrize(("with_kwargs", "prepend"), [(False, False), (True, False), (False, True), (True, True)])
def test_entries_equal_torchs(always_call: bool, with_kwargs: bool, prepend: bool) -> None:
    by_torch, by_set = nn.Linear(2, 2), nn.Linear(2, 2)
    for m in (by_torch, by_set):  # an earlier hook, so that prepend has something to go before
        m.register_forward_pre_hook(_pre)
    by_torch.register_forward_hook(_post, always_call=always_call)
    by_torch.register_forward_pre_hook(_pre, with_kwargs=with_kwargs, prepend=prepend)
    hooks = HookSet()
    hooks.forward(by_set, _post, always_call=always_call)
    hooks.forward_pre(by_set, _pre, with_kwargs=with_kwargs, prepend=prepend)
    assert _shape(by_set) == _shape(by_torch)
    assert len(hooks) == 2


def test_remove_takes_only_its_own_entries_and_hooks_run() -> None:
    m = nn.Linear(2, 2)
    seen: list[str] = []
    outside = m.register_forward_hook(lambda mod, a, o: seen.append("outside"))
    hooks = HookSet()
    hooks.forward_pre(m, lambda mod, a, kw: seen.append("pre") or None, with_kwargs=True, prepend=True)
    hooks.forward(m, lambda mod, a, o: seen.append("post") or o * 0)
    assert torch.equal(m(torch.ones(1, 2)), torch.zeros(1, 2))
    assert seen == ["pre", "outside", "post"]
    hooks.remove()
    hooks.remove()  # idempotent
    assert len(hooks) == 0 and list(m._forward_hooks) == [outside.id]
    assert not m._forward_pre_hooks and not m._forward_pre_hooks_with_kwargs
    outside.remove()
    assert all(not getattr(m, d) for d in DICTS)


def test_forward_all_writes_what_forward_writes_and_draws_fresh_ids():
    from torch.utils.hooks import RemovableHandle

    one, many = [nn.Linear(2, 2) for _ in range(3)], [nn.Linear(2, 2) for _ in range(3)]
    by_one = HookSet()
    for m in one:
        by_one.forward(m, _post)
    start = RemovableHandle.next_id
    by_all = HookSet()
    by_all.forward_all([(m, _post) for m in many])
    assert [_shape(m) for m in many] == [_shape(m) for m in one]
    assert [next(iter(m._forward_hooks)) for m in many] == [start, start + 1, start + 2]
    later = many[0].register_forward_hook(_post)  # a handle made afterwards: its id is new
    assert later.id == start + 3
    later.remove()
    by_all.remove()
    assert not any(m._forward_hooks for m in many)
