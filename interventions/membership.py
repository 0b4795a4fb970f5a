"""Per-sample membership signals of a diffusion denoiser: the denoising loss at fixed timesteps
with fixed noise, and the norm of each sample's loss gradient at a site.

Why these two: a denoiser fits the samples it was trained on a little better than fresh samples
from the same distribution, so their denoising loss is lower and their loss landscape flatter
(membership inference, and dataset inference that pools the signal over many samples: arXiv
2512.09654). Fixing the timesteps and the noise removes the sampling noise of the loss itself, so
two sets of samples are compared on the same footing.

A denoiser is any callable ``denoise(x_t, t) -> model_output`` (the convention of
:mod:`interventions.inversion`: a UNet or DiT behind a closure that adds its conditioning, an exact
Gaussian-mixture denoiser); what its output means is ``prediction_type`` (``"epsilon"``,
``"sample"`` or ``"v_prediction"``), its noise schedule ``alphas_cumprod`` (a diffusers
scheduler's). :func:`denoising_loss` returns ``B x K`` per-sample mean squared errors at ``K``
timesteps, :func:`mean_denoising_loss` their average over several noise draws per sample (one
draw's noise is a large part of a sample's loss); :func:`per_sample_grad_norms` attaches :class:`~interventions.Grads` at a site and
returns each row's gradient norm of a per-sample loss there.

>>> import torch
>>> from diffusers import DDPMScheduler
>>> abar = DDPMScheduler().alphas_cumprod
>>> def eps(x, t):  # the exact noise prediction for data ~ N(0, 0.5^2 I)
...     return (1 - abar[t]).sqrt() * x / (0.25 * abar[t] + 1 - abar[t])
>>> x0 = 0.5 * torch.randn(4096, 4, generator=torch.Generator().manual_seed(0))
>>> loss = denoising_loss(eps, x0, [100, 500], abar, generator=torch.Generator().manual_seed(1))
>>> expected = 0.25 * abar[[100, 500]] / (0.25 * abar[[100, 500]] + 1 - abar[[100, 500]])  # the MMSE
>>> tuple(loss.shape), torch.allclose(loss.mean(0), expected, rtol=0.05)
((4096, 2), True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .hooks import Grads
from .session import attach

__all__ = [
    "PREDICTION_TYPES",
    "noisy_sample",
    "prediction_target",
    "denoising_loss",
    "mean_denoising_loss",
    "per_sample_grad_norms",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _abar(alphas_cumprod: Tensor, timestep: int, like: Tensor) -> Tensor:
    return alphas_cumprod[timestep].to(like.device, torch.float32)


def _unwrap(out: Any) -> Tensor:
    """A diffusers model returns an output object (``.sample``) or a tuple; a closure a tensor."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"denoise returned {type(out).__name__}; expected a tensor, an output with .sample, or a tuple")


