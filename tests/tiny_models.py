"""Tiny, offline, randomly initialised models built from configs (a plain helper module, not tests).

Every builder returns a *fresh* object (tests mutate models: hooks, weight edits), built on CPU in
float32, in eval mode, with the progress bar off. Weights are deterministic for ``seed``: the
builders seed torch inside ``torch.random.fork_rng`` so the caller's global RNG state is untouched.

The classes are the real diffusers / transformers classes, so module paths match real checkpoints
(``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2`` ...). Nothing is downloaded:
tokenizers are word-level ``tokenizers`` models wrapped in ``PreTrainedTokenizerFast`` (unknown
words map to the unk token, so any prompt tokenizes).

Per-family CFG layout seen by a hook on the denoiser (guidance > 1):

=================  ==========================  ==============================================
pipeline           denoiser calls / step       batch layout
=================  ==========================  ==============================================
StableDiffusion    1 (``pipe.unet``)           2B, ``[uncond, cond]``
StableAudio        1 (``pipe.transformer``)    2B, ``[uncond, cond]``
StableDiffusion3   1 (``pipe.transformer``)    2B, ``[uncond, cond]``
Flux (true CFG)    2 (``pipe.transformer``)    B each, cond pass first, then uncond pass
DiT                1 (``pipe.transformer``)    2B, ``[cond, uncond]`` (class 1000 = null)
DDPM               1 (``pipe.unet``)           B (no guidance)
=================  ==========================  ==============================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "WORDS",
    "word_tokenizer",
    "clip_tokenizer",
    "t5_tokenizer",
    "sd_pipeline",
    "sd_unet",
    "controlnet_pipeline",
    "wan22_pipeline",
    "run_wan22",
    "wan_transformer",
    "stable_audio_pipeline",
    "sd3_pipeline",
    "flux_pipeline",
    "dit_pipeline",
    "ddpm_pipeline",
    "gpt2_lm",
    "llama_lm",
]

# A small closed vocabulary: enough for the prompts used in tests and docs. Anything else -> unk.
WORDS: tuple[str, ...] = tuple(
    """
    a an the of and or with without in on at to from by for is are this that it not no very
    red green blue yellow black white orange purple pink brown gray grey gold silver dark bright
    circle square triangle star cross line dot dots stripes striped checker solid shape shapes
    small big large tiny huge round sharp soft hard smooth rough
    cat dog bird fish horse cow car tree house flower sky sea mountain river city forest road
    photo painting drawing sketch picture image portrait landscape style art cartoon realistic
    tone sine square sawtooth noise beat drum drums piano guitar bass voice vocals music song
    loud quiet slow fast high low major minor chord melody rhythm hammer hitting wooden surface
    blurry bad quality ugly deformed good beautiful best worst detailed simple
    one two three four five six seven eight nine ten
    """.split()
) + tuple(".,!?;:'\"-()")


def _words_vocab(specials: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for tok in list(specials) + list(WORDS):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def word_tokenizer(
    specials: Sequence[str],
    *,
    unk: str,
    template: str | None,
    model_max_length: int,
    pad: str | None = None,
    bos: str | None = None,
    eos: str | None = None,
    padding_side: str = "right",
):
    """A lower-casing, whitespace/punctuation-splitting WordLevel ``PreTrainedTokenizerFast``.

    ``template`` is a ``TemplateProcessing`` single-sequence template such as ``"<bos> $A <eos>"``
    (``None``: no special tokens added).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = _words_vocab(specials)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template is not None:
        names = [t for t in template.split() if t not in ("$A", "$B")]
        tok.post_processor = processors.TemplateProcessing(
            single=template,
            pair=template.replace("$A", "$A $B") if "$A" in template else None,
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(names)],
        )
    kw = {k: v for k, v in dict(unk_token=unk, pad_token=pad, bos_token=bos, eos_token=eos).items() if v is not None}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side=padding_side, **kw
    )


