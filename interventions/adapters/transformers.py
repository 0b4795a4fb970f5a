"""Adapter for transformers models (decoder LMs and encoders): named groups, token layout.

Every forward of the root model is one call (during ``generate`` one call per new token), so
``When(calls=...)`` selects generation steps. There are no CFG branches.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..context import RunState
from ..groups import hidden_site, leaf, nonempty, once, outermost, walk
from .base import Adapter, Undo, call_before


def is_transformers_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and type(obj).__module__.startswith("transformers")


# attention sublayers by attribute name that attend to another sequence (the encoder's)
_CROSS_NAMES = frozenset({"crossattention", "encoder_attn", "EncDecAttention", "cross_attn", "cross_attention"})
_MLP_NAMES = frozenset({"mlp", "feed_forward", "DenseReluDense", "ffn", "block_sparse_moe"})


def _is_attention(path: str, module: nn.Module) -> bool:
    """An attention sublayer: its class ends in ``Attention``; T5's ``T5Layer*Attention``
    wrappers (norm, attention, residual) are looked through to the ``T5Attention`` inside."""
    name = type(module).__name__
    return name.endswith("Attention") and "Layer" not in name


def _is_block(module: nn.Module) -> bool:
    return any(_is_attention("", m) for m in module.modules())


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every stack of transformer layers (a ModuleList of one class of attention-bearing layers):
    one per tower, so T5 and Whisper give encoder and decoder, CLIP text and vision. A model
    without attention (Mamba, RWKV) has its longest list of one class of layers."""
    uniform = {
        p: m
        for p, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) and len({type(x) for x in m}) == 1
    }
    stacks = outermost(((p, m) for p, m in uniform.items() if _is_block(m[0])), lambda *_: True)
    if not stacks and uniform:
        stacks = [max(uniform, key=lambda p: len(uniform[p]))]
    return [(p, typing.cast(nn.ModuleList, uniform[p])) for p in stacks]


def _mlp(path: str, block: nn.Module) -> str | None:
    """The block's MLP: a module named or typed as one; BERT-style layers split it into
    ``intermediate`` and ``output`` (the latter adds the residual and applies the LayerNorm, as
    BERT does); Whisper / BART-style layers inline it, ending in ``fc2``."""
    found = outermost(
        walk(block, path),
        lambda p, m: p != path and (leaf(p) in _MLP_NAMES or type(m).__name__.endswith(("MLP", "FeedForward"))),
    )
    if found:
        return found[0]
    children = dict(block.named_children())
    if "intermediate" in children and "output" in children:
        return f"{path}.output"
    return f"{path}.fc2" if "fc2" in children else None


class TransformersAdapter(Adapter):
    name = "transformers"

    def install(self, state: RunState) -> list[Undo]:
        """Each ``generate()`` is a run: its forward calls (one per new token) count from 0."""
        if not callable(getattr(self.target, "generate", None)):
            return []
        return [call_before(self.target, "generate", state.new_run)]

    def layout(self, path: str, ndim: int) -> str | None:
        return "BNC" if ndim == 3 else None

    @once
    def groups(self) -> Mapping[str, list[str]]:
        """``blocks`` (every tower), ``self_attn`` / ``cross_attn`` / ``attn`` and ``mlp`` inside
        them, each the site of the module's hidden-state output (see :mod:`interventions.groups`)."""
        groups: dict[str, list[str]] = {"blocks": [], "self_attn": [], "cross_attn": [], "mlp": [], "attn": []}
        for stack, layers in _block_lists(self.target):
            for i, block in enumerate(layers):
                path = f"{stack}.{i}"
                groups["blocks"].append(hidden_site(path, block))
                table = dict(walk(block, path))
                for p in outermost(iter(table.items()), _is_attention):
                    m = table[p]
                    cross = leaf(p) in _CROSS_NAMES or getattr(m, "is_cross_attention", False) is True
                    site = hidden_site(p, m, unannotated=0)
                    groups["cross_attn" if cross else "self_attn"].append(site)
                    groups["attn"].append(site)
                mlp = _mlp(path, block)
                if mlp is not None:
                    groups["mlp"].append(hidden_site(mlp, table[mlp]))
        return nonempty(groups)
