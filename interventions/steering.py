"""Steering vectors: directions per site (optionally per denoising step), built contrastively
(CAA: mean of positive minus mean of negative activations) or by PCA over paired differences,
and applied as an addition (with norm restore) or a projection removal, restricted with When.

A vector records the base model, sites, layout, step/branch window and method it was made with,
so that a saved vector says what it is for (:mod:`interventions.steering_format` has the file layout).

>>> pos, neg = torch.randn(16, 8) + 2.0, torch.randn(16, 8)
>>> v = SteeringVector.contrastive({"blocks.3": pos}, {"blocks.3": neg}, unit=True)
>>> round(float(v.directions["blocks.3"].norm()), 4)
1.0
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from . import steering_format
from .context import When
from .hooks import Ablate, AddVector, WidthCheck
from .layout import feature_dim, to_tokens
from .store import Store

Key = str | tuple[str, int]  # a site, or (site, step) for per-step directions
Mode = Literal["add", "remove"]


@dataclass
class SteeringVector:
    """Unit or raw directions keyed by site or (site, step), plus what they were made for."""

    directions: dict[Key, Tensor]
    base_model: str = ""
    layout: str | None = None
    method: str = "caa"
    branch: str = "all"
    normalized: bool = False
    default_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return sorted({k if isinstance(k, str) else k[0] for k in self.directions})

    def steps(self, site: str) -> list[int]:
        return sorted(k[1] for k in self.directions if isinstance(k, tuple) and k[0] == site)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def contrastive(
        cls,
        positive: Mapping[Key, Tensor] | Store,
        negative: Mapping[Key, Tensor] | Store,
        *,
        unit: bool = False,
        layout: str | None = None,
        branch: str | None = "cond",
        per_step: bool = False,
        sites: Iterable[str] | None = None,
        **meta: Any,
    ) -> SteeringVector:
        """CAA: ``mean(positive) - mean(negative)`` over all tokens, per site (and per step).

        Inputs are activations keyed like the directions, or two stores filled by ``Cache``
        (then only ``branch`` rows are used, ``per_step`` keeps one direction per step and
        ``sites`` picks some of the stored sites).
        """
        keep = set(sites) if sites is not None else None
        pos = _group(positive, layout, branch, per_step, keep)
        neg = _group(negative, layout, branch, per_step, keep)
        missing = set(pos) ^ set(neg)
        if missing:
            raise ValueError(
                f"positive and negative activations cover different sites/steps: {sorted(map(str, missing))[:6]}"
            )
        directions = {}
        for key in pos:
            d = pos[key].mean(0) - neg[key].mean(0)
            directions[key] = d / d.norm().clamp_min(1e-12) if unit else d
        return cls(directions, layout=layout, method="caa", branch=branch or "all", normalized=unit, **meta)

    @classmethod
    def pca(
        cls,
        positive: Mapping[Key, Tensor],
        negative: Mapping[Key, Tensor],
        *,
        layout: str | None = None,
        **meta: Any,
    ) -> SteeringVector:
        """First uncentred principal component of paired differences ``pos_i - neg_i`` (as
        steering-vectors' ``pca_aggregator``: centring would remove the shared shift we want),
        signed so that it points from negative to positive on average."""
        directions = {}
        for key in positive:
            p, n = to_tokens(positive[key], layout), to_tokens(negative[key], layout)
            if p.shape != n.shape:
                raise ValueError(f"PCA needs paired activations: {key!r} has {tuple(p.shape)} vs {tuple(n.shape)}")
            diff = (p - n).float()
            _, _, vh = torch.linalg.svd(diff, full_matrices=False)
            d = vh[0]
            directions[key] = d if (diff @ d).mean() >= 0 else -d
        return cls(directions, layout=layout, method="pca", normalized=True, **meta)

    # -- application -----------------------------------------------------------------------------
    def hooks(
        self,
        scale: float | None = None,
        *,
        mode: Mode = "add",
        restore_norm: bool = False,
        strength: float = 1.0,
        when: When | None = None,
    ) -> dict[str, list[Any]]:
        """``{site: [hooks]}`` for :func:`interventions.attach`; per-step directions become one
        hook per step restricted with ``When(steps=step)`` (combined with ``when``'s branch)."""
        scale = self.default_scale if scale is None else scale
        out: dict[str, list[Any]] = {}
        for key, v in self.directions.items():
            site, step = (key, None) if isinstance(key, str) else key
            w = when
            if step is not None:
                w = When(steps=step, t=when.t if when else None, branch=when.branch if when else self.branch)
            elif w is None and self.branch != "all":
                w = When(branch=self.branch)
            if mode == "add":
                hook: Any = AddVector(v, scale=scale, restore_norm=restore_norm, when=w)
            elif mode == "remove":
                hook = Ablate("project_positive", direction=v, strength=strength, restore_norm=restore_norm, when=w)
            else:
                raise ValueError(f"mode must be 'add' or 'remove', got {mode!r}")
            out.setdefault(site, [WidthCheck(v.shape[-1], f"steering vector for {site!r}")]).append(hook)
        return out

    def attach(self, model: Any, scale: float | None = None, **kw: Any) -> Any:
        """Apply to ``model`` and return the session (a context manager)."""
        from .session import attach

        keys = ("mode", "restore_norm", "strength", "when")
        hook_kw = {k: kw.pop(k) for k in keys if k in kw}
        layouts = {s: self.layout for s in self.sites} if self.layout else None
        return attach(model, self.hooks(scale, **hook_kw), layouts=layouts, **kw)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``cfg.json`` + ``steering_vector.safetensors`` (:mod:`interventions.steering_format`);
        refused with nothing written when it would not load back."""
        steering_format.save(self, folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SteeringVector:
        """A vector from a folder; refused (``hub_cards.ArtifactError``) by name when it is not one."""
        return cls(**steering_format.read(folder))


def _group(
    source: Mapping[Key, Tensor] | Store, layout: str | None, branch: str | None, per_step: bool, sites: set[str] | None
) -> dict[Key, Tensor]:
    """Token matrices per direction key, from a mapping or from a store's (site, step, branch)."""
    if isinstance(source, Mapping):
        return {k: to_tokens(v, layout).float() for k, v in source.items()}
    groups: dict[Key, list[Tensor]] = {}
    for stored in source.keys():
        site, step, b = stored[:3]  # every invocation of a module used more than once
        if (branch is not None and b != branch) or (sites is not None and site not in sites):
            continue
        key: Key = (site, int(step)) if per_step and step is not None else site
        groups.setdefault(key, []).append(to_tokens(source.get(stored), layout).float())
    if not groups:
        raise ValueError(f"the store holds no activations for branch {branch!r}")
    return {k: torch.cat(v) for k, v in groups.items()}


def token_means(x: Tensor, layout: str | None) -> Tensor:
    """Per-example mean over positions: ``[batch, features]`` (for feature scores)."""
    dim = feature_dim(layout, x.ndim)
    other = [d for d in range(1, x.ndim) if d != dim]
    return x.mean(dim=other) if other else x


def directions_from_features(
    decoder: Tensor, features: Iterable[int], weights: Iterable[float] | None = None
) -> Tensor:
    """A steering direction from SAE features: the (weighted) sum of their decoder rows."""
    ids = torch.as_tensor(list(features), dtype=torch.long)
    w = torch.ones(len(ids)) if weights is None else torch.as_tensor(list(weights))
    w = w.to(dtype=decoder.dtype, device=decoder.device)
    return (w[:, None] * decoder[ids]).sum(0)
