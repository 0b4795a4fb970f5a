"""Counterfactual explanations with a joint diffusion classifier (Mediffusion, arXiv 2411.09434).

Take an image part-way to noise (to timestep ``t0``), then denoise it with DDIM (diffusers'
``DDIMScheduler``, eta 0) under classifier guidance towards a target class:

    eps_hat = eps + s * sqrt(1 - abar_t) * grad_{x_t} [CE(classify(x0_hat(x_t)), target)
                                                       + d * |x0_hat(x_t) - x|_1]

``start="noise"`` reaches ``t0`` with one draw of the forward process (fresh noise: the unguided
path is a new sample near the image); ``start="inversion"`` with deterministic DDIM inversion of
the image (:func:`interventions.inversion.ddim_invert` with ``stop_at``), so that the unguided
path (s = 0) returns about the image itself and what changes is guidance's doing (as DiME and
DDIM-inversion editing start). ``d`` > 0 adds DiME's distance to the source on ``x0_hat``.
``smoothing`` = sigma > 0 averages the cross-entropy over ``draws`` noisy copies
``x0_hat + sigma * N(0, I)`` (randomised smoothing of the guiding classifier): a change that only
fools the classifier on the exact ``x0_hat`` does not survive the noise, a change of shape does.

with ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``; the gradient comes from autograd
through both UNet calls. The explanation map is ``x_cf - x``.

>>> import torch
>>> from recipes.joint_diffusion.model import JointDiffusion
>>> model = JointDiffusion(widths=(8, 16), hidden=16).eval()
>>> x = torch.rand(2, 3, 16, 16) * 2 - 1
>>> cf = counterfactual(model, x, torch.tensor([1, 0]), t0=100, steps=3, scale=10.0)
>>> cf.shape
torch.Size([2, 3, 16, 16])
>>> top_overlap(torch.tensor([[[0.0, 5.0], [1.0, 0.0]]]), torch.tensor([[[False, True], [False, False]]]))
1.0
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from interventions.inversion import ddim_invert, ddim_schedulers
from recipes.joint_diffusion.model import JointDiffusion

__all__ = ["counterfactual", "explanation_map", "top_overlap", "STARTS"]

#: How the image reaches ``t0``: one forward-process draw, or deterministic DDIM inversion.
STARTS = ("noise", "inversion")


def counterfactual(
    model: JointDiffusion,
    images: Tensor,
    target: Tensor,
    t0: int = 300,
    steps: int = 30,
    scale: float = 100.0,
    generator: torch.Generator | None = None,
    recurrence: int = 1,
    start: str = "noise",
    distance: float = 0.0,
    smoothing: float = 0.0,
    draws: int = 4,
) -> Tensor:
    """Images pushed towards class ``target`` by noising to ``t0`` and guided DDIM denoising in
    ``steps`` steps (``scale`` = s; 0 gives the unguided reconstruction, the control).

    ``recurrence`` = r > 1: each step is taken r times, the result re-noised back to the step's
    level in between (self-recurrence, as the authors' DDIM sampler's ``sampling_recurence_steps``
    and Universal Guidance do): the guidance acts r times per noise level while the denoiser pulls
    the image back towards the data (its re-noising draws fresh noise, with either ``start``).

    ``start``: ``"noise"`` or ``"inversion"`` (see the module); ``distance`` = d >= 0;
    ``smoothing`` = sigma >= 0 with ``draws`` >= 1 noisy copies (drawn from ``generator``)."""
    if not 0 < t0 < model.train_timesteps:
        raise ValueError(f"t0 must lie in (0, {model.train_timesteps}), got {t0}")
    if steps < 1 or steps > t0:
        raise ValueError(f"steps must lie in [1, t0={t0}], got {steps}")
    if recurrence < 1:
        raise ValueError(f"recurrence must be >= 1, got {recurrence}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if distance < 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    if smoothing < 0 or draws < 1:
        raise ValueError(f"need smoothing >= 0 and draws >= 1, got {smoothing} and {draws}")
    if target.shape != (images.shape[0],):
        raise ValueError(f"target needs one class per image: {tuple(target.shape)} vs {images.shape[0]}")
    # DDIM without clipping when inverted: clipping x0 makes a step not invertible
    scheduler = model.ddim_scheduler() if start == "noise" else ddim_schedulers(model.ddim_scheduler())[0]
    # timesteps t0, t0 - t0/steps, ..., spaced so that exactly `steps` of them lie at or below t0
    scheduler.set_timesteps(round(model.train_timesteps * steps / t0))
    stride = model.train_timesteps // scheduler.num_inference_steps
    timesteps = [int(t) for t in scheduler.timesteps if t <= t0][:steps]
    abar = model.alphas_cumprod
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    if start == "noise":
        first = torch.full((images.shape[0],), timesteps[0], dtype=torch.long, device=images.device)
        x = model.add_noise(images, noise, first)
    else:  # the inversion visits the levels the guided sampling visits, in reverse

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return model.denoise(x, t.expand(x.shape[0]))

        x = ddim_invert(
            denoise, images, model.ddim_scheduler(), scheduler.num_inference_steps, progress=False, stop_at=timesteps[0]
        )
    for t in timesteps:
        tt = torch.full((images.shape[0],), t, dtype=torch.long, device=images.device)
        for repeat in range(recurrence):
            if repeat:  # back from t - stride to t: x_t = sqrt(a) x_prev + sqrt(1 - a) noise
                a = abar[t] / (abar[t - stride] if t >= stride else torch.ones(()))
                x = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=generator).to(x.device)
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(scale != 0)
                eps = model.denoise(x_in, tt)
                if scale:
                    x0_hat = model.x0_estimate(x_in, tt, eps)
                    loss = _guidance_loss(model, x0_hat, target, smoothing, draws, generator)
                    if distance:
                        loss = loss + distance * (x0_hat - images).abs().sum()
                    (grad,) = torch.autograd.grad(loss, x_in)
                    eps = eps + scale * (1 - abar[t]).sqrt() * grad
            x = scheduler.step(eps.detach(), t, x.detach()).prev_sample
    return x.clamp(-1, 1)


def _guidance_loss(
    model: JointDiffusion, x0_hat: Tensor, target: Tensor, smoothing: float, draws: int, generator
) -> Tensor:
    if not smoothing:
        return F.cross_entropy(model.classify(x0_hat), target, reduction="sum")
    total = x0_hat.new_zeros(())
    for _ in range(draws):
        noise = torch.randn(x0_hat.shape, generator=generator).to(x0_hat.device)
        total = total + F.cross_entropy(model.classify(x0_hat + smoothing * noise), target, reduction="sum")
    return total / draws


def explanation_map(images: Tensor, counterfactuals: Tensor) -> Tensor:
    """``B x H x W``: the absolute change summed over channels, ``|x_cf - x|``."""
    return (counterfactuals - images).abs().sum(dim=1)


def top_overlap(maps: Tensor, region: Tensor) -> float:
    """Mean over images of the fraction of the top-``k`` pixels of ``maps`` inside ``region``,
    with ``k`` the region's size in that image (chance: the region's share of the image)."""
    if maps.shape != region.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and region {tuple(region.shape)} must have the same shape")
    flat, inside = maps.flatten(1), region.flatten(1)
    scores = []
    for m, r in zip(flat, inside, strict=True):
        k = int(r.sum())
        if k:
            scores.append(r[m.topk(k).indices].float().mean().item())
    return sum(scores) / max(1, len(scores))
