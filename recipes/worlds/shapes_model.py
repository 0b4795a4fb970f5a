"""Tiny text-to-image model of the shapes world, assembled as a real ``StableDiffusionPipeline``.

- Denoiser: ``UNet2DConditionModel`` (1.0M parameters) working directly on 3 x 16 x 16 pixels:
  block_out_channels (32, 64), one layer per block, cross-attention only at 8x8 (the first block a
  plain ``DownBlock2D``, the last a plain ``UpBlock2D``), 8 heads of dim 8, 8 norm groups.
- Text encoder: ``CLIPTextModel`` from a config (hidden 64, 2 layers, 4 heads, 8 positions) with the
  word-level tokenizer of :mod:`recipes.worlds.shapes`.
- "VAE": :class:`IdentityVAE`, an ``AutoencoderKL`` subclass with one block (so the pipeline's
  ``vae_scale_factor`` is 1: latent size = image size), ``scaling_factor`` 1, and ``encode`` /
  ``decode`` that are the identity. Justification: a learned VAE would cost training time and
  add reconstruction error that the evaluators would blame on the denoiser; the identity keeps
  every pipeline code path (``vae.decode(latents / scaling_factor)``, image post-processing,
  img2img-style ``encode(...).latent_dist``) exactly as with real Stable Diffusion checkpoints.
  Its (unused) weights are a few KB.
- Scheduler: ``DDIMScheduler`` on the training schedule (1000 steps, ``squaredcos_cap_v2``,
  epsilon) with ``clip_sample=False``: clipping x0 while keeping the unclipped noise prediction
  breaks classifier-free guidance on this data (measured: 87.5% at guidance 1 fell to 1.6% at 3).

Checkpoint folder layout (diffusers-like; only safetensors and JSON)::

    model_index.json
    unet/{config.json, diffusion_pytorch_model.safetensors}
    text_encoder/{config.json, model.safetensors}
    tokenizer/{tokenizer.json, tokenizer_config.json, ...}
    scheduler/scheduler_config.json
    vae/{config.json, diffusion_pytorch_model.safetensors}
    evaluators/{config.json, shape.safetensors, colour.safetensors, style.safetensors}

``load_pipeline(path)`` rebuilds the pipeline from such a folder (default: the shipped one);
``load_evaluators(path)`` returns the three evaluator CNNs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import shapes as world
from .saving import drop_source_paths
from .text import load_text_encoder, text_encoder_config

__all__ = [
    "CHECKPOINT_DIR",
    "UNET_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "VAE_CONFIG",
    "SCHEDULER_CONFIG",
    "IdentityVAE",  # noqa: F822 (a lazy module attribute: importing diffusers costs seconds)
    "build_unet",
    "build_text_encoder",
    "build_vae",
    "build_train_scheduler",
    "build_scheduler",
    "build_pipeline",
    "save_pipeline",
    "load_pipeline",
    "load_evaluators",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "shapes"

UNET_CONFIG = dict(
    sample_size=world.SIZE,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=8,
)

TEXT_ENCODER_CONFIG = text_encoder_config(world.vocabulary(), world.MAX_LENGTH)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(8,),
    layers_per_block=1,
    latent_channels=3,
    norm_num_groups=8,
    sample_size=world.SIZE,
    scaling_factor=1.0,
    force_upcast=False,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=False,
)


def _identity_vae_class():
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    class IdentityVAE(AutoencoderKL):
        """``AutoencoderKL`` whose latent space *is* pixel space: encode and decode are the
        identity (the posterior is deterministic), ``scaling_factor`` is 1, and with one block the
        pipeline's ``vae_scale_factor`` is 1. The inherited weights exist but are never used."""

        def encode(self, x, return_dict: bool = True):
            params = torch.cat([x, torch.zeros_like(x)], dim=1)
            posterior = DiagonalGaussianDistribution(params, deterministic=True)
            if not return_dict:
                return (posterior,)
            return AutoencoderKLOutput(latent_dist=posterior)

        def decode(self, z, return_dict: bool = True, generator=None):
            if not return_dict:
                return (z,)
            return DecoderOutput(sample=z)

        def forward(self, sample, sample_posterior=False, return_dict=True, generator=None):
            if not return_dict:
                return (sample,)
            return DecoderOutput(sample=sample)

    IdentityVAE.__module__ = __name__
    IdentityVAE.__qualname__ = "IdentityVAE"
    return IdentityVAE


