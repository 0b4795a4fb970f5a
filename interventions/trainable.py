"""Trainable interventions: ``nn.Module`` hooks whose parameters a torch optimiser trains, saved
as an artifact (``cfg.json`` + ``intervention.safetensors`` + a card).

- :class:`DAS` (distributed alignment search, pyvene's ``RotatedSpaceIntervention`` /
  ``LowRankRotatedSpaceIntervention``): a learned ``k``-dimensional subspace with orthonormal
  rows ``R`` in which the site takes the source run's value: ``h <- h + R^T (R s - R h)``. If a
  causal variable lives in that subspace, the interchange makes the model act as if the variable
  had the source's value (interchange accuracy measures it).
- :class:`LoReFT` (low-rank representation finetuning, pyreft's intervention):
  ``h <- h + R^T (W h + b - R h)``, a low-rank edit that needs no source run.

Both act on the site's feature axis (its layout: channels of a UNet map too), optionally only at
``tokens``, and follow the hook contract (``hook(x, ctx)``), so ``attach`` takes them as they are.
:func:`interchange` runs the source input, then the base input with the intervention reading it.

>>> import torch
>>> from interventions import attach
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 1))
>>> das = DAS(6, k=2)
>>> opt = torch.optim.Adam(das.parameters(), lr=0.01)
>>> base, source = torch.randn(8, 4), torch.randn(8, 4)
>>> out = interchange(model, "0", das, base, source)  # a forward with the graph kept
>>> loss = out.pow(2).mean()
>>> loss.backward(); opt.step()
>>> das.rotation.shape, bool(torch.allclose(das.rotation @ das.rotation.T, torch.eye(2), atol=1e-5))
(torch.Size([2, 6]), True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from .artifact_fields import check_metrics, check_text, check_version, check_weights
from .context import Context, When
from .errors import InterventionError, ShapeMismatchError
from .hooks import WidthCheck
from .layout import feature_dim, token_mask

WEIGHTS_NAME = "intervention.safetensors"
_ORTHONORMAL_TOL = 1e-4


class Trainable(nn.Module):
    """Shared parts: the subspace (orthonormal rows), feature-axis handling, the artifact."""

    kind: ClassVar[str] = ""
    _tensors: ClassVar[tuple[str, ...]] = ("rotation",)

    def __init__(
        self,
        d: int,
        k: int,
        *,
        tokens: Sequence[int] | None = None,
        when: When | None = None,
        site: str = "",
        base_model: str = "",
        layout: str | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(d, int) and isinstance(k, int) and 0 < k <= d):
            raise ValueError(f"{type(self).__name__} needs 0 < k <= d (integers), got d={d!r}, k={k!r}")
        self.d, self.k = d, k
        self.tokens = None if tokens is None else [int(t) for t in tokens]
        self.when = when
        self.site, self.base_model, self.layout = site, base_model, layout
        self.metrics: dict[str, float] = {}
        self.rotate = orthogonal(nn.Linear(d, k, bias=False))

    @property
    def rotation(self) -> Tensor:
        """``R``, ``(k, d)`` with orthonormal rows."""
        weight = self.rotate.weight
        assert isinstance(weight, Tensor)
        return weight

    def _edit(self, x: Tensor, ctx: Context) -> Tensor:
        """The rotated-space delta to add to ``x`` (features last); subclasses define it."""
        raise NotImplementedError

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        WidthCheck(self.d, type(self).__name__)(x, ctx)
        dim = feature_dim(ctx.layout, x.ndim)
        h = x.movedim(dim, -1)
        out = (h + self._edit(h, ctx).to(h.dtype)).movedim(-1, dim)
        if self.tokens is None:
            return out
        return torch.where(token_mask(x, ctx.layout, torch.as_tensor(self.tokens)), out, x)

    # -- the artifact ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        from hub_cards.layouts import sdk_version

        return {
            "kind": self.kind,
            "d": self.d,
            "k": self.k,
            "site": self.site,
            "base_model": self.base_model,
            "layout": self.layout,
            "tokens": self.tokens,
            **({"metrics": dict(self.metrics)} if self.metrics else {}),
            "sdk_version": sdk_version(),
        }

    def tensors(self) -> dict[str, Tensor]:
        return {"rotation": self.rotation.detach()}

    def save(self, folder: str | os.PathLike[str], *, card: bool = True, **card_fields: Any) -> None:
        """Write ``cfg.json`` + ``intervention.safetensors`` (and ``README.md``, the card, unless
        ``card=False``; ``card_fields`` go to ``hub_cards.write_card``). Checked as :meth:`load`
        would check it first, so nothing is written on refusal."""
        from hub_cards import write_card
        from hub_cards.layouts import write_artifact

        cfg, tensors = self.config(), self.tensors()
        _fields(cfg, tensors, f"the {self.kind} intervention for {os.fspath(folder)}")
        write_artifact(folder, WEIGHTS_NAME, cfg, tensors)
        if card:
            name = type(self).__name__
            fields: dict[str, Any] = {
                "title": f"{name} intervention ({self.k} of {self.d} dimensions)",
                "description": f"A trained {name} intervention ({_ABOUT[self.kind]}) made with "
                "[interventions](https://pypi.org/project/interventions/): `cfg.json` + `intervention.safetensors`.",
                "class_name": name,
                "module": "interventions.trainable",
                "site": self.site or None,
                "layout": self.layout,
                "base_model": self.base_model or None,
                "tags": ["trainable-intervention", self.kind],
                "metrics": "\n".join(f"- {k}: {v:.4g}" for k, v in self.metrics.items()) or None,
                "load_snippet": "from hub_cards import pull\nfrom interventions.trainable import load\n"
                f'hook = load(pull("{card_fields.get("repo_id") or "<repo_id>"}"))\n'
                "session = attach(model, {hook.site: hook})  # a context manager; exit it to remove the hook",
            }
            write_card(folder, "model", **{**fields, **card_fields})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Trainable:
        return load(folder)


class DAS(Trainable):
    """Interchange in a learned ``k``-dim subspace: ``h <- h + R^T (R s - R h)``.

    ``source`` is where ``s`` comes from: a :class:`~interventions.Cache` or store (the same key:
    the source run's value at this site), a tensor, or set by :func:`interchange`. With ``k = d``
    it is a full patch; training ``R`` finds where a variable is encoded."""

    kind = "das"

    def __init__(self, d: int, k: int = 1, *, source: Any = None, **kw: Any) -> None:
        super().__init__(d, k, **kw)
        self.source = source

    def _edit(self, h: Tensor, ctx: Context) -> Tensor:
        s = _source_of(self.source, h, ctx)
        r = self.rotation.to(h.dtype)
        return ((s - h) @ r.T) @ r


class LoReFT(Trainable):
    """Low-rank representation finetuning: ``h <- h + R^T (W h + b - R h)``; no source run."""

    kind = "loreft"
    _tensors = ("rotation", "weight", "bias")
    rowwise = True  # the same edit for every row: may take a batched CFG call whole

    def __init__(self, d: int, k: int = 1, **kw: Any) -> None:
        super().__init__(d, k, **kw)
        self.learned = nn.Linear(d, k)

    def _edit(self, h: Tensor, ctx: Context) -> Tensor:
        r = self.rotation.to(h.dtype)
        return (self.learned(h) - h @ r.T) @ r

    def tensors(self) -> dict[str, Tensor]:
        return {
            "rotation": self.rotation.detach(),
            "weight": self.learned.weight.detach(),
            "bias": self.learned.bias.detach(),
        }


_KINDS: dict[str, type[Trainable]] = {"das": DAS, "loreft": LoReFT}
_ABOUT = {
    "das": "distributed alignment search: interchange in a learned orthonormal subspace",
    "loreft": "low-rank representation finetuning",
}


def _source_of(source: Any, h: Tensor, ctx: Context) -> Tensor:
    """The source value, features last like ``h``."""
    if source is None:
        raise InterventionError(
            f"DAS at site {ctx.site!r} has no source: set das.source = <a Cache of the source run> or use "
            "interventions.trainable.interchange(model, site, das, base, source)"
        )
    store = getattr(source, "store", source)
    if isinstance(source, Tensor):
        s = source
    elif hasattr(store, "get") and hasattr(store, "put"):
        s = store.get(ctx.key)
    else:
        raise TypeError(f"DAS source must be a Cache, store or tensor, got {type(source).__name__}")
    dim = feature_dim(ctx.layout, s.ndim)
    s = s.to(h.device, h.dtype).movedim(dim, -1)
    if ctx.rows != slice(None) and s.shape[0] != h.shape[0]:
        s = s[ctx.rows]
    if s.shape != h.shape and not (s.ndim <= h.ndim and s.shape[-1] == h.shape[-1]):
        raise ShapeMismatchError(f"DAS at site {ctx.site!r}: source {tuple(s.shape)} does not fit {tuple(h.shape)}")
    return s


def interchange(model: nn.Module, site: str, intervention: DAS, base: Any, source: Any, **attach_kw: Any) -> Any:
    """Run ``source`` and record ``site``, then run ``base`` with ``intervention`` at ``site``
    reading the recorded value; returns the base run's output (with its graph: train on it).
    Inputs are tensors, tuples (positional) or dicts (keywords)."""
    from .hooks import Cache
    from .session import attach

    def call(inputs: Any) -> Any:
        if isinstance(inputs, Mapping):
            return model(**inputs)
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)

    cache = Cache(on_repeat="replace")
    with torch.no_grad(), attach(model, {site: cache}, **attach_kw):
        call(source)
    intervention.source = cache
    with attach(model, {site: intervention}, **attach_kw):
        return call(base)


# -- the format ------------------------------------------------------------------------------------
def _fields(cfg: dict[str, Any], tensors: Mapping[str, Tensor], what: str) -> type[Trainable]:
    """Validate ``(cfg, tensors)``; the class to build, or ``hub_cards.ArtifactError`` listing every problem."""
    from hub_cards.layouts import Problems

    p = Problems()
    kind = p.choice(cfg, "kind", tuple(_KINDS))
    d, k = p.field(cfg, "d", (int,)), p.field(cfg, "k", (int,))
    if isinstance(d, int) and isinstance(k, int) and not 0 < k <= d:
        p.add(f"'d' and 'k' must satisfy 0 < k <= d, got d={d}, k={k}")
        d = k = None
    for key in ("site", "base_model", "layout"):
        check_text(p, cfg, key)
    tokens = p.field(cfg, "tokens", (list, type(None)), required=False)
    if isinstance(tokens, list) and not all(type(t) is int for t in tokens):
        p.add(f"'tokens' must be a list of positions (int) or null, got {tokens!r}")
    check_metrics(p, cfg)
    check_version(p, cfg, "sdk_version")
    if kind is not None:
        cls = _KINDS[kind]
        extra = sorted(set(tensors) - set(cls._tensors))
        missing = sorted(set(cls._tensors) - set(tensors))
        if extra or missing:
            p.add(f"a {kind} intervention holds tensors {list(cls._tensors)}; missing {missing}, unexpected {extra}")
        elif isinstance(d, int) and isinstance(k, int):
            want = {"rotation": (k, d), "weight": (k, d), "bias": (k,)}
            for name in cls._tensors:
                if tuple(tensors[name].shape) != want[name]:
                    p.add(f"tensor {name!r} has shape {list(tensors[name].shape)}, the config says {list(want[name])}")
        check_weights(p, tensors)
        r = tensors.get("rotation")
        if not p.items and r is not None:
            err = float((r.double() @ r.double().T - torch.eye(r.shape[0], dtype=torch.float64)).abs().max())
            if err > _ORTHONORMAL_TOL:
                p.add(f"tensor 'rotation' must have orthonormal rows (R R^T = I), off by {err:.2g}")
    p.raise_if_any(f"{what} is not a valid trainable intervention")
    return _KINDS[cfg["kind"]]


def load(folder: str | os.PathLike[str]) -> Trainable:
    """A :class:`DAS` or :class:`LoReFT` from a folder written by ``save``; refused
    (``hub_cards.ArtifactError``) by name when it is not one. Safetensors and JSON only."""
    from hub_cards.layouts import CFG_NAME, read_artifact

    cfg, tensors = read_artifact(folder, WEIGHTS_NAME, "trainable-intervention")
    cls = _fields(cfg, tensors, os.path.join(os.fspath(folder), CFG_NAME))
    module = cls(
        cfg["d"],
        cfg["k"],
        tokens=cfg.get("tokens"),
        site=cfg.get("site") or "",
        base_model=cfg.get("base_model") or "",
        layout=cfg.get("layout"),
    )
    module.metrics = dict(cfg.get("metrics") or {})
    with torch.no_grad():
        module.rotate.weight = tensors["rotation"].float()
        if isinstance(module, LoReFT):
            module.learned.weight.copy_(tensors["weight"])
            module.learned.bias.copy_(tensors["bias"])
    return module
