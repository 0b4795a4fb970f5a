"""The joint diffusion classifier shared by Mediffusion and JDCL: one diffusers ``UNet2DModel``
that denoises, plus a classifier head on its encoder.

The head reads the output feature map of every down block of the UNet run on the *clean* image
(timestep 0), global-average-pools each, concatenates them and maps them through an MLP to class
logits (Mediffusion, arXiv 2411.09434; JDCL, arXiv 2411.08224). The feature maps are read with the
core's hooks (:func:`interventions.attach` on ``down_blocks.*:output.0``, ``stop=True`` so that the
mid block and decoder are skipped), never by editing diffusers' forward. The hook is a
``Cache(detach=False)``: a joint model needs the cross-entropy gradient in the encoder (and the
counterfactual guidance needs it in the input), so the recorded maps keep their graph.

With ``class_conditional=True`` the UNet also takes a class embedding (``num_classes + 1``
entries, the last meaning "no class"): a class-conditional generator for classifier-free guidance
(:meth:`JointDiffusion.guided_eps`); the classifier always reads the features with "no class".

The model is its own Hub artifact (``hub_cards.ModelHubMixin``: ``config.json`` + ``model.safetensors``
+ card), see :mod:`recipes.joint_diffusion.hub`.

>>> import torch
>>> model = JointDiffusion(num_classes=2, widths=(8, 16), hidden=16)
>>> x = torch.zeros(3, 3, 16, 16)
>>> model.classify(x).shape
torch.Size([3, 2])
>>> model.denoise(x, torch.tensor([5, 5, 5])).shape
torch.Size([3, 3, 16, 16])
>>> v_model = JointDiffusion(widths=(8, 16), prediction="v_prediction")  # the UNet outputs v, denoise() eps
>>> v_model.denoising_loss(x).shape, v_model.denoise(x, torch.tensor([5, 5, 5])).shape
(torch.Size([]), torch.Size([3, 3, 16, 16]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hub_cards import ModelHubMixin
from interventions import Cache, attach

__all__ = ["JointDiffusion", "FEATURE_SITE", "PREDICTIONS"]

#: The site pattern of every down block's output feature map (diffusers returns (hidden, skips)).
FEATURE_SITE = "down_blocks.{}:output.0"
BETA_START, BETA_END = 1e-4, 0.02  # the linear noise schedule's ends (DDPM's)
#: What the UNet outputs: the noise ``eps`` or ``v = sqrt(abar) eps - sqrt(1 - abar) x0``.
PREDICTIONS = ("epsilon", "v_prediction")


def ddim_scheduler(train_timesteps: int, clip_sample: bool) -> Any:
    """A diffusers ``DDIMScheduler`` on the joint models' linear schedule (``clip_sample``: keep
    samples in [-1, 1], for images; off for unbounded data)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        clip_sample=clip_sample,
        set_alpha_to_one=True,
    )


def _only(entries: dict[Any, Tensor]) -> Tensor:
    (value,) = entries.values()
    return value


