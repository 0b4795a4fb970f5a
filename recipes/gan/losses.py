"""The losses of the ZDC GAN papers (SDI-GAN, arXiv 2406.03263; ExpertSim, arXiv 2508.20991).

Every function is a plain formula on tensors (no module state), so each one has a unit test
against a hand-computed value (``tests/test_gan_losses.py``).

Generator / discriminator
-------------------------
* :func:`discriminator_loss`: non-saturating BCE on logits, ``softplus(-l_real) + softplus(l_fake)``.
* :func:`generator_loss`: non-saturating BCE, ``softplus(-l_fake)`` (= ``-log sigmoid(l_fake)``).
* :func:`sdi_loss`: Selective Diversity Increase. With ``h`` the discriminator's penultimate
  features, for a pair of noises ``z1, z2`` of the same condition
  ``div = mean|h(G(z1,c)) - h(G(z2,c))| / (mean|z1 - z2| + eps)`` per sample and
  ``L = mean(sigma) * mean(strength * sigma / (div + eps))``, ``sigma`` the min-max-scaled spread
  of the real responses of that condition: conditions whose real responses vary get pushed apart,
  the others not.
* :func:`intensity_loss`: L1 between the generated photon sum ``sum(expm1(x_hat))`` (the generator
  works in ``log1p`` space) and the real event's photon sum, divided by ``scale``.
* :func:`position_loss`: MSE between the regressor's brightest-pixel position on generated events
  and the real position (the regressor itself is trained with the same MSE on real events).

Router (ExpertSim)
------------------
* :func:`gumbel_softmax_st`: soft Gumbel-softmax gates and straight-through hard gates
  ``one_hot + (soft - soft.detach())`` (exactly one-hot forward).
* :func:`differentiation_loss`: ``-sum_{i<j} |m_i - m_j|``, ``m_i`` the gate-weighted mean
  (generated) intensity of expert ``i``.
* :func:`utilisation_entropy`: ``H(mean_b soft_gate_b)`` (to be maximised: enters with a minus).
* :func:`load_balancing_loss`: ``mean_i exp(1 / (sum_b soft_gate_bi + eps))`` (exponent capped).
* :func:`router_gan_loss`: the experts' per-sample generator losses (detached) weighted by the
  straight-through gate of the chosen expert: the forward value is the mean generator loss.
* :func:`router_loss` combines them:
  ``l_gan L_gan + l_diff L_diff - l_util H + l_alb L_alb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "discriminator_loss",
    "generator_loss",
    "sdi_loss",
    "intensity_loss",
    "position_loss",
    "gumbel_softmax_st",
    "expert_means",
    "differentiation_loss",
    "utilisation_entropy",
    "load_balancing_loss",
    "router_gan_loss",
    "router_loss",
    "minmax_scale",
]


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean softplus(-l_real) + mean softplus(l_fake)``: BCE of real -> 1, fake -> 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-l_fake)`` (``reduction``: ``"mean"`` or ``"none"``)."""
    per_sample = F.softplus(-fake_logits.reshape(fake_logits.shape[0], -1)).mean(dim=1)
    return per_sample if reduction == "none" else per_sample.mean()


