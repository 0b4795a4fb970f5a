"""Attention heads and attention patterns as sites, on transformers models and diffusers ``Attention``.

Per-head values (TransformerLens' ``hook_z``) are the input of the attention's output projection,
``(batch, tokens, heads * head_dim)``: :func:`head_sites` names that site for every attention
module with its head count, and ``Patch(..., heads=[3], n_heads=4)`` / ``Ablate(..., heads=...)``
act on those heads' slices only (:func:`head_mask`).

Attention probabilities (``hook_pattern``) exist only where attention is computed eagerly: fused
SDPA / flash kernels never form them. :func:`pattern_sites` names them, ``(batch, heads, queries,
keys)``, and refuses with the fix when they cannot be had:

- transformers: ``with eager_attention(model):`` registers an attention function (transformers'
  ``AttentionInterface``) that computes ``softmax(q k^T * scaling + mask)`` as the eager path does
  and passes it through an identity module added to each attention (``<attn>.probs``), switches
  the model to it, and puts the model's own implementation back on exit. (The attention module's
  second output under ``attn_implementation="eager"`` is returned after use: patching it would
  change nothing, so it is not offered as a pattern site.)
- diffusers ``Attention``: ``with eager_attention(unet):`` swaps in :class:`ProbsProcessor`, which
  computes ``softmax(q k^T * scale)`` explicitly and passes it through an identity module
  (``<attn>.processor.probs``), and puts the original processors back on exit. Cross-attention
  maps per text token are ``probs[..., token]``.

Either way the probabilities feed the attention: they can be cached, patched or edited.

>>> import torch
>>> from interventions import Ablate, attach
>>> out_proj = torch.nn.Sequential(torch.nn.Linear(8, 4))  # stands in for an attention's output projection
>>> z = torch.randn(2, 3, 8)  # (batch, tokens, 2 heads x 4)
>>> with attach(out_proj, {"0:input": Ablate(heads=[1], n_heads=2)}):  # zero head 1
...     y = out_proj(z)
>>> torch.allclose(y, z[..., :4] @ out_proj[0].weight[:, :4].T + out_proj[0].bias, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import InterventionError

Tensor = torch.Tensor

# the output projection of an attention module, by attribute name, in the families we know
_OUT_PROJ = ("o_proj", "c_proj", "out_proj", "dense", "wo", "to_out", "proj")


class PatternsUnavailableError(InterventionError, ValueError):
    """Attention probabilities were asked for where the model never forms them (fused attention)."""


@dataclass(frozen=True)
class HeadSite:
    """One attention module's per-head site: ``site`` carries ``(B, N, n_heads * head_dim)``."""

    attention: str
    site: str
    n_heads: int
    head_dim: int


