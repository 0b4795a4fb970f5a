"""The models the benchmarks run, built from configs (nothing is downloaded).

The tiny StableDiffusionPipeline builder is copied from ``tests/tiny_models.py`` (benchmarks do
not import the test suite); GPT-2 is the real 124M GPT2Config() shape with random weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

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


def sd_pipeline(seed: int = 0):
    """Tiny ``StableDiffusionPipeline``: 16x16 images, 8x8x4 latents, DDIM.

    UNet layout mirrors SD 1.x: cross-attention in ``down_blocks.0``, ``mid_block`` and
    ``up_blocks.1`` (``up_blocks.0`` / ``down_blocks.1`` are plain), each with ``attn1``
    (self) and ``attn2`` (cross). Call: ``pipe(["a red circle"], num_inference_steps=3,
    guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt")``.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(
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


def gpt2_small(seed: int = 0):
    """GPT2LMHeadModel(GPT2Config()): the 124M GPT-2 small shape, random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with _seeded(seed):
        model = GPT2LMHeadModel(GPT2Config())
    return model.eval().requires_grad_(False)
