"""The experiments of "There and Back Again" on a denoiser: noise -> DDIM sample -> DDIM inversion
(with and without the forward-noising fix), measured with :mod:`recipes.taba.metrics`; and the
same noise through a series of training checkpoints.

A denoiser is a ``denoise(x, t)`` callable with its scheduler (:class:`Model`): build one from a
diffusers pipeline with :func:`pipeline_model` (Stable-Diffusion-like pipelines with a text encoder,
or unconditional ``UNet2DModel`` pipelines such as DDPM), or from the Gaussian-mixture world's
exact denoiser with :func:`gmm_model`.

>>> import torch
>>> from recipes.taba.experiment import gmm_model, measure
>>> model = gmm_model(seed=0)
>>> r = measure(model, torch.randn(16, 64, generator=torch.Generator().manual_seed(1)), steps=20)
>>> r["distance"]["sample_inverted"] < r["distance"]["noise_sample"]
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interventions.inversion import Denoise, ddim_invert, ddim_sample

from .metrics import assignment_accuracy, flat_mask, flat_stats, stable_from, triangle

__all__ = ["Model", "gmm_model", "pipeline_model", "load_training_checkpoint", "measure", "training_dynamics"]


@dataclass
class Model:
    """A denoiser, its scheduler, the shape of one sample, and how to find flat coordinates of
    samples (``flat(samples) -> bool mask``, of one row's shape or of the batch's)."""

    denoise: Denoise
    scheduler: Any
    shape: tuple[int, ...]
    flat: Callable[[torch.Tensor], torch.Tensor]
    info: dict = field(default_factory=dict)


def gmm_model(seed: int = 0, dim: int = 64) -> Model:
    """The flat-vs-textured Gaussian mixture (:func:`recipes.worlds.gaussian_mixture.
    flat_textured_mixture`, world seed ``seed``) with its exact denoiser on diffusers' default DDPM
    schedule; its first half of coordinates are the flat ones."""
    from diffusers import DDPMScheduler

    from recipes.worlds.gaussian_mixture import flat_textured_mixture

    scheduler = DDPMScheduler()
    mixture = flat_textured_mixture(dim=dim, generator=torch.Generator().manual_seed(seed))
    denoiser = mixture.denoiser(scheduler=scheduler)
    flat = torch.zeros(dim, dtype=torch.bool)
    flat[: dim // 2] = True
    return Model(
        lambda x, t: denoiser(x, t).sample, scheduler, (dim,), lambda s: flat, {"model": "gmm", "world_seed": seed}
    )


def pipeline_model(
    pipe: Any, prompts: Sequence[str] | None = None, guidance_scale: float = 1.0, flat_threshold: float = 0.02
) -> Model:
    """A diffusers pipeline's denoiser in its latent space. With a text encoder (Stable Diffusion
    and alike: ``encode_prompt``), ``prompts`` (one per row; default ``""``) condition it, with
    classifier-free guidance when ``guidance_scale > 1``; an unconditional ``UNet2DModel`` (DDPM)
    is called as it is. Flat coordinates: :func:`~recipes.taba.metrics.flat_mask` of the sample."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ValueError(
            f"{type(pipe).__name__} has no `unet`; for other denoisers (DiT, audio) build a "
            "recipes.taba.experiment.Model from a denoise(x, t) callable"
        )
    channels, size = unet.config.in_channels, unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    shape = (channels, size, size)
    info = {"model": type(pipe).__name__, "guidance_scale": guidance_scale}
    flat = lambda s: flat_mask(s, flat_threshold)  # noqa: E731
    if not hasattr(pipe, "encode_prompt"):
        return Model(lambda x, t: unet(x, t).sample, pipe.scheduler, shape, flat, info)
    cfg = guidance_scale > 1

    def embeddings(n: int) -> torch.Tensor:
        texts = list(prompts) if prompts is not None else [""] * n
        if len(texts) != n:
            raise ValueError(f"{len(texts)} prompts for {n} rows")
        cond, uncond = pipe.encode_prompt(texts, unet.device, 1, cfg, [""] * n if cfg else None)
        return torch.cat([uncond, cond]) if cfg else cond

    cache: dict[int, torch.Tensor] = {}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = cache.setdefault(x.shape[0], embeddings(x.shape[0]))
        if not cfg:
            return unet(x, t, encoder_hidden_states=emb).sample
        uncond, cond = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return Model(denoise, pipe.scheduler, shape, flat, info)


