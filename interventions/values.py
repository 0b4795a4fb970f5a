"""Reading and replacing the element of a module's output (or argument) that a site's key names.

A field name must work whichever form the model returned: diffusers and transformers models return
an output object (``UNet2DConditionOutput``) or, called with ``return_dict=False`` as pipelines
do, a plain tuple. On a plain tuple a field is looked up by its position among the fields of the
output class that the module's ``forward`` declares it returns, and only when that position is
certain: every field present (transformers drops the fields that are None from its tuples, so
positions then shift). Otherwise the site is refused, naming the index to use.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import InterventionError
from .groups import hidden_index
from .sites import Site

Key = tuple[int | str, ...]


def get(value: Any, key: Key, site: str, module: nn.Module | None = None) -> Any:
    """The element of ``value`` at ``key``; ``module`` returned ``value`` (None for arguments)."""
    for depth, k in enumerate(key):
        if isinstance(value, torch.Tensor):
            whole = Site.parse(site)
            fix = Site(whole.module, whole.direction, whole.key[: len(whole.key) - len(key) + depth])
            raise InterventionError(
                f"site {site!r}: the value is already a tensor, with no element {k!r}; use the site {str(fix)!r}"
            )
        if depth == 0 and isinstance(k, str) and type(value) is tuple:
            k = _position(value, k, site, module)
        try:
            if isinstance(k, int) or isinstance(value, Mapping):
                value = value[k]
            else:
                value = getattr(value, k)
        except (IndexError, KeyError, AttributeError, TypeError):
            raise InterventionError(
                f"site {site!r}: cannot take {k!r} from a {type(value).__name__}{_contents(value)}"
            ) from None
    return value


def put(value: Any, key: Key, new: Any, site: str, module: nn.Module | None = None) -> Any:
    """``value`` with the element at ``key`` replaced by ``new`` (tuples rebuilt, objects set)."""
    if not key:
        return new
    if isinstance(key[0], str) and type(value) is tuple:
        key = (_position(value, key[0], site, module), *key[1:])
    return _put(value, key, new)


def _put(value: Any, key: Key, new: Any) -> Any:
    if not key:
        return new
    k, rest = key[0], key[1:]
    if isinstance(value, tuple) and isinstance(k, int):
        items = list(value)
        items[k] = _put(items[k], rest, new)
        return type(value)(items) if type(value) is tuple else type(value)(*items)
    if isinstance(value, list) and isinstance(k, int):
        items = list(value)
        items[k] = _put(items[k], rest, new)
        return items
    if isinstance(value, Mapping) and not hasattr(value, "__dataclass_fields__"):
        return {**value, k: _put(value[k], rest, new)}
    if isinstance(value, Mapping):  # diffusers/transformers output objects: set the field
        k = list(value.keys())[k] if isinstance(k, int) else k
        value[k] = _put(value[k], rest, new)  # type: ignore[index]
        return value
    setattr(value, k, _put(getattr(value, k), rest, new))  # type: ignore[arg-type]
    return value


def _position(value: tuple[Any, ...], k: str, site: str, module: nn.Module | None) -> int | str:
    """The position of field ``k`` in a plain tuple (see the module docstring); ``k`` itself for
    an argument (no output class to read)."""
    if module is None:
        return k
    cls = type(module)
    if cls not in _FIELDS:
        _FIELDS[cls] = output_fields(cls)
    fields = _FIELDS[cls]
    if k in fields and len(fields) == len(value):
        return fields.index(k)
    items = ", ".join(f"{i}: {_describe(v)}" for i, v in enumerate(value))
    index = _likely_index(value, fields.index(k) if k in fields else None, len(fields) - len(value))
    why = (
        f"its output class has the fields {list(fields)}, and {len(fields) - len(value)} of them were left out"
        if k in fields
        else f"its output class has no field {k!r}: {list(fields)}"
        if fields
        else "it declares no output class with named fields"
    )
    raise InterventionError(
        f"site {site!r}: {type(module).__name__} returned a plain tuple ({items}), not an object with "
        f"the field {k!r}, and the field's position is not certain ({why}). "
        f"Name the element by its index instead, e.g. '{site.partition(':')[0]}:output.{index}'"
    )


_FIELDS: dict[type[nn.Module], tuple[str, ...]] = {}  # resolving type hints costs: once per class


def output_fields(cls: type[nn.Module]) -> tuple[str, ...]:
    """The fields, in order, of the output dataclass that ``cls.forward`` is annotated to return
    (``UNet2DConditionOutput | tuple`` -> ``("sample",)``); empty when it names none."""
    try:
        hints = typing.get_type_hints(cls.forward)
    except Exception:  # unresolvable annotations (names imported only for type checking)
        return ()
    for option in (hints.get("return"), *typing.get_args(hints.get("return"))):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return tuple(f.name for f in dataclasses.fields(option))
    return ()


def not_a_tensor(site: Site, module: nn.Module, value: Any) -> InterventionError:
    """The error for a site that carries no tensor, naming a site that does: the module's hidden
    state where its output convention is known (an SD3 block's ``:output.1``), else the first
    tensor element."""
    preferred = hidden_index(module) if site.direction == "output" and not site.key else None
    found = _tensor_key(value, preferred)
    if found is None:
        return InterventionError(f"site {str(site)!r} carries a {type(value).__name__} with no tensor in it")
    fix = Site(site.module, site.direction, (*site.key, found))
    return InterventionError(
        f"site {str(site)!r} carries a {type(value).__name__}, not a tensor; pick a tensor element, e.g. {str(fix)!r}"
    )


def _tensor_key(value: Any, preferred: int | None) -> int | str | None:
    if isinstance(value, (tuple, list)):
        if preferred is not None and preferred < len(value) and isinstance(value[preferred], torch.Tensor):
            return preferred
        return next((i for i, v in enumerate(value) if isinstance(v, torch.Tensor)), None)
    if isinstance(value, Mapping):
        return next((k for k, v in value.items() if isinstance(v, torch.Tensor)), None)
    return None


def _likely_index(value: tuple[Any, ...], field: int | None, dropped: int) -> int:
    """For the error message: the first tensor among the positions the field can have moved to
    (each field left out before it moves it one place down), else the first tensor."""
    tensors = [i for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
    if field is not None:
        near = [i for i in tensors if field - dropped <= i <= field]
        tensors = near or tensors
    return tensors[0] if tensors else 0


def _contents(value: Any) -> str:
    """What can be taken from a value, for an error message."""
    if isinstance(value, Mapping):
        return f" (its keys: {list(value.keys())})"
    if isinstance(value, (tuple, list)):
        return f" of {len(value)} elements ({', '.join(f'{i}: {_describe(v)}' for i, v in enumerate(value))})"
    return ""


def _describe(v: Any) -> str:
    return f"Tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