def noisy_sample(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """``q(x_t | x_0)``: ``sqrt(abar) x0 + sqrt(1 - abar) noise`` (``alpha_bar`` a scalar tensor).

    >>> noisy_sample(torch.ones(2), torch.zeros(2), torch.tensor(0.25))
    tensor([0.5000, 0.5000])
    """
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def prediction_target(x0: Tensor, noise: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """What a denoiser of ``prediction_type`` is trained to output at ``x_t = noisy_sample(x0, noise, abar)``:
    the noise, ``x0``, or ``v = sqrt(abar) noise - sqrt(1 - abar) x0``.

    >>> prediction_target(torch.ones(1), torch.zeros(1), torch.tensor(0.25), "v_prediction")
    tensor([-0.8660])
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}: use one of {PREDICTION_TYPES}")


def denoising_loss(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample denoising loss ``B x K``: the mean squared error of ``denoise(x_t, t)`` against
    its training target at each of the ``K`` ``timesteps``, with ``x_t`` made from ``x0`` and fixed
    noise.

    ``noise``: ``K x B x ...`` (one draw per timestep) or ``B x ...`` (the same for every timestep);
    without it the noise is drawn from ``generator`` on the CPU (seed it: the point is that the
    noise is fixed). The loss keeps its graph when gradients are enabled (for
    :func:`per_sample_grad_norms`); wrap the call in ``torch.no_grad()`` otherwise.
    ``t`` is passed as a 0-d long tensor; a model that expects another time scale (``t / 1000``,
    sigmas) converts it in ``denoise``. A diffusers model can be passed as it is (its output's
    ``.sample`` or first element is read); one that needs conditioning goes behind a closure.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}: use one of {PREDICTION_TYPES}")
    steps = [int(t) for t in timesteps]
    if not steps:
        raise ValueError("denoising_loss needs at least one timestep")
    last = alphas_cumprod.shape[0] - 1
    if any(t < 0 or t > last for t in steps):
        raise ValueError(f"timesteps must lie in [0, {last}] (the schedule's length), got {steps}")
    if noise is None:
        noise = torch.randn((len(steps), *x0.shape), generator=generator).to(x0.device, x0.dtype)
    elif tuple(noise.shape) == tuple(x0.shape):
        noise = noise.expand(len(steps), *x0.shape)
    elif tuple(noise.shape) != (len(steps), *x0.shape):
        raise ValueError(
            f"noise has shape {tuple(noise.shape)}; expected x0's shape {tuple(x0.shape)} or "
            f"(len(timesteps), *x0.shape) = {(len(steps), *x0.shape)}"
        )
    losses = []
    for k, t in enumerate(steps):
        abar = _abar(alphas_cumprod, t, x0)
        eps = noise[k].to(x0.device, x0.dtype)
        out = _unwrap(denoise(noisy_sample(x0, eps, abar), torch.tensor(t, device=x0.device)))
        target = prediction_target(x0, eps, abar, prediction_type)
        if out.shape != target.shape:
            raise ValueError(f"denoise returned shape {tuple(out.shape)} for samples of shape {tuple(x0.shape)}")
        losses.append((out.float() - target.float()).pow(2).flatten(1).mean(1))
    return torch.stack(losses, 1)


def mean_denoising_loss(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
    noise: Tensor | None = None,
    views: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`denoising_loss` ``B x K`` averaged over ``views`` fixed noise draws per sample and timestep.

    Why: one draw's noise makes up much of a sample's loss (on the tones members model two draws'
    losses of the same clip correlate 0.6-0.8), and that part is the same for members and
    non-members; averaging ``V`` draws shrinks it by ``1 / V`` and leaves the sample's own fit,
    where membership shows. ``noise``: ``V x K x B x ...`` (``views`` is then ``V``); without it
    ``views`` draws come from ``generator`` (seed it).

    >>> from diffusers import DDPMScheduler
    >>> abar = DDPMScheduler().alphas_cumprod
    >>> def eps(x, t):  # the exact noise prediction for data ~ N(0, 0.5^2 I)
    ...     return (1 - abar[t]).sqrt() * x / (0.25 * abar[t] + 1 - abar[t])
    >>> x0 = 0.5 * torch.randn(512, 4, generator=torch.Generator().manual_seed(0))
    >>> one = mean_denoising_loss(eps, x0, [300], abar, generator=torch.Generator().manual_seed(1))
    >>> many = mean_denoising_loss(eps, x0, [300], abar, views=16, generator=torch.Generator().manual_seed(1))
    >>> bool(many.std() < one.std()), bool(torch.isclose(many.mean(), one.mean(), rtol=0.05))  # less spread, same mean
    (True, True)
    """
    if noise is not None:
        if noise.ndim != x0.ndim + 2 or tuple(noise.shape[1:]) != (len(timesteps), *x0.shape):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; expected (views, len(timesteps), *x0.shape) = "
                f"(V, {len(timesteps)}, {', '.join(map(str, x0.shape))})"
            )
        draws = list(noise)
    else:
        if views < 1:
            raise ValueError(f"views is the number of noise draws per sample and timestep: >= 1, got {views}")
        draws = [torch.randn((len(timesteps), *x0.shape), generator=generator) for _ in range(views)]
    losses = [denoising_loss(denoise, x0, timesteps, alphas_cumprod, prediction_type, noise=n) for n in draws]
    return torch.stack(losses).mean(0)


def per_sample_grad_norms(
    model: Any, site: str, losses: Callable[[], Tensor], attach_kwargs: Mapping[str, Any] | None = None
) -> Tensor:
    """``B``: the norm of ``d losses()[i] / d h_i`` where ``h_i`` is row ``i`` of the tensor at ``site``.

    ``losses()`` must run ``model`` once and return one loss per row (e.g. a column of
    :func:`denoising_loss`). One backward pass of ``losses().sum()`` gives every row's own gradient
    because rows do not interact in a denoiser (no batch norm); the gradient is collected by
    :class:`~interventions.Grads`, the model's parameters are frozen for the call (their ``.grad``
    stays untouched) and restored after. ``attach_kwargs`` go to :func:`~interventions.attach`.

    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    >>> norms = per_sample_grad_norms(model, "0", lambda: model(x)[:, 0])
    >>> bool(torch.allclose(norms, model[1].weight.norm().expand(4)))
    True
    """
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
    grads = Grads()
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad(), attach(model, {site: grads}, **dict(attach_kwargs or {})):
            values = losses()
            if values.ndim != 1:
                raise ValueError(f"losses() must return one loss per row (shape (B,)), got {tuple(values.shape)}")
            values.sum().backward()
    finally:
        for p in params:
            p.requires_grad_(True)
    keys = grads.store.keys_of(site)
    if len(keys) != 1:
        raise ValueError(
            f"site {site!r} fired {len(keys)} times in losses(); it must run the model once "
            "(call per_sample_grad_norms once per timestep or prompt)"
        )
    g = grads.store.get(keys[0])
    if g.shape[0] != values.shape[0]:
        raise ValueError(f"the gradient at {site!r} has {g.shape[0]} rows for {values.shape[0]} losses")
    return g.flatten(1).float().norm(dim=1)
