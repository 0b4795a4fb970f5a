"""Activation layouts: which dimension holds features, and how a site's tensor becomes tokens.

A layout is a string of axis letters: ``"BNC"`` (tokens, the transformer default), ``"BCHW"``
(UNet feature maps), ``"BCT"`` (audio: channels by time), or None (features on the last axis).
SAEs and steering vectors work on tokens ``[num_tokens, features]``; the layout says how to get
there and back without the user reshaping by hand.
"""

from __future__ import annotations

import torch
from einops import rearrange

KNOWN_LAYOUTS = ("BNC", "BCHW", "BCT", "BC")


def check_layout(layout: str | None, where: str = "") -> str | None:
    """``layout`` itself if it is known; ``where`` prefixes the error (who passed it)."""
    if layout is not None and layout not in KNOWN_LAYOUTS:
        raise ValueError(
            f"{where}unknown layout {layout!r}; use one of {KNOWN_LAYOUTS} (B batch, N tokens, C features, "
            "H W height and width, T time) or None (features on the last axis)"
        )
    return layout


def feature_dim(layout: str | None, ndim: int) -> int:
    """The axis of ``x`` that holds features (channels)."""
    if layout is None or len(layout) != ndim:
        return ndim - 1
    return layout.index("C")


def to_tokens(x: torch.Tensor, layout: str | None) -> torch.Tensor:
    """``x`` as ``[num_tokens, features]``: one row per position (and batch element)."""
    if layout == "BCHW" and x.ndim == 4:
        return rearrange(x, "b c h w -> (b h w) c")
    if layout == "BCT" and x.ndim == 3:
        return rearrange(x, "b c t -> (b t) c")
    return x.reshape(-1, x.shape[-1])


def from_tokens(tokens: torch.Tensor, like: torch.Tensor, layout: str | None) -> torch.Tensor:
    """Inverse of :func:`to_tokens` for a tensor shaped like ``like``."""
    if layout == "BCHW" and like.ndim == 4:
        b, _, h, w = like.shape
        return rearrange(tokens, "(b h w) c -> b c h w", b=b, h=h, w=w)
    if layout == "BCT" and like.ndim == 3:
        return rearrange(tokens, "(b t) c -> b c t", b=like.shape[0])
    return tokens.reshape(like.shape)


def along_features(v: torch.Tensor, x: torch.Tensor, layout: str | None) -> torch.Tensor:
    """Reshape a 1-D per-feature vector so that it broadcasts against ``x`` on its feature axis."""
    dim = feature_dim(layout, x.ndim)
    if dim == x.ndim - 1:  # broadcasts as it is; a (1, 1, C) view makes every later add ~3x slower
        return v
    shape = [1] * x.ndim
    shape[dim] = v.shape[0]
    return v.reshape(shape)


def token_mask(x: torch.Tensor, layout: str | None, tokens: torch.Tensor) -> torch.Tensor:
    """A bool mask shaped like ``x`` that is True at the given token positions (all features).

    Token positions index the non-batch, non-feature axes flattened in order (``H*W`` for
    ``BCHW``, ``T`` for ``BCT``, ``N`` for ``BNC``).
    """
    dim = feature_dim(layout, x.ndim)
    spatial = [s for i, s in enumerate(x.shape) if i not in (0, dim)]
    flat = torch.zeros(int(torch.tensor(spatial).prod()) if spatial else 1, dtype=torch.bool)
    flat[tokens] = True
    mask = flat.reshape(spatial).to(x.device)
    return mask.unsqueeze(0).unsqueeze(dim).expand_as(x)