def load_training_checkpoint(folder: str | Path, base: Any = None) -> Any:
    """The shapes pipeline (``base``, default the shipped one) with the UNet and text encoder of a
    checkpoint written by ``scripts/taba_checkpoints.py`` (float16 safetensors; cast back)."""
    import copy

    from safetensors.torch import load_file

    from recipes.worlds import shapes_model

    folder = Path(folder)
    files = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}
    missing = [str(folder / k / f) for k, f in files.items() if not (folder / k / f).is_file()]
    if missing:
        raise FileNotFoundError(f"not a training checkpoint (missing {', '.join(missing)})")
    pipe = copy.deepcopy(base) if base is not None else shapes_model.load_pipeline()
    for name, fname in files.items():
        module = getattr(pipe, name)
        weights = load_file(str(folder / name / fname))
        module.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
    return pipe


def measure(
    model: Model,
    noise: torch.Tensor,
    steps: int = 100,
    forward_steps: Sequence[int] = (2,),
    forward_seed: int = 1000,
    model_timesteps: Sequence[str] = ("source",),
    progress: bool = False,
) -> dict:
    """Sample from ``noise``, invert (plain and with each ``forward_steps`` fix, for each
    ``model_timesteps`` convention; ``"source"`` by default, see the package docstring), and
    measure. Returns the metrics per variant (``"variants"``, named ``<convention>_fix<K>``;
    ``"distance"`` and ``"angle"`` repeat the first one's), the model's ``info`` and the tensors (``"tensors"``: noise, sample, each inversion)."""
    sample = ddim_sample(model.denoise, noise, model.scheduler, steps, progress=progress)
    flat = model.flat(sample)
    out: dict[str, Any] = {
        "model": model.info,
        "steps": steps,
        "n": noise.shape[0],
        "noise_flat": flat_stats(noise, flat),
        "assign": {
            "noise_to_sample": assignment_accuracy(noise, sample),
            "sample_to_noise": assignment_accuracy(sample, noise),
        },
        "variants": {},
    }
    tensors = {"noise": noise, "sample": sample}
    for convention in model_timesteps:
        for k in (0, *forward_steps):
            g = torch.Generator().manual_seed(forward_seed)
            inv = ddim_invert(
                model.denoise,
                sample,
                model.scheduler,
                steps,
                forward_steps=k,
                generator=g,
                model_timestep=convention,
                progress=progress,
            )
            name = f"{convention}_fix{k}"
            tri = triangle(noise, sample, inv)
            out["variants"][name] = {
                "distance": tri["distance"],
                "distance_std": tri["distance_std"],
                "angle": tri["angle"],
                "flat": flat_stats(inv, flat),
                "assign": {
                    "inverted_to_noise": assignment_accuracy(inv, noise),
                    "noise_to_inverted": assignment_accuracy(noise, inv),
                    "inverted_to_sample": assignment_accuracy(inv, sample),
                    "sample_to_inverted": assignment_accuracy(sample, inv),
                },
                "std": float(inv.double().std()),
                "per_row": tri["per_row"],
            }
            tensors[name] = inv
    first = next(iter(out["variants"].values()))
    out["distance"], out["angle"] = first["distance"], first["angle"]
    out["tensors"] = tensors
    return out


def training_dynamics(
    models: Sequence[tuple[int, Model]], noise: torch.Tensor, steps: int = 100, tol: float = 0.05
) -> dict:
    """Fixed ``noise`` through each ``(training_step, model)`` (in training order): per checkpoint
    the assignment accuracies noise <-> sample, how many samples are nearest to the *last*
    checkpoint's sample from the same noise (``match_final``), and their distance to it relative
    to the mean distance between different final samples; and the step from which each curve
    stays within ``tol`` of its end (:func:`~recipes.taba.metrics.stable_from`)."""
    from tqdm.auto import tqdm

    samples = [
        ddim_sample(m.denoise, noise, m.scheduler, steps, progress=False) for _, m in tqdm(models, "checkpoints")
    ]
    final = samples[-1].reshape(len(noise), -1).double()
    spread = float(torch.cdist(final, final).sum() / (len(final) * (len(final) - 1)))
    curves: dict[str, list[float]] = {k: [] for k in ("noise_to_sample", "sample_to_noise", "match_final", "to_final")}
    for s in samples:
        curves["noise_to_sample"].append(assignment_accuracy(noise, s))
        curves["sample_to_noise"].append(assignment_accuracy(s, noise))
        curves["match_final"].append(assignment_accuracy(s, samples[-1]))
        curves["to_final"].append(float((s.reshape(len(noise), -1).double() - final).norm(dim=1).mean()) / spread)
    train_steps = [step for step, _ in models]
    return {
        "train_steps": train_steps,
        "curves": curves,
        "stable_from": {k: stable_from(train_steps, v, tol) for k, v in curves.items()},
        "tol": tol,
        "samples": samples,
    }