def sdi_loss(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    noise_1: torch.Tensor,
    noise_2: torch.Tensor,
    sigma: torch.Tensor,
    strength: float = 1.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Selective Diversity Increase (SDI-GAN): ``mean(sigma) * mean(strength * sigma / (div + eps))``.

    ``features_*``: discriminator penultimate features ``(B, F)`` of ``G(z_1, c)``, ``G(z_2, c)``;
    ``noise_*``: ``(B, Z)``; ``sigma``: ``(B,)`` per-condition spread of real responses, min-max
    scaled to ``[0, 1]``. ``div = mean_f|h1 - h2| / (mean_z|z1 - z2| + eps)`` per sample.
    """
    feat = (features_1 - features_2).abs().flatten(1).mean(dim=1)
    noise = (noise_1 - noise_2).abs().flatten(1).mean(dim=1)
    div = feat / (noise + eps)
    sigma = sigma.reshape(-1).to(div.dtype)
    return sigma.mean() * (strength * sigma / (div + eps)).mean()


def intensity_loss(log_images: torch.Tensor, photon_sum: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``mean |sum(expm1(x_hat)) - photon_sum| / scale`` for ``log1p``-space images ``(B, ..., H, W)``."""
    generated = torch.expm1(log_images).flatten(1).sum(dim=1)
    return (generated - photon_sum.reshape(-1).to(generated.dtype)).abs().mean() / scale


def position_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and real brightest-pixel positions ``(B, 2)`` (pixels)."""
    return F.mse_loss(predicted, target.to(predicted.dtype))


def minmax_scale(values: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """``(v - lo) / (hi - lo)`` (``lo``, ``hi`` default to the min and max of ``values``); 0 if constant."""
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        return torch.zeros_like(values)
    return ((values - lo) / (hi - lo)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------ router


def gumbel_softmax_st(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None, noise: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-softmax with straight-through hard routing.

    Returns ``(soft, gates, index)``: ``soft = softmax((logits + g) / tau)`` with Gumbel noise ``g``
    (none when ``noise=False``), ``index = argmax(soft)``, and ``gates = one_hot(index) + (soft -
    soft.detach())``: exactly one-hot in the forward pass, the soft gradient in the backward pass.
    """
    if noise:
        where = generator.device if generator is not None else logits.device  # a CPU generator: same draws everywhere
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=where).to(logits.device)
        g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        logits = logits + g
    soft = torch.softmax(logits / tau, dim=-1)
    index = soft.argmax(dim=-1)
    hard = F.one_hot(index, soft.shape[-1]).to(soft.dtype)
    return soft, hard + (soft - soft.detach()), index


def expert_means(gates: torch.Tensor, values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Gate-weighted mean of ``values`` ``(B,)`` per expert: ``sum_b g_bi v_b / (sum_b g_bi + eps)``."""
    v = values.reshape(-1, 1).to(gates.dtype)
    return (gates * v).sum(dim=0) / (gates.sum(dim=0) + eps)


def differentiation_loss(gates: torch.Tensor, intensities: torch.Tensor) -> torch.Tensor:
    """``-sum_{i<j} |m_i - m_j|`` over the experts that received samples (``m`` of :func:`expert_means`)."""
    means = expert_means(gates, intensities)
    used = gates.detach().sum(dim=0) > 0
    means = means[used]
    if means.numel() < 2:
        return gates.sum() * 0.0
    diff = (means.unsqueeze(0) - means.unsqueeze(1)).abs()
    return -torch.triu(diff, diagonal=1).sum()


def utilisation_entropy(soft: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Entropy ``-sum_i p_i log p_i`` of the mean soft gate ``p = mean_b soft_b`` (to be maximised)."""
    p = soft.mean(dim=0)
    return -(p * torch.log(p + eps)).sum()


def load_balancing_loss(soft: torch.Tensor, eps: float = 1e-6, max_exponent: float = 20.0) -> torch.Tensor:
    """Adaptive load balancing ``mean_i exp(1 / (sum_b soft_bi + eps))``: large when an expert starves.

    The exponent is capped at ``max_exponent`` (``exp(20) ~ 5e8``): without the cap an expert whose
    soft mass in a small batch falls to ~0 gives ``inf`` and NaN gradients.
    """
    return torch.exp((1.0 / (soft.sum(dim=0) + eps)).clamp(max=max_exponent)).mean()


def router_gan_loss(gates: torch.Tensor, index: torch.Tensor, per_sample_loss: torch.Tensor) -> torch.Tensor:
    """``mean_b gates[b, index_b] * loss_b`` with the losses detached (forward: the mean loss)."""
    chosen = gates.gather(1, index.reshape(-1, 1)).squeeze(1)
    return (chosen * per_sample_loss.detach().reshape(-1)).mean()


def router_loss(
    soft: torch.Tensor,
    gates: torch.Tensor,
    index: torch.Tensor,
    per_sample_gen_loss: torch.Tensor,
    intensities: torch.Tensor,
    l_gan: float = 0.1,
    l_diff: float = 0.1,
    l_util: float = 1.0,
    l_alb: float = 1e-7,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ExpertSim router loss ``l_gan L_gan + l_diff L_diff - l_util H + l_alb L_alb``; returns (loss, parts)."""
    gan = router_gan_loss(gates, index, per_sample_gen_loss)
    diff = differentiation_loss(gates, intensities.detach())
    util = utilisation_entropy(soft)
    alb = load_balancing_loss(soft)
    loss = l_gan * gan + l_diff * diff - l_util * util + l_alb * alb
    parts = {"gan": gan.item(), "diff": diff.item(), "util": util.item(), "alb": alb.item()}
    return loss, parts
