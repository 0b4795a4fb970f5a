"""Named site groups: the modules a group names, and the element of their output that is the
hidden state.

Many modules return more than their hidden state: transformers attention returns ``(hidden,
weights)``, a UNet down block ``(hidden, res_samples)``, joint (MMDiT) attention ``(hidden,
context)`` and SD3 / Flux blocks ``(context, hidden)``. A group entry is therefore the concrete
site of that element (``transformer.h.3.attn:output.0``), read once per attach from the module
classes (the return annotation of ``forward``, or the conventions below where it is missing or
wrong), never guessed from a call. Entries are literal sites, so the session looks each one up
directly instead of matching a pattern against every module path.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from torch import nn

Groups = dict[str, list[str]]
A = TypeVar("A")

# known conventions, read before the annotation: SD3 / Flux blocks return (context, hidden); T5's
# unannotated layers return (hidden, position_bias, ...) (UMT5's return the tensor)
_HIDDEN_AT: dict[str, int] = {
    "JointTransformerBlock": 1,
    "FluxTransformerBlock": 1,
    "FluxSingleTransformerBlock": 1,
    "T5Block": 0,
    "MT5Block": 0,
    "LongT5Block": 0,
    "SwitchTransformersBlock": 0,
}
_TUPLE_TEXT = re.compile(r"(typing\.)?[Tt]uple\[")


def hidden_site(path: str, module: nn.Module, unannotated: int | None = None) -> str:
    """The site of ``module``'s hidden-state output: ``path``, or ``path:output.<i>`` when the
    module returns a tuple (see :func:`hidden_index`)."""
    index = hidden_index(module, unannotated)
    return path if index is None else f"{path}:output.{index}"


def hidden_index(module: nn.Module, unannotated: int | None = None) -> int | None:
    """Position of the hidden state in the module's output tuple; None when it returns a tensor.

    Read from the return annotation of ``forward``; ``unannotated`` is the family's convention
    where there is none (transformers attention modules return ``(hidden, weights, ...)``). Attention that also queries the context stream (it has
    ``add_q_proj``: SD3 / Flux joint attention) returns ``(hidden, context)`` although its
    ``forward`` is annotated as a tensor; attention that only adds context keys and values
    (UnCLIP, Wan image) returns the tensor.
    """
    if module._modules.get("add_q_proj") is not None:  # a submodule: no slow __getattr__ miss
        return 0
    key = (type(module), unannotated)
    if key not in _CLASS_INDEX:
        _CLASS_INDEX[key] = _class_index(*key)
    return _CLASS_INDEX[key]


# a signature costs ~50 us: read once per class
_CLASS_INDEX: dict[tuple[type[nn.Module], int | None], int | None] = {}


def _class_index(cls: type[nn.Module], unannotated: int | None) -> int | None:
    for base in cls.__mro__:
        if base.__name__ in _HIDDEN_AT:
            return _HIDDEN_AT[base.__name__]
    try:
        ann = inspect.signature(cls.forward).return_annotation
    except (TypeError, ValueError):
        return unannotated
    if ann is inspect.Signature.empty:
        return unannotated
    if isinstance(ann, str):
        return 0 if _TUPLE_TEXT.match(ann) else None
    return 0 if ann is tuple or typing.get_origin(ann) is tuple else None


def with_suffix(site: str, suffix: str) -> str:
    """A group entry with the user's own direction and key (``@self_attn:input.0``)."""
    return f"{site.partition(':')[0]}:{suffix}" if suffix else site


def walk(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` under a path prefix."""
    for name, module in root.named_modules():
        yield (f"{prefix}.{name}" if prefix and name else prefix or name), module


def outermost(pairs: Iterator[tuple[str, nn.Module]], wanted: Callable[[str, nn.Module], bool]) -> list[str]:
    """Paths of the wanted modules that have no wanted ancestor (``BertSelfAttention`` inside
    ``BertAttention`` is not a second attention)."""
    found: list[str] = []
    for path, module in pairs:
        if found and path.startswith(found[-1] + "."):
            continue
        if wanted(path, module):
            found.append(path)
    return found


def once(method: Callable[[A], Mapping[str, list[str]]]) -> Callable[[A], Mapping[str, list[str]]]:
    """Compute an adapter's groups on first use only: an adapter lives for one attach, and a
    session asks once per ``@`` pattern."""

    @functools.wraps(method)
    def cached(self: A) -> Mapping[str, list[str]]:
        memo = vars(self)
        if "_groups" not in memo:
            memo["_groups"] = method(self)
        return typing.cast(Mapping[str, list[str]], memo["_groups"])

    return cached


def nonempty(groups: Mapping[str, list[str]]) -> Groups:
    """Only the groups that name at least one site, entries deduplicated in order."""
    return {name: list(dict.fromkeys(sites)) for name, sites in groups.items() if sites}


def leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def class_names(module: nn.Module) -> frozenset[str]:
    """The names of the module's classes (its own and its bases), once per class."""
    cls = type(module)
    if cls not in _CLASS_NAMES:
        _CLASS_NAMES[cls] = frozenset(c.__name__ for c in cls.__mro__)
    return _CLASS_NAMES[cls]


_CLASS_NAMES: dict[type[nn.Module], frozenset[str]] = {}
