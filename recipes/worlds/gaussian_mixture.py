"""Gaussian-mixture worlds with analytically exact denoisers.

For data ``x0 ~ sum_k pi_k N(mu_k, diag(v_k))`` and the variance-preserving forward process
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` the noised marginal is again a mixture,
``p_t = sum_k pi_k N(sqrt(abar_t) mu_k, diag(abar_t v_k + 1 - abar_t))``, so everything a
denoiser should learn is known in closed form:

* responsibilities ``r_k(x_t) = P(k | x_t)`` (a softmax of the components' log densities),
* the posterior mean (Tweedie) ``E[x0 | x_t] = sum_k r_k (mu_k + sqrt(abar) v_k / (abar v_k +
  1 - abar) (x_t - sqrt(abar) mu_k))``,
* the exact noise prediction ``E[eps | x_t] = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar)``
  and the score ``grad log p_t(x_t) = -E[eps | x_t] / sqrt(1 - abar)``.

:class:`GaussianMixtureDenoiser` is an ``nn.Module`` shaped like a diffusers model:
``forward(sample, timestep, class_labels=None, ..., return_dict=True)`` returns an object with
``.sample`` (epsilon, x0 or v, per ``prediction_type``), so diffusers schedulers
(``DDIMScheduler``, ``DDIMInverseScheduler``, with ``clip_sample=False``) and the hook engine run on
it unchanged (it also runs as the ``unet`` of diffusers' ``DDIMPipeline``, whose output
post-processing assumes images in [-1, 1]). Its two submodules are real sites: ``posterior``
outputs the responsibilities ``(B, K)`` and ``x0_head`` the posterior mean ``(B, D)``; the
returned prediction is computed from the latter, so a hook that patches either site changes the
output consistently. Arithmetic is
float64 inside; the output has the input's dtype.

Timesteps index ``alphas_cumprod`` (default: diffusers' ``DDPMScheduler()`` schedule, 1000 linear
betas from 1e-4 to 0.02, computed the same way); pass ``alphas_cumprod=`` or ``scheduler=`` to use
another. Non-integer timesteps interpolate linearly between neighbouring entries.

Conditioning (``class_labels``): every component carries a class label (default: its index, so a
class is a component). ``class_labels`` may be ``None`` (the whole mixture), an int or a ``(B,)``
integer tensor (one class per row), or a boolean ``(C,)`` / ``(B, C)`` mask over the classes (a
*set* of classes, e.g. a continual-learning task); the denoiser is then exact for the mixture
restricted to the allowed components, weights renormalised.

Samples may be flat ``(B, D)`` or shaped ``(B, *sample_shape)`` with ``prod(sample_shape) == D``
(e.g. ``(B, 1, 8, 8)`` for the 64-d flat-vs-textured world).

Written here rather than taken from a library: no package ships a closed-form mixture denoiser
behind a diffusers-style forward.
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "GaussianMixture",
    "GaussianMixtureDenoiser",
    "DenoiserOutput",
    "ComponentPosterior",
    "PosteriorMean",
    "ddpm_alphas_cumprod",
    "random_mixture",
    "flat_textured_mixture",
    "continual_tasks",
]

_F64 = torch.float64


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
) -> torch.Tensor:
    """``alphas_cumprod`` exactly as diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` build it
    (float32, as there), without importing diffusers."""
    t = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, t, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, t, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - abar((i + 1) / t) / abar(i / t), 0.999) for i in range(t)],
            dtype=torch.float32,
        )
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


# --------------------------------------------------------------------------------------------
# the world


class GaussianMixture:
    """A mixture of ``K`` Gaussians in ``D`` dims with diagonal (or isotropic) covariances.

    ``weights`` ``(K,)`` (normalised here), ``means`` ``(K, D)``, ``variances`` a scalar, ``(K,)``
    (isotropic per component) or ``(K, D)`` (diagonal); ``classes`` ``(K,)`` integer class label
    of each component (default ``arange(K)``). Stored as float64.
    """

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float],
        means: torch.Tensor | Sequence[Sequence[float]],
        variances: torch.Tensor | float | Sequence[float],
        classes: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        means_t = torch.as_tensor(means, dtype=_F64)
        if means_t.ndim != 2:
            raise ValueError(f"means must be (K, D), got {tuple(means_t.shape)}")
        k, d = means_t.shape
        w = torch.as_tensor(weights, dtype=_F64).flatten()
        if w.numel() != k or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        v = torch.as_tensor(variances, dtype=_F64)
        if v.ndim == 0:
            v = v.expand(k, d)
        elif v.ndim == 1:
            if v.numel() != k:
                raise ValueError(f"isotropic variances must have K={k} entries")
            v = v[:, None].expand(k, d)
        elif tuple(v.shape) != (k, d):
            raise ValueError(f"variances must be scalar, (K,) or (K, D)=({k}, {d})")
        if not bool((v > 0).all()):
            raise ValueError("variances must be > 0")
        c = torch.arange(k) if classes is None else torch.as_tensor(classes).flatten()
        if c.numel() != k or c.is_floating_point() or bool((c < 0).any()):
            raise ValueError(f"classes must be {k} non-negative integers")
        self.weights = w / w.sum()
        self.means = means_t.clone()
        self.variances = v.clone().contiguous()
        self.classes = c.to(torch.int64).clone()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, classes={self.num_classes})"

    # -- conditioning

    def allowed_components(self, class_labels: Any, batch: int) -> torch.Tensor | None:
        """``(batch, K)`` bool mask of the components allowed by ``class_labels`` (or None)."""
        return _allowed(self.classes, self.num_classes, class_labels, batch)

    def restrict(self, classes: Sequence[int] | torch.Tensor) -> GaussianMixture:
        """The mixture of the components whose class is in ``classes`` (labels kept)."""
        keep = torch.isin(self.classes, torch.as_tensor(classes, dtype=torch.int64))
        if not bool(keep.any()):
            raise ValueError(f"no component has a class in {classes}")
        return GaussianMixture(self.weights[keep], self.means[keep], self.variances[keep], self.classes[keep])

    # -- sampling and densities

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        class_labels: Any = None,
        return_components: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` points ``(n, D)`` (optionally restricted by ``class_labels``)."""
        allowed = self.allowed_components(class_labels, n)
        probs = self.weights.expand(n, -1)
        if allowed is not None:
            probs = probs * allowed
            if not bool((probs.sum(-1) > 0).all()):
                raise ValueError("some rows allow no component")
        if n:
            comp = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            comp = torch.zeros(0, dtype=torch.int64)
        z = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        x = (self.means[comp] + self.variances[comp].sqrt() * z).to(dtype)
        return (x, comp) if return_components else x

    def log_prob(
        self, x: torch.Tensor, alpha_bar: float | torch.Tensor = 1.0, class_labels: Any = None
    ) -> torch.Tensor:
        """Log density of the noised marginal ``p_t`` at ``x`` ``(B, D)`` (``alpha_bar=1``: data).

        Differentiable in ``x`` (the exact score is its gradient)."""
        x = x.reshape(x.shape[0], -1)
        ab = torch.as_tensor(alpha_bar, dtype=_F64, device=x.device).reshape(-1, 1, 1)
        mean = ab.sqrt() * self.means  # (., K, D)
        var = ab * self.variances + (1 - ab)
        diff = x.to(_F64)[:, None, :] - mean
        comp = -0.5 * ((diff**2 / var) + torch.log(2 * math.pi * var)).sum(-1)
        logw = self.weights.log().expand(x.shape[0], -1)
        allowed = self.allowed_components(class_labels, x.shape[0])
        if allowed is not None:
            logw = logw.masked_fill(~allowed, -math.inf)
        return torch.logsumexp(comp + logw, dim=-1)

    def mean(self, class_labels: Any = None) -> torch.Tensor:
        """Mixture mean ``(D,)`` (float64); ``class_labels``: a class or a ``(C,)`` class mask."""
        m = self._sub(class_labels)
        return m.weights @ m.means

    def covariance(self, class_labels: Any = None) -> torch.Tensor:
        """Mixture covariance ``(D, D)`` (float64)."""
        m = self._sub(class_labels)
        mu = m.weights @ m.means
        second = torch.einsum("k,kd,ke->de", m.weights, m.means, m.means)
        return torch.diag(m.weights @ m.variances) + second - torch.outer(mu, mu)

    def _sub(self, class_labels: Any) -> GaussianMixture:
        if class_labels is None:
            return self
        allowed = self.allowed_components(class_labels, 1)
        assert allowed is not None
        return self.restrict(self.classes[allowed[0]].unique())

    # -- the exact denoiser

    def denoiser(
        self,
        alphas_cumprod: torch.Tensor | None = None,
        prediction_type: str = "epsilon",
        sample_shape: Sequence[int] | None = None,
        scheduler: Any = None,
    ) -> GaussianMixtureDenoiser:
        """The exact denoiser for this mixture (see :class:`GaussianMixtureDenoiser`)."""
        return GaussianMixtureDenoiser(
            self,
            alphas_cumprod=alphas_cumprod,
            prediction_type=prediction_type,
            sample_shape=sample_shape,
            scheduler=scheduler,
        )


def _allowed(classes: torch.Tensor, num_classes: int, class_labels: Any, batch: int) -> torch.Tensor | None:
    if class_labels is None:
        return None
    labels = torch.as_tensor(class_labels, device=classes.device)
    if labels.dtype == torch.bool:
        if labels.ndim == 1:
            labels = labels.expand(batch, -1)
        if labels.shape != (batch, num_classes):
            raise ValueError(
                f"a class mask must be (C,) or (B, C) = ({batch}, {num_classes}), got {tuple(labels.shape)}"
            )
        allowed = labels[:, classes]
    else:
        if labels.is_floating_point():
            raise ValueError("class_labels must be integers or a boolean class mask")
        labels = labels.to(torch.int64).flatten()
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"class_labels has {labels.numel()} entries for batch {batch}")
        allowed = labels[:, None] == classes[None, :]
    if not bool(allowed.any(-1).all()):
        raise ValueError("class_labels selects no component for some rows")
    return allowed


# --------------------------------------------------------------------------------------------
# the denoiser module


@dataclass
class DenoiserOutput:
    """Like diffusers' ``UNet2DOutput``: the prediction is ``.sample``; ``out[0]`` works too."""

    sample: torch.Tensor

    def __getitem__(self, index: int | str) -> torch.Tensor:
        if index in (0, "sample"):
            return self.sample
        raise IndexError(index)

    def to_tuple(self) -> tuple[torch.Tensor]:
        return (self.sample,)