# CLIP-style: <bos> words <eos>, padded with <pad>. ids: <pad>=0 <unk>=1 <bos>=2 <eos>=3.
_CLIP_SPECIALS = ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>")
CLIP_PAD, CLIP_UNK, CLIP_BOS, CLIP_EOS = 0, 1, 2, 3
CLIP_MAX_LEN = 16


def clip_tokenizer(model_max_length: int = CLIP_MAX_LEN):
    return word_tokenizer(
        _CLIP_SPECIALS,
        unk="<unk>",
        template="<|startoftext|> $A <|endoftext|>",
        model_max_length=model_max_length,
        pad="<pad>",
        bos="<|startoftext|>",
        eos="<|endoftext|>",
    )


# T5-style: words </s>, padded with <pad>. ids: <pad>=0 </s>=1 <unk>=2.
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
T5_MAX_LEN = 16


def t5_tokenizer(model_max_length: int = T5_MAX_LEN):
    return word_tokenizer(
        _T5_SPECIALS,
        unk="<unk>",
        template="$A </s>",
        model_max_length=model_max_length,
        pad="<pad>",
        eos="</s>",
    )


def _vocab_size(specials: Sequence[str]) -> int:
    return len(_words_vocab(specials))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish(obj):
    """eval() every nn.Module component, disable progress bars."""
    if isinstance(obj, torch.nn.Module):
        return obj.eval()
    for v in getattr(obj, "components", {}).values():
        if isinstance(v, torch.nn.Module):
            v.eval()
            v.requires_grad_(False)
    if hasattr(obj, "set_progress_bar_config"):
        obj.set_progress_bar_config(disable=True)
    return obj


def _clip_text(with_projection: bool = False, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=_vocab_size(_CLIP_SPECIALS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LEN,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        pad_token_id=CLIP_PAD,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,  # != 2: pooled output taken at the first <eos>, not argmax(id)
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg)


def _t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=_vocab_size(_T5_SPECIALS),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def _vae(latent_channels: int = 4, flow: bool = False):
    """Two blocks -> vae_scale_factor 2 (image 16x16 <-> latent 8x8)."""
    from diffusers import AutoencoderKL

    kw = (
        dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
        if flow
        else dict(scaling_factor=0.18215)
    )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=16,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Diffusion pipelines
# ---------------------------------------------------------------------------------------------


def sd_unet(**overrides: Any):
    """The tiny SD ``UNet2DConditionModel`` of :func:`sd_pipeline` (random weights, unseeded);
    ``overrides`` change its config (SDXL's wider text and added conditioning)."""
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=2,  # diffusers' legacy name: number of heads
    )
    return UNet2DConditionModel(**{**config, **overrides})


def sd_pipeline(seed: int = 0):
    """Tiny ``StableDiffusionPipeline``: 16x16 images, 8x8x4 latents, DDIM.

    UNet layout mirrors SD 1.x: cross-attention in ``down_blocks.0``, ``mid_block`` and
    ``up_blocks.1`` (``up_blocks.0`` / ``down_blocks.1`` are plain), each with ``attn1``
    (self) and ``attn2`` (cross). Call: ``pipe(["a red circle"], num_inference_steps=3,
    guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt")``.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with _seeded(seed):
        unet = sd_unet()
        vae = _vae(4)
        text_encoder = _clip_text(hidden=32)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def sdxl_pipeline(seed: int = 0):
    """Tiny ``StableDiffusionXLPipeline``: 16x16 images, 8x8x4 latents, Euler with SDXL base's
    leading spacing; two CLIP text encoders (``encoder_hidden_states`` 32 + 32 wide, pooled 16),
    a UNet with ``addition_embed_type="text_time"`` (time ids 6 x 4)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    with _seeded(seed):
        unet = sd_unet(
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 * 4 + 16,
        )
        vae = _vae(4)
        text_encoder = _clip_text(hidden=32, projection_dim=16)
        text_encoder_2 = _clip_text(with_projection=True, hidden=32, projection_dim=16)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1),
        add_watermarker=False,
    )
    return _finish(pipe)


