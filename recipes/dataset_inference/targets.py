"""The models the attacks run on, behind one small interface (:class:`Target`).

A target says how to call its denoiser at ``(x_t, t)`` with a batch of conditions (prompts, class
labels) or unconditionally, its noise schedule and prediction type (what
:func:`interventions.membership.denoising_loss` needs), and which module and site to read gradient
norms at. Three targets:

- :func:`tones_target`: a :class:`recipes.worlds.tones_model.TonesModel` (the shipped members
  model); uncond = the empty prompt, as in its training.
- :func:`stable_audio_target`: a diffusers ``StableAudioPipeline`` (Stable Audio Open). Its
  ``CosineDPMSolverMultistepScheduler`` is an EDM wrapper (``sigma_data = 1``) of a VP
  v-diffusion with ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``, and the DiT sees
  ``t in [0, 1)``; so ``alphas_cumprod[k] = cos^2(pi k / 2000)`` on a 1000-step grid and the DiT
  gets ``k / 1000``. Uncond = zero text-and-duration embeddings (the pipeline's CFG without a
  negative prompt); the duration conditioning is the clip's length.
- :func:`gmm_target`: an exact Gaussian-mixture denoiser (fast tests); conditions are class labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Target", "tones_target", "stable_audio_target", "gmm_target", "cosine_alphas_cumprod"]

#: ``predict(x_t, t, conditions)``: the denoiser's output; ``conditions=None`` is the unconditional branch.
Predict = Callable[[Tensor, Tensor, Any], Tensor]


@dataclass
class Target:
    """A denoiser to attack: ``predict``, its schedule, and where gradient norms are read."""

    predict: Predict
    alphas_cumprod: Tensor
    prediction_type: str
    module: torch.nn.Module  # what the Grads hook attaches to
    grad_site: str
    name: str = "model"


def tones_target(model: Any, grad_site: str = "transformer_blocks.3") -> Target:
    """A tones model (:mod:`recipes.worlds.tones_model`): the DiT sees ``t / 1000``, text from its
    CLIP encoder, uncond = the empty prompt."""
    from recipes.worlds import tones_model as tm

    rope = tm.rotary_embedding(model.transformer, theta=model.rope_theta)

    def predict(x: Tensor, t: Tensor, prompts: Sequence[str] | None) -> Tensor:
        texts = list(prompts) if prompts is not None else [""] * x.shape[0]
        with torch.no_grad():
            states, pooled = tm.encode_text(model.text_encoder, model.tokenizer, texts)
        return tm.denoise(model.transformer, x, t.float(), states, pooled, rope)

    alphas = tm.build_train_scheduler().alphas_cumprod
    return Target(predict, alphas, "v_prediction", model.transformer, grad_site, name="tones")


def cosine_alphas_cumprod(steps: int = 1000) -> Tensor:
    """``cos^2(pi k / (2 steps))`` for ``k < steps``: Stable Audio's VP schedule on a grid of ``steps``."""
    k = torch.arange(steps, dtype=torch.float64)
    return torch.cos(math.pi * k / (2 * steps)).pow(2).float()


def stable_audio_target(pipe: Any, seconds: float | None = None, grad_site: str = "transformer_blocks.0") -> Target:
    """A diffusers ``StableAudioPipeline``: latents ``B x C x T`` (from its VAE), prompts as captions.

    ``seconds``: the duration conditioning (default: the latent length in seconds, from the VAE's
    hop length and the sampling rate)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    tr = pipe.transformer
    device = next(tr.parameters()).device

    def duration(x: Tensor) -> float:
        if seconds is not None:
            return seconds
        return x.shape[-1] * pipe.vae.hop_length / pipe.vae.config.sampling_rate

    def predict(x: Tensor, t: Tensor, prompts: Sequence[str] | None) -> Tensor:
        with torch.no_grad():
            texts = list(prompts) if prompts is not None else [""] * x.shape[0]
            embeds = pipe.encode_prompt(texts, device, False)
            start, end = pipe.encode_duration(0.0, duration(x), device, False, x.shape[0])
            text_duration = torch.cat([embeds, start, end], dim=1)
            global_states = torch.cat([start, end], dim=2)
            if prompts is None:  # the pipeline's uncond rows: zero text-and-duration embeddings
                text_duration = torch.zeros_like(text_duration)
            rope = get_1d_rotary_pos_embed(
                tr.config.attention_head_dim // 2,
                x.shape[-1] + global_states.shape[1],
                use_real=True,
                repeat_interleave_real=False,
            )
        tt = (t.float() / 1000).reshape(1).to(device)
        return tr(
            x,
            tt,
            encoder_hidden_states=text_duration.to(x.dtype),
            global_hidden_states=global_states.to(x.dtype),
            rotary_embedding=rope,
            return_dict=False,
        )[0]

    return Target(predict, cosine_alphas_cumprod(), "v_prediction", tr, grad_site, name="stable_audio")


def gmm_target(denoiser: Any) -> Target:
    """An exact Gaussian-mixture denoiser (:mod:`recipes.worlds.gaussian_mixture`); conditions are
    integer class labels (a ``(B,)`` tensor)."""

    def predict(x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        return denoiser(x, t, class_labels=labels).sample

    return Target(predict, denoiser.alphas_cumprod.float(), denoiser.prediction_type, denoiser, "x0_head", name="gmm")