class JointDiffusion(
    nn.Module,
    ModelHubMixin,
    tags=["diffusion", "classifier", "joint-diffusion", "unet2d"],
):
    """A tiny ``UNet2DModel`` (eps- or v-prediction) plus an MLP head on its pooled encoder features.

    ``widths``: channels of the down blocks (one block per entry, plain ``DownBlock2D``);
    ``hidden``/``dropout``: the head's MLP; ``train_timesteps``: length of the linear beta schedule;
    ``class_conditional``: the denoiser also takes a class (``labels`` of :meth:`denoise`);
    ``prediction``: what the UNet is trained to output, one of :data:`PREDICTIONS`.

    ``"v_prediction"`` is what a UNet this small needs to *generate*: with ``"epsilon"`` the
    sampler's first steps read ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``, which multiplies
    the UNet's error by up to ``1 / sqrt(abar_999) = 157``; a 42k-parameter UNet cannot output the
    near-identity map that needs, so its samples are full-frame noise. With ``v`` the error at high
    noise reaches ``x0`` unamplified. :meth:`denoise` returns the noise prediction either way, so
    samplers and guidance do not change.
    """

    def __init__(
        self,
        num_classes: int = 2,
        image_size: int = 16,
        channels: int = 3,
        widths: Sequence[int] = (16, 32),
        layers_per_block: int = 1,
        hidden: int = 64,
        dropout: float = 0.3,
        train_timesteps: int = 1000,
        class_conditional: bool = False,
        prediction: str = "epsilon",
    ):
        super().__init__()
        from diffusers import UNet2DModel

        widths = [int(w) for w in widths]
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not widths or any(w < 1 or w % 4 for w in widths):
            raise ValueError(f"widths must be non-empty multiples of 4 (GroupNorm of 4 groups), got {widths}")
        if image_size % 2 ** (len(widths) - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**(len(widths)-1) = {2 ** (len(widths) - 1)}"
            )
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.num_classes = num_classes
        self.prediction = prediction
        self.train_timesteps = train_timesteps
        self.class_conditional = class_conditional
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(widths),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(widths),
            up_block_types=("UpBlock2D",) * len(widths),
            norm_num_groups=4,
            num_class_embeds=num_classes + 1 if class_conditional else None,
        )
        self.head = nn.Sequential(
            nn.Linear(sum(widths), hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        betas = torch.linspace(BETA_START, BETA_END, train_timesteps)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0), persistent=False)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(channels, size, size)``: the shape of one sample."""
        config = self.unet.config
        return (config.in_channels, config.sample_size, config.sample_size)

    def ddim_scheduler(self) -> Any:
        """A diffusers ``DDIMScheduler`` on this model's noise schedule (samples clipped to [-1, 1])."""
        return ddim_scheduler(self.train_timesteps, clip_sample=True)

    def features(self, x: Tensor) -> Tensor:
        """``B x sum(widths)``: the pooled feature map of every down block for clean images ``x``.

        Runs the UNet at timestep 0 under :func:`interventions.attach` with ``stop=True``: the
        forward ends once the last down block has fired.
        """
        maps = Cache(clone=False, detach=False)
        sites = [FEATURE_SITE.format(i) for i in range(len(self.unet.down_blocks))]
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with attach(self.unet, dict.fromkeys(sites, maps), stop=True, on_unfired="error"):
            self.unet(x, t, class_labels=self._classes(None, x))
        # one entry per site; the core labels rows that carry class labels with a CFG branch
        return torch.cat([_only(maps.entries(site)).mean(dim=(2, 3)) for site in sites], dim=1)

    def classify(self, x: Tensor) -> Tensor:
        """Class logits ``B x num_classes`` of clean images ``x`` in ``[-1, 1]``."""
        return self.head(self.features(x))

    def _classes(self, labels: Tensor | None, x: Tensor) -> Tensor | None:
        """The UNet's class input: ``labels`` (``-1`` or ``None``: "no class"); ``None`` when unconditional."""
        if not self.class_conditional:
            if labels is not None:
                raise ValueError("labels given to a model built without class_conditional=True")
            return None
        if labels is None:
            return torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return torch.where(labels < 0, self.num_classes, labels).to(x.device)

    def predict(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The UNet's raw output (``eps`` or ``v``, as :attr:`prediction` says) for noisy images
        ``x_t`` at integer timesteps ``t`` (given class ``labels`` when class-conditional; ``None``
        or ``-1``: "no class")."""
        return self.unet(x_t, t, class_labels=self._classes(labels, x_t)).sample

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What :meth:`predict` is trained to output for ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction == "epsilon":
            return noise
        abar = self._abar(t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def denoise(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The noise prediction ``eps`` for noisy images ``x_t`` at integer timesteps ``t`` (given
        class ``labels`` when class-conditional; ``None`` or ``-1``: "no class"), whatever the
        UNet outputs (``v`` becomes ``sqrt(abar) v + sqrt(1 - abar) x_t``)."""
        out = self.predict(x_t, t, labels)
        if self.prediction == "epsilon":
            return out
        abar = self._abar(t, x_t)
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t

    def x0_estimate(self, x_t: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """The denoised estimate ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, clipped to
        ``[-1, 1]``: what classifier guidance classifies (``eps``: an already computed
        :meth:`denoise` output; ``None``: computed here)."""
        eps = self.denoise(x_t, t) if eps is None else eps
        abar = self._abar(t, x_t)
        return ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)

    def guided_eps(self, x_t: Tensor, t: Tensor, labels: Tensor, scale: float) -> Tensor:
        """Classifier-free guidance: ``eps(no class) + scale * (eps(labels) - eps(no class))``."""
        if not self.class_conditional:
            raise ValueError("classifier-free guidance needs a model built with class_conditional=True")
        both = self.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([torch.full_like(labels, -1), labels]))
        free, cond = both.chunk(2)
        return free + scale * (cond - free)

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar_t`` per row of ``like``, shaped to broadcast over its image dimensions."""
        return self.alphas_cumprod.to(like.device)[t].view(-1, 1, 1, 1)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (the forward process)."""
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def denoising_loss(
        self, x0: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Mean MSE of :meth:`predict` against :meth:`target` at uniformly drawn timesteps (the
        diffusion half of the loss); ``labels`` (class-conditional models; ``-1``: "no class")
        condition the denoiser."""
        t = torch.randint(self.train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return F.mse_loss(self.predict(self.add_noise(x0, noise, t), t, labels), self.target(x0, noise, t))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(x)