class _LazyVAE:
    """Defers importing diffusers until the class is first needed."""

    cls = None

    def __call__(self):
        if _LazyVAE.cls is None:
            _LazyVAE.cls = _identity_vae_class()
        return _LazyVAE.cls


_vae_class = _LazyVAE()


def __getattr__(name):  # module-level lazy attributes
    if name == "IdentityVAE":
        return _vae_class()
    if name == "ModelMixin":
        # diffusers' ``from_pretrained`` checks a component's class against the base classes that
        # the library named in model_index.json exposes; this lets
        # ``StableDiffusionPipeline.from_pretrained(folder)`` load the IdentityVAE by itself.
        from diffusers import ModelMixin

        return ModelMixin
    raise AttributeError(name)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def build_vae():
    return _vae_class()(**VAE_CONFIG)


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_scheduler():
    """The sampling scheduler shipped with the pipeline (DDIM, ``clip_sample=False``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(unet=None, text_encoder=None, tokenizer=None, vae=None, scheduler=None):
    """Assemble a ``StableDiffusionPipeline`` from (by default freshly initialised) parts."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else build_vae(),
        text_encoder=text_encoder if text_encoder is not None else build_text_encoder(),
        tokenizer=tokenizer if tokenizer is not None else world.build_tokenizer(),
        unet=unet if unet is not None else build_unet(),
        scheduler=scheduler if scheduler is not None else build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, path) -> None:
    """Write the pipeline's parts as safetensors + JSON configs (no pickle)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.unet.save_pretrained(path / "unet", safe_serialization=True)
    pipe.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
    pipe.tokenizer.save_pretrained(path / "tokenizer")
    pipe.scheduler.save_pretrained(path / "scheduler")
    pipe.vae.save_pretrained(path / "vae", safe_serialization=True)
    drop_source_paths(path)
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "_note": "vae is recipes.worlds.shapes_model.IdentityVAE (an AutoencoderKL subclass with "
        "identity encode/decode); load with recipes.worlds.shapes_model.load_pipeline",
        "vae": ["recipes.worlds.shapes_model", "IdentityVAE"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", type(pipe.scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_pipeline(path=None, device="cpu", dtype=torch.float32):
    """Load the shapes ``StableDiffusionPipeline`` from a checkpoint folder (default: shipped):
    safetensors and JSON only, each config checked against its weights first (:mod:`recipes.folders`)."""
    import diffusers
    from diffusers import SchedulerMixin, UNet2DConditionModel
    from transformers import PreTrainedTokenizerFast

    from hub_cards import ArtifactError, read_json

    from ..folders import load_component, refuse_outside_links

    path = Path(path) if path is not None else CHECKPOINT_DIR
    refuse_outside_links(path)
    sched_path = path / "scheduler" / "scheduler_config.json"
    name = read_json(sched_path, root=path).get("_class_name", "DDIMScheduler")
    sched_cls = getattr(diffusers, name, None) if isinstance(name, str) and name.endswith("Scheduler") else None
    if not (isinstance(sched_cls, type) and issubclass(sched_cls, SchedulerMixin)):
        raise ArtifactError(f"{sched_path}: '_class_name' {str(name)[:80]!r} is not a diffusers scheduler")
    weights = "diffusion_pytorch_model.safetensors"
    vae_cls = _vae_class()
    pipe = build_pipeline(
        unet=load_component(UNet2DConditionModel, path / "unet", weights, path, UNet2DConditionModel.from_config),
        text_encoder=load_text_encoder(path),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(path / "tokenizer"),
        vae=load_component(vae_cls, path / "vae", weights, path, vae_cls.from_config),
        scheduler=sched_cls.from_pretrained(path / "scheduler"),
    )
    pipe.unet.eval()
    pipe.text_encoder.eval()
    if str(device) != "cpu" or dtype != torch.float32:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe


def load_evaluators(path=None):
    """The three evaluator CNNs (``{"shape": ..., "colour": ..., "style": ...}``) of a folder."""
    from .shapes_eval import load_evaluators as _load

    path = Path(path) if path is not None else CHECKPOINT_DIR
    return _load(path / "evaluators")