def stable_audio_pipeline(seed: int = 0):
    """Tiny ``StableAudioPipeline``: stereo, 8 Hz (!), max 2.0 s = 16 samples, 8 latent frames.

    ``audio_end_in_s`` defaults to the maximum (2.0 s); any value in (0, 2.0] works.
    Needs ``torchsde`` (CosineDPMSolverMultistepScheduler uses a Brownian tree).
    """
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )

    with _seeded(seed):
        transformer = StableAudioDiTModel(
            sample_size=8,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            num_key_value_attention_heads=2,
            out_channels=4,
            cross_attention_dim=16,
            time_proj_dim=16,
            global_states_input_dim=32,  # = 2 x conditioning_dim (start, end)
            cross_attention_input_dim=16,
        )
        vae = AutoencoderOobleck(
            encoder_hidden_size=6,
            downsampling_ratios=[1, 2],
            decoder_channels=4,
            decoder_input_channels=4,
            audio_channels=2,
            channel_multiples=[2, 4],
            sampling_rate=8,
        )
        text_encoder = _t5_encoder(32)
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=32, conditioning_dim=16, min_value=0, max_value=32
        )
    scheduler = CosineDPMSolverMultistepScheduler(
        solver_order=2,
        prediction_type="v_prediction",
        sigma_data=1.0,
        sigma_schedule="exponential",
    )
    pipe = StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection_model,
        tokenizer=t5_tokenizer(),
        transformer=transformer,
        scheduler=scheduler,
    )
    return _finish(pipe)


def sd3_pipeline(seed: int = 0):
    """Tiny ``StableDiffusion3Pipeline``: 16x16 images, 8x8x4 latents, patch 2 (16 tokens).

    ``text_encoder_3`` / ``tokenizer_3`` are None: the pipeline substitutes zeros for the T5
    tokens (16 of them, = CLIP ``model_max_length``), so the joint text sequence is 32 tokens.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # = 2 x CLIP hidden (the two CLIPs are concatenated)
            caption_projection_dim=32,
            pooled_projection_dim=64,  # = 2 x CLIP projection_dim
            out_channels=4,
            pos_embed_max_size=16,
        )
        text_encoder = _clip_text(with_projection=True, hidden=32, projection_dim=32)
        text_encoder_2 = _clip_text(with_projection=True, hidden=32, projection_dim=32)
        vae = _vae(4, flow=True)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return _finish(pipe)


def flux_pipeline(seed: int = 0, guidance_embeds: bool = False):
    """Tiny ``FluxPipeline``: 16x16 images, 8x8x4 latents packed 2x2 -> 16 tokens of 16 ch.

    ``pipe.default_sample_size`` is set to 8 so the default height/width is 16 (the class
    default would be 256). Pass ``max_sequence_length=16`` (T5 pads to 512 by default).
    True CFG: ``true_cfg_scale > 1`` *and* a ``negative_prompt`` -> two sequential transformer
    calls per step (cond, then uncond). ``guidance_embeds=True`` makes it FLUX.1-dev-like
    (``guidance_scale`` fed to the transformer as an embedding); default is schnell-like.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # = T5 d_model
            pooled_projection_dim=32,  # = CLIP hidden
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 4, 8),
        )
        text_encoder = _clip_text(hidden=32)
        text_encoder_2 = _t5_encoder(32)
        vae = _vae(4, flow=True)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.default_sample_size = 8
    return _finish(pipe)