class ComponentPosterior(nn.Module):
    """``(x_t, alpha_bar, allowed) -> r`` ``(B, K)``: the posterior over components given x_t."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("variances", mixture.variances.clone())
        self.register_buffer("log_weights", mixture.weights.log())

    def forward(self, x: torch.Tensor, alpha_bar: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        ab = alpha_bar[:, None, None]
        var = ab * self.variances + (1 - ab)
        diff = x[:, None, :] - ab.sqrt() * self.means
        logits = -0.5 * ((diff**2 / var) + torch.log(var)).sum(-1) + self.log_weights
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -math.inf)
        return torch.softmax(logits, dim=-1)


class PosteriorMean(nn.Module):
    """``(x_t, alpha_bar, r) -> E[x0 | x_t]`` ``(B, D)`` (Tweedie, per component, then mixed)."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("variances", mixture.variances.clone())

    def forward(self, x: torch.Tensor, alpha_bar: torch.Tensor, responsibilities: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar[:, None, None]
        var = ab * self.variances + (1 - ab)
        gain = ab.sqrt() * self.variances / var
        per_comp = self.means + gain * (x[:, None, :] - ab.sqrt() * self.means)
        return torch.einsum("bk,bkd->bd", responsibilities.to(per_comp.dtype), per_comp)


class GaussianMixtureDenoiser(nn.Module):
    """Exact denoiser of a :class:`GaussianMixture` under a VP schedule (module doc).

    ``forward(sample, timestep, class_labels=None, encoder_hidden_states=None,
    return_dict=True)`` returns :class:`DenoiserOutput` with the prediction of
    ``prediction_type`` (``"epsilon"``, ``"sample"`` or ``"v_prediction"``), or a 1-tuple when
    ``return_dict=False``. ``encoder_hidden_states`` and other keyword arguments are accepted
    and ignored (so pipelines and hook tests can pass them). Also: :meth:`predict_epsilon`,
    :meth:`predict_x0`, :meth:`score`, :meth:`responsibilities`.
    """

    def __init__(
        self,
        mixture: GaussianMixture,
        alphas_cumprod: torch.Tensor | None = None,
        prediction_type: str = "epsilon",
        sample_shape: Sequence[int] | None = None,
        scheduler: Any = None,
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}")
        if scheduler is not None:
            if alphas_cumprod is not None:
                raise ValueError("pass alphas_cumprod or scheduler, not both")
            alphas_cumprod = scheduler.alphas_cumprod
        if alphas_cumprod is None:
            alphas_cumprod = ddpm_alphas_cumprod()
        ab = torch.as_tensor(alphas_cumprod).detach().to("cpu", _F64).flatten()
        if ab.numel() < 1 or not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        shape = (mixture.dim,) if sample_shape is None else tuple(int(s) for s in sample_shape)
        if math.prod(shape) != mixture.dim:
            raise ValueError(f"sample_shape {shape} does not hold D={mixture.dim} values")
        self.mixture = mixture
        self.prediction_type = prediction_type
        self.sample_shape = shape
        self.register_buffer("alphas_cumprod", ab)
        self.register_buffer("classes", mixture.classes.clone())
        self.posterior = ComponentPosterior(mixture)
        self.x0_head = PosteriorMean(mixture)
        self.config = types.SimpleNamespace(
            num_train_timesteps=ab.numel(),
            prediction_type=prediction_type,
            sample_shape=shape,
            in_channels=shape[0] if len(shape) > 1 else mixture.dim,
            out_channels=shape[0] if len(shape) > 1 else mixture.dim,
            sample_size=shape[-1] if len(shape) > 1 else None,
            num_components=mixture.num_components,
            num_classes=mixture.num_classes,
            dim=mixture.dim,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype pipelines should feed (float32); the arithmetic inside is float64."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def extra_repr(self) -> str:
        return (
            f"K={self.config.num_components}, D={self.config.dim}, "
            f"prediction_type={self.prediction_type!r}, T={self.config.num_train_timesteps}"
        )

    # -- helpers

    def alpha_bar(self, timestep: Any, batch: int) -> torch.Tensor:
        """``(batch,)`` float64 alpha_bar at ``timestep`` (scalar or ``(batch,)``)."""
        t = torch.as_tensor(timestep, device=self.alphas_cumprod.device).to(_F64).flatten()
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"timestep has {t.numel()} entries for batch {batch}")
        last = self.alphas_cumprod.numel() - 1
        if bool(((t < 0) | (t > last)).any()):
            raise ValueError(f"timestep outside [0, {last}]: {t.min().item()}..{t.max().item()}")
        lo = t.floor().long().clamp(0, last)
        hi = (lo + 1).clamp(max=last)
        frac = t - lo.to(_F64)
        return self.alphas_cumprod[lo] * (1 - frac) + self.alphas_cumprod[hi] * frac

    def _flat(self, sample: torch.Tensor) -> torch.Tensor:
        x = sample.reshape(sample.shape[0], -1)
        if x.shape[1] != self.config.dim:
            raise ValueError(f"sample {tuple(sample.shape)} does not hold D={self.config.dim} values per row")
        return x.to(_F64)

    def _core(
        self, sample: torch.Tensor, timestep: Any, class_labels: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self._flat(sample)
        ab = self.alpha_bar(timestep, x.shape[0])
        allowed = _allowed(self.classes, self.config.num_classes, class_labels, x.shape[0])
        resp = self.posterior(x, ab, allowed)
        x0 = self.x0_head(x, ab, resp)
        return x, ab, resp, x0

    @staticmethod
    def _eps(x: torch.Tensor, ab: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        ab = ab[:, None]
        return (x - ab.sqrt() * x0) / (1 - ab).clamp_min(1e-12).sqrt()

    def responsibilities(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None) -> torch.Tensor:
        """``P(component | x_t)`` ``(B, K)`` float64."""
        return self._core(sample, timestep, class_labels)[2]

    def predict_x0(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None):
        """``E[x0 | x_t]`` in the sample's shape and dtype."""
        x0 = self._core(sample, timestep, class_labels)[3]
        return x0.reshape(sample.shape).to(sample.dtype)

    def predict_epsilon(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None):
        """``E[eps | x_t]`` in the sample's shape and dtype."""
        x, ab, _, x0 = self._core(sample, timestep, class_labels)
        return self._eps(x, ab, x0).reshape(sample.shape).to(sample.dtype)

    def score(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None):
        """``grad_x log p_t(x)`` in the sample's shape and dtype."""
        x, ab, _, x0 = self._core(sample, timestep, class_labels)
        ab1 = ab[:, None]
        s = -(x - ab1.sqrt() * x0) / (1 - ab1).clamp_min(1e-12)
        return s.reshape(sample.shape).to(sample.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        class_labels: Any = None,
        encoder_hidden_states: Any = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> DenoiserOutput | tuple[torch.Tensor]:
        x, ab, _, x0 = self._core(sample, timestep, class_labels)
        if self.prediction_type == "sample":
            out = x0
        else:
            eps = self._eps(x, ab, x0)
            if self.prediction_type == "epsilon":
                out = eps
            else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
                a = ab[:, None]
                out = a.sqrt() * eps - (1 - a).sqrt() * x0
        out = out.reshape(sample.shape).to(sample.dtype)
        return DenoiserOutput(sample=out) if return_dict else (out,)


# --------------------------------------------------------------------------------------------
# ready-made worlds


def random_mixture(
    num_components: int,
    dim: int,
    generator: torch.Generator | None = None,
    spread: float = 2.0,
    std_range: tuple[float, float] = (0.2, 0.5),
    isotropic: bool = True,
    num_classes: int | None = None,
) -> GaussianMixture:
    """Means ``~ N(0, spread^2)`` per coordinate, stds uniform in ``std_range`` (per component,
    or per component and coordinate if not ``isotropic``), weights uniform in [0.5, 1.5]
    (normalised); component ``k`` has class ``k % num_classes`` (default: one class each)."""
    g = generator
    means = torch.randn(num_components, dim, generator=g, dtype=_F64) * spread
    lo, hi = std_range
    shape = (num_components,) if isotropic else (num_components, dim)
    std = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=_F64)
    weights = 0.5 + torch.rand(num_components, generator=g, dtype=_F64)
    nc = num_components if num_classes is None else num_classes
    return GaussianMixture(weights, means, std**2, torch.arange(num_components) % nc)


def flat_textured_mixture(
    dim: int = 64,
    num_components: int = 4,
    flat_fraction: float = 0.5,
    flat_std: float = 0.02,
    textured_std: float = 0.5,
    generator: torch.Generator | None = None,
) -> GaussianMixture:
    """A world with "flat" and "textured" coordinates (the noise/inversion recipe's test bed).

    The first ``round(dim * flat_fraction)`` coordinates are flat: each component puts one
    constant level (in [-0.8, 0.8]) on all of them with tiny std ``flat_std``; the remaining
    coordinates are textured: per-coordinate random means ``N(0, 0.5^2)`` and std
    ``textured_std``. Use ``sample_shape=(1, 8, 8)`` for ``dim=64`` to treat it as an image.
    """
    g = generator
    n_flat = int(round(dim * flat_fraction))
    level = torch.linspace(-0.8, 0.8, num_components, dtype=_F64)
    level = level[torch.randperm(num_components, generator=g)]
    means = torch.empty(num_components, dim, dtype=_F64)
    means[:, :n_flat] = level[:, None]
    means[:, n_flat:] = 0.5 * torch.randn(num_components, dim - n_flat, generator=g, dtype=_F64)
    std = torch.full((num_components, dim), textured_std, dtype=_F64)
    std[:, :n_flat] = flat_std
    return GaussianMixture(torch.ones(num_components), means, std**2)


def continual_tasks(num_classes: int, num_tasks: int) -> list[torch.Tensor]:
    """Split classes ``0..num_classes-1`` into ``num_tasks`` consecutive tasks, as boolean
    ``(num_classes,)`` class masks usable as ``class_labels`` (a task = a set of classes)."""
    if num_classes % num_tasks:
        raise ValueError(f"{num_classes} classes do not split into {num_tasks} equal tasks")
    per = num_classes // num_tasks
    masks = []
    for t in range(num_tasks):
        m = torch.zeros(num_classes, dtype=torch.bool)
        m[t * per : (t + 1) * per] = True
        masks.append(m)
    return masks
