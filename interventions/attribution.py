"""Attribution patching: activation patching estimated for every site at once from one clean
forward and one corrupt forward and backward.

Patching a site from the clean run into the corrupt run changes a metric by about
``(clean - corrupt) . d metric / d site`` (its first-order Taylor term, as TransformerLens users
compute it by hand): :func:`attribution_patching` returns that product per site, summed per token,
per head or per site, under the same keys as a :class:`~interventions.Cache`.
:func:`activation_patching` runs the real thing (one forward per site and position or head) to
check the estimate where it matters: the approximation is exact for a linear path and degrades
where the patch moves an attention pattern or a saturated nonlinearity far.

>>> import torch
>>> from interventions.attribution import activation_patching, attribution_patching
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
>>> clean, corrupt = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
>>> est = attribution_patching(model, ["0"], clean, corrupt, metric=lambda y: y.sum())
>>> real = activation_patching(model, ["0"], clean, corrupt, metric=lambda y: y.sum())
>>> torch.allclose(est["0"], real["0"], atol=1e-5)  # a linear model: the estimate is exact
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from .context import Context
from .errors import InterventionError
from .hooks import Cache, Grads, Patch
from .layout import feature_dim
from .metric_runs import Inputs, run_model, scalar_metric
from .session import attach
from .store import MemoryStore

Tensor = torch.Tensor
Per = Literal["token", "head", "site", "element"]


def _heads_of(n_heads: int | Mapping[str, int] | None, site: str) -> int:
    n = n_heads.get(site) if isinstance(n_heads, Mapping) else n_heads
    if not n:
        raise InterventionError(
            f"per='head' at site {site!r} needs its head count: n_heads=4 or n_heads={{site: 4}} "
            "(interventions.heads.head_sites(model) lists each per-head site with its count)"
        )
    return n


def _reduce(t: Tensor, per: Per, layout: str | None, n: int | None) -> Tensor:
    """``per="token"``: summed over batch and features (one number per position, as patching
    that position in every row); ``"head"``: over all but the head (the last axis in ``n`` slices);
    ``"site"``: one number; ``"element"``: as it is."""
    if per == "element":
        return t
    if per == "site":
        return t.sum()
    if per == "head":
        assert n is not None
        return t.unflatten(-1, (n, -1)).sum(dim=[d for d in range(t.ndim + 1) if d != t.ndim - 1])
    dim = feature_dim(layout, t.ndim)
    return t.sum(dim=(0, dim)) if t.ndim > 1 else t.sum()


def attribution_patching(
    model: Any,
    sites: Sequence[str],
    clean: Inputs,
    corrupt: Inputs,
    metric: Callable[[Any], Tensor],
    *,
    per: Per = "token",
    n_heads: int | Mapping[str, int] | None = None,
    **attach_kw: Any,
) -> Cache:
    """``(clean - corrupt) * d metric / d site`` at every site, from two forwards and one backward.

    ``clean`` / ``corrupt``: what the model is called with (a tensor, a tuple, a dict of keywords,
    or a zero-argument function that runs it: a denoiser with its timestep and text). ``metric``
    maps the corrupt run's output to a scalar. Returns a :class:`Cache` of the scores, keyed like
    the activations (``result["transformer.h.0"]``, or ``.get(site, step, branch)``), reduced by
    ``per`` (see :func:`_reduce`; ``"head"`` needs ``n_heads`` for per-head sites). The model's
    parameters keep their ``.grad``: the backward asks for the sites' gradients only.
    """
    if per not in ("token", "head", "site", "element"):
        raise ValueError(f"per must be 'token', 'head', 'site' or 'element', got {per!r}")
    clean_acts, corrupt_acts, grads = Cache(on_repeat="replace"), Cache(on_repeat="replace"), Grads()
    live: list[Tensor] = []
    layouts: dict[Any, str | None] = {}

    def keep(x: Tensor, ctx: Context) -> None:  # after Grads: the tensor the gradient arrives at
        live.append(x)
        layouts[ctx.key] = ctx.layout

    with torch.no_grad(), attach(model, dict.fromkeys(sites, clean_acts), **attach_kw):
        run_model(model, clean)
    with torch.enable_grad(), attach(model, {s: [corrupt_acts, grads, keep] for s in sites}, **attach_kw):
        value = scalar_metric(metric(run_model(model, corrupt)))
        if not value.requires_grad:
            raise InterventionError("metric(output) does not depend on any hooked site: no gradient to attribute")
        torch.autograd.grad(value, live, allow_unused=True)
    out = MemoryStore()
    for key in corrupt_acts.keys():
        if key not in clean_acts.store:
            raise InterventionError(
                f"{key} fired in the corrupt run but not in the clean one: the runs differ in shape"
            )
        a, b = clean_acts.store.get(key), corrupt_acts.store.get(key)
        if a.shape != b.shape:
            raise InterventionError(f"{key}: clean {tuple(a.shape)} and corrupt {tuple(b.shape)} activations differ")
        g = grads.store.get(key) if key in grads.store else torch.zeros_like(b)
        n = _heads_of(n_heads, key[0]) if per == "head" else None
        out.put(key, _reduce((a - b) * g, per, layouts.get(key), n))
    return Cache(out)


def activation_patching(
    model: Any,
    sites: Sequence[str],
    clean: Inputs,
    corrupt: Inputs,
    metric: Callable[[Any], Tensor],
    *,
    per: Literal["token", "head", "site"] = "token",
    n_heads: int | Mapping[str, int] | None = None,
    **attach_kw: Any,
) -> dict[str, Tensor]:
    """The real thing: ``metric(corrupt run with the site patched from the clean run) -
    metric(corrupt run)``, one forward per site and position (``per="token"``: every row's
    position patched), head (``"head"``) or site. Every firing of a site is patched; sites are
    concrete (no globs). Shaped like :func:`attribution_patching`'s result."""
    clean_acts = Cache(on_repeat="replace")
    layouts: dict[str, str | None] = {}

    def layout_of(x: Tensor, ctx: Context) -> None:
        layouts[ctx.site] = ctx.layout

    with torch.no_grad():
        with attach(model, {s: [clean_acts, layout_of] for s in sites}, **attach_kw):
            run_model(model, clean)
        base = scalar_metric(metric(run_model(model, corrupt)))
        out: dict[str, Tensor] = {}
        for site in sites:
            found = clean_acts.entries(site)
            if not found:
                raise InterventionError(f"activation_patching: site {site!r} did not fire (name a concrete site)")
            x = next(iter(found.values()))
            if per == "site":
                variants: list[dict[str, Any]] = [{}]
                shape: tuple[int, ...] = ()
            elif per == "head":
                n = _heads_of(n_heads, site)
                variants, shape = [{"heads": [h], "n_heads": n} for h in range(n)], (n,)
            else:
                dim = feature_dim(layouts.get(site), x.ndim)
                shape = tuple(s for i, s in enumerate(x.shape) if i not in (0, dim))
                count = int(torch.tensor(shape).prod()) if shape else 1
                variants = [{"tokens": [i]} for i in range(count)]
            scores = []
            for kw in variants:
                with attach(model, {site: Patch(clean_acts, **kw)}, **attach_kw):
                    scores.append(scalar_metric(metric(run_model(model, corrupt))) - base)
            out[site] = torch.stack(scores).reshape(shape)
    return out