def dit_pipeline(seed: int = 0):
    """Tiny ``DiTPipeline``: 1000 classes (+ null class 1000), 8x8x4 latents, learned sigma.

    Call: ``pipe(class_labels=[1, 2], num_inference_steps=3, guidance_scale=3.0,
    generator=..., output_type="np")``. With guidance the denoiser batch is ``[cond, uncond]``.
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    with _seeded(seed):
        transformer = DiTTransformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=8,  # learned sigma, like facebook/DiT-XL-2-256
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            num_embeds_ada_norm=1000,
            norm_num_groups=4,
        )
        vae = _vae(4)
    pipe = DiTPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=DDIMScheduler(clip_sample=False),
        id2label={i: f"class{i}" for i in range(1000)},
    )
    return _finish(pipe)


def ddpm_pipeline(seed: int = 0):
    """Tiny unconditional ``DDPMPipeline``: 8x8 RGB, attention in ``down_blocks.1``,
    ``up_blocks.0`` and ``mid_block``. Call: ``pipe(num_inference_steps=3, output_type="np")``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with _seeded(seed):
        unet = UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=8,
        )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    return _finish(pipe)


# ---------------------------------------------------------------------------------------------
# Language models
# ---------------------------------------------------------------------------------------------

_LM_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def lm_tokenizer(bos: bool):
    """Word-level LM tokenizer. ids: <pad>=0 <unk>=1 <s>=2 </s>=3. ``bos``: prepend <s>."""
    return word_tokenizer(
        _LM_SPECIALS,
        unk="<unk>",
        template="<s> $A" if bos else None,
        model_max_length=64,
        pad="<pad>",
        bos="<s>",
        eos="</s>",
        padding_side="left",  # for batched generate()
    )


def gpt2_lm(seed: int = 0, **config_overrides):
    """Tiny ``GPT2LMHeadModel`` (2 layers, 64 dim, 4 heads, 64 positions) + word tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=_vocab_size(_LM_SPECIALS),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        **config_overrides,
    )
    with _seeded(seed):
        model = GPT2LMHeadModel(cfg)
    return _finish(model), lm_tokenizer(bos=False)


def llama_lm(seed: int = 0, **config_overrides):
    """Tiny ``LlamaForCausalLM`` (2 layers, 64 dim, 4 heads, 2 KV heads) + word tokenizer
    that prepends ``<s>``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=_vocab_size(_LM_SPECIALS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        **config_overrides,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(cfg)
    return _finish(model), lm_tokenizer(bos=True)


def wan_transformer():
    """A tiny ``WanTransformer3DModel`` (2 layers, 2 heads of 8, text width 32), random weights."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )


def wan22_pipeline(seed: int = 0):
    """Tiny Wan 2.2 ``WanPipeline``: two transformers (``transformer`` for the high-noise steps,
    ``transformer_2`` below ``boundary_ratio``), sequential CFG passes named by ``cache_context``,
    a UMT5 text encoder and a Wan VAE. Call with ``height=16, width=16, num_frames=1``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    with _seeded(seed):
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1],
            num_res_blocks=1,
            temperal_downsample=[False],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
        config = UMT5Config(
            vocab_size=_vocab_size(_T5_SPECIALS),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        pipe = WanPipeline(
            tokenizer=t5_tokenizer(),
            text_encoder=UMT5EncoderModel(config),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            transformer=wan_transformer(),
            transformer_2=wan_transformer(),
            boundary_ratio=0.5,
        )
    return _finish(pipe)


def run_wan22(pipe, steps: int = 4):
    """One call of :func:`wan22_pipeline`'s pipeline: ``steps`` steps, the first ``steps - 1`` by
    ``transformer`` (above the boundary), the last by ``transformer_2``; two CFG passes each."""
    return pipe(
        "a red circle",
        negative_prompt="blue",
        height=16,
        width=16,
        num_frames=1,
        num_inference_steps=steps,
        guidance_scale=3.0,
        guidance_scale_2=2.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
        max_sequence_length=16,
    )


def controlnet_pipeline(seed: int = 0):
    """The tiny SD pipeline with a ControlNet made from its UNet
    (``StableDiffusionControlNetPipeline``; pass ``image=`` a 1x3x16x16 control image)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = sd_pipeline(seed)
    with _seeded(seed + 1):
        controlnet = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(4, 8))
    pipe = StableDiffusionControlNetPipeline(
        **{k: v for k, v in sd.components.items() if k != "image_encoder"},
        controlnet=controlnet,
        image_encoder=None,
    )
    return _finish(pipe)