def head_mask(x: Tensor, heads: Sequence[int] | Tensor, n_heads: int | None, site: str = "") -> Tensor:
    """A bool mask broadcastable to ``x``, true on the selected heads.

    The head axis is axis 1 of a 4-D ``(B, heads, queries, keys)`` pattern when ``n_heads`` is
    None; with ``n_heads`` it is the last axis split into ``n_heads`` equal slices (per-head values).
    """
    idx = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
    if n_heads is None:
        if x.ndim != 4:
            raise InterventionError(
                f"heads= at site {site!r}: the tensor {tuple(x.shape)} has no head axis; for per-head values "
                "(the output projection's input) pass n_heads=<the model's head count> "
                "(interventions.heads.head_sites(model) lists each site with its count)"
            )
        count, shape = x.shape[1], [1, x.shape[1], 1, 1]
    else:
        width = x.shape[-1]
        if n_heads <= 0 or width % n_heads:
            raise InterventionError(
                f"heads= at site {site!r}: {width} features do not split into n_heads={n_heads} heads"
            )
        count, shape = n_heads, [1] * (x.ndim - 1) + [width]
    bad = [int(i) for i in idx if not -count <= int(i) < count]
    if bad:
        raise InterventionError(f"heads= at site {site!r}: head(s) {bad} out of range for {count} heads")
    chosen = torch.zeros(count, dtype=torch.bool)
    chosen[idx] = True
    if n_heads is not None:
        chosen = chosen.repeat_interleave(x.shape[-1] // n_heads)
    return chosen.reshape(shape).to(x.device)


def _is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith("Attention") and "Layer" not in name and "Processor" not in name


def _attentions(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Outermost attention modules (a module whose class ends in ``Attention``), in order."""
    inside: list[str] = []
    for path, m in model.named_modules():
        if _is_attention(m) and not any(path.startswith(p + ".") for p in inside):
            inside.append(path)
            yield path, m


def _out_proj(path: str, m: nn.Module) -> tuple[str, nn.Module] | None:
    for name in _OUT_PROJ:
        sub = m._modules.get(name)
        if isinstance(sub, (nn.ModuleList, nn.Sequential)) and len(sub):
            return f"{path}.{name}.0", sub[0]
        if sub is not None:
            return f"{path}.{name}", sub
    return None


def _in_width(proj: nn.Module) -> int | None:
    if isinstance(proj, nn.Linear):
        return proj.in_features
    weight = getattr(proj, "weight", None)  # GPT-2's Conv1D stores (in, out)
    return int(weight.shape[0]) if isinstance(weight, Tensor) and type(proj).__name__ == "Conv1D" else None


def _head_count(m: nn.Module, width: int) -> int | None:
    for name in ("num_heads", "heads", "n_heads", "num_attention_heads"):
        n = getattr(m, name, None)
        if isinstance(n, int) and n > 0:
            return n
    head_dim = getattr(m, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0 and width % head_dim == 0:
        return width // head_dim
    config = getattr(m, "config", None)
    n = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return n if isinstance(n, int) else None


def head_sites(model: nn.Module, prefix: str = "") -> list[HeadSite]:
    """The per-head site of every attention module: the input of its output projection
    (``transformer.h.0.attn.c_proj:input.0``, ``model.layers.0.self_attn.o_proj:input.0``,
    ``...attn2.to_out.0:input.0``). ``prefix`` is prepended (``"unet."`` for a pipeline's UNet)."""
    out = []
    for path, m in _attentions(model):
        found = _out_proj(path, m)
        if found is None:
            continue
        proj_path, proj = found
        width = _in_width(proj)
        n = _head_count(m, width) if width else None
        if not width or not n or width % n:
            continue
        out.append(HeadSite(prefix + path, f"{prefix}{proj_path}:input.0", n, width // n))
    if not out:
        raise InterventionError(
            f"no attention module with an output projection ({', '.join(_OUT_PROJ)}) found in "
            f"{type(model).__name__}; name the site of the projection's input yourself ('<path>:input.0')"
        )
    return out


def pattern_sites(model: nn.Module, prefix: str = "") -> list[str]:
    """Sites of the attention probabilities ``(B, heads, queries, keys)``, one per attention module,
    inside :func:`eager_attention` (where they feed the attention, so a patch there changes it);
    refused (:class:`PatternsUnavailableError`) with the fix elsewhere."""
    if type(model).__module__.startswith("transformers"):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if impl != _TRANSFORMERS_IMPL:
            raise PatternsUnavailableError(
                f"{type(model).__name__} runs attention with {impl!r}, which forms no attention probabilities that "
                "a hook could change (fused kernels never form them; the eager path returns them after use); run "
                "the model inside `with interventions.heads.eager_attention(model):`"
            )
        return [f"{prefix}{p}.probs" for p, _ in _attentions(model)]
    sites: list[str] = []
    plain: list[str] = []
    other: list[str] = []
    for path, m in _diffusers_attentions(model):
        name = type(m.processor).__name__
        if isinstance(m.processor, ProbsProcessor):
            sites.append(f"{prefix}{path}.processor.probs")
        else:
            (plain if name in _PLAIN_PROCESSORS else other).append(f"{path} ({name})")
    if other:
        raise PatternsUnavailableError(
            f"{len(other)} attention module(s) run a processor that never forms the probabilities and that "
            f"ProbsProcessor cannot stand in for (it reproduces diffusers' plain AttnProcessor only), e.g. {other[:2]}; "
            "attention patterns are not available there (per-head values are: head_sites(model))"
        )
    if plain:
        raise PatternsUnavailableError(
            f"{len(plain)} attention module(s) run fused attention, which never forms the probabilities, e.g. "
            f"{plain[:2]}; run the model inside `with interventions.heads.eager_attention(model):`"
        )
    if not sites:
        found = sorted({type(m).__name__ for m in model.modules() if _is_attention(m)})
        raise PatternsUnavailableError(
            f"no transformers model or diffusers Attention module in {type(model).__name__}"
            + (
                f": its attention ({', '.join(found)}) computes through a fused kernel without probabilities"
                if found
                else ""
            )
            + "; attention patterns are not available there (per-head values may be: head_sites(model))"
        )
    return sites


# -- diffusers ------------------------------------------------------------------------------------
def _diffusers_attentions(model: nn.Module) -> list[tuple[str, Any]]:
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return []
    return [(p, m) for p, m in model.named_modules() if isinstance(m, Attention)]


class _Probs(nn.Module):
    """Identity: the site where attention probabilities ``(B, heads, queries, keys)`` flow."""

    def forward(self, probs: Tensor) -> Tensor:
        return probs


class ProbsProcessor(nn.Module):
    """diffusers' eager ``AttnProcessor`` with the probabilities passed through ``self.probs``.

    An ``nn.Module``, so that diffusers registers it as the attention's ``processor`` submodule
    and ``<attn>.processor.probs`` is a site like any other (no parameters: state dicts unchanged).
    """

    def __init__(self) -> None:
        super().__init__()
        self.probs = _Probs()

    def forward(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq = context.shape[:2]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, Nq, Nk)
        probs = self.probs(probs.unflatten(0, (-1, attn.heads))).flatten(0, 1)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


_PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "AttnProcessorNPU", "FusedAttnProcessor2_0")


# -- transformers ---------------------------------------------------------------------------------
_TRANSFORMERS_IMPL = "interventions_eager"


def _eager_with_probs(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """transformers' eager attention (GPT-2's and Llama's ``eager_attention_forward``, grouped
    key/value heads repeated), the probabilities passed through ``module.probs``."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = module.probs(torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype))  # type: ignore[operator]
    probs_used = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs_used, value).transpose(1, 2).contiguous(), probs


def _register_transformers_impl() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(_TRANSFORMERS_IMPL, _eager_with_probs)
    AttentionMaskInterface.register(_TRANSFORMERS_IMPL, AttentionMaskInterface._global_mapping["eager"])  # type: ignore[arg-type]


@contextmanager
def _transformers_eager(model: nn.Module, only: Sequence[str] | None, prefix: str) -> Iterator[list[str]]:
    if only is not None:
        raise InterventionError(
            "eager_attention(only=...) on a transformers model: its attention implementation is set for the whole "
            "model, so every attention module gets a probs site; drop only= and pick sites from what it yields"
        )
    chosen = list(_attentions(model))
    if not chosen:
        raise InterventionError(f"eager_attention: no attention module in {type(model).__name__}")
    clash = [p for p, m in chosen if "probs" in m._modules]
    if clash:
        raise InterventionError(f"eager_attention: {clash[:2]} already have a submodule named 'probs'")
    set_impl = getattr(model, "set_attn_implementation", None)
    if set_impl is None:
        raise InterventionError(f"eager_attention: {type(model).__name__} cannot switch its attention implementation")
    _register_transformers_impl()
    previous = model.config._attn_implementation  # type: ignore[union-attr]
    try:
        for _, m in chosen:
            m.add_module("probs", _Probs())
        set_impl(_TRANSFORMERS_IMPL)
        yield [f"{prefix}{p}.probs" for p, _ in chosen]
    finally:
        if model.config._attn_implementation != previous:  # type: ignore[union-attr]
            set_impl(previous)
        for _, m in chosen:
            m._modules.pop("probs", None)


@contextmanager
def eager_attention(model: nn.Module, only: Sequence[str] | None = None, prefix: str = "") -> Iterator[list[str]]:
    """Form attention probabilities where a hook can see and change them, inside the block; yields
    the probability sites. A transformers model runs an eager attention function that passes them
    through ``<attn>.probs``; diffusers ``Attention`` modules run :class:`ProbsProcessor`. ``only``: attention paths (or path substrings, e.g. ``"attn2"`` for
    cross-attention) to switch, default all; ``prefix`` is prepended to the sites (``"unet."`` to
    attach to the pipeline). The original processors are restored on exit, also
    on an exception. Attach sessions *inside* the block (the sites exist only there).

    Refused by name: an attention running a processor other than diffusers' plain one (IP-Adapter,
    LoRA, custom), whose computation this one would silently replace.
    """
    if type(model).__module__.startswith("transformers"):
        with _transformers_eager(model, only, prefix) as sites:
            yield sites
        return
    chosen = [(p, m) for p, m in _diffusers_attentions(model) if only is None or any(o in p for o in only)]
    if not chosen:
        found = sorted({type(m).__name__ for m in model.modules() if _is_attention(m)})
        raise InterventionError(
            f"eager_attention: no diffusers Attention module in {type(model).__name__}"
            + (f" matches {list(only)}" if only else "")
            + (f" (its attention classes: {', '.join(found)}, not supported)" if found and not only else "")
        )
    other = [
        f"{p}: {type(m.processor).__name__}" for p, m in chosen if type(m.processor).__name__ not in _PLAIN_PROCESSORS
    ]
    if other:
        raise InterventionError(
            f"eager_attention: {len(other)} attention module(s) run a processor other than diffusers' plain one "
            f"({other[:2]}: joint / IP-Adapter / LoRA / custom), which ProbsProcessor would replace with plain "
            "attention and so change the model. Pass only=[...] to switch the plain ones alone"
        )
    saved = [(m, m.processor) for _, m in chosen]
    try:
        for _, m in chosen:
            m.set_processor(ProbsProcessor())
        yield [f"{prefix}{p}.processor.probs" for p, _ in chosen]
    finally:
        for m, proc in saved:
            m.set_processor(proc)
