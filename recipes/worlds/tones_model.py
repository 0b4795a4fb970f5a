"""Tiny text-to-audio model of the tones world: a real ``StableAudioDiTModel``.

- Denoiser: diffusers ``StableAudioDiTModel`` working directly on the world's representation
  (``B x 53 x 16``: a semitone spectrogram of 49 note bins + 4 vocal formant bands x 16 frames of
  62.5 ms; see :mod:`recipes.worlds.tones`) -- the 53 bins are the ``in_channels``, the frames the
  sequence. 4 blocks, 4 heads of dim 32 (inner width 128 > 53 channels per token), 2 key/value
  heads.
  Positions come from the rotary embedding built as ``StableAudioPipeline`` builds it
  (``get_1d_rotary_pos_embed(head_dim // 2, T + 1, use_real=True, repeat_interleave_real=False)``,
  ``+1`` for the prepended global token; without it the model has no positions) EXCEPT for
  ``theta = ROPE_THETA = 100`` instead of 10,000: with 16 rotary dims and 17 positions, theta
  10,000 leaves only 2 of 8 frequency pairs turning noticeably, and models trained with it learned
  a "bag of frames" (right notes and timbre, no note durations: tempo at chance).
- Text encoder: ``CLIPTextModel`` from a config (hidden 64, 2 layers, 4 heads, 12 positions),
  trained jointly, with the offline word-level tokenizer of :mod:`recipes.worlds.tones`. Its last
  hidden states feed cross-attention (``encoder_hidden_states``); its pooled output is the
  prepended global token (``global_hidden_states``, B x 1 x 64).
- Diffusion: v-prediction on a 1000-step cosine (``squaredcos_cap_v2``) schedule; the DiT's
  Gaussian-Fourier timestep embedding gets the continuous time ``t / 1000`` in ``[0, 1)`` (as
  Stable Audio's does), not the integer step. Sampling (:func:`generate`): ``DDIMScheduler`` with
  ``clip_sample=False`` (clipping x0 but not the noise prediction breaks CFG), classifier-free guidance
  with batched ``[uncond, cond]`` rows (the StableAudioPipeline order), empty prompt = uncond.
- Why not ``StableAudioPipeline``: its latents go through an Oobleck VAE and its conditioning
  through a T5 + seconds-start/end projection model; here the "latent" is the semitone
  representation itself and the decoder is the world's additive synthesiser
  (:func:`recipes.worlds.tones.synthesize`), so :func:`generate` is a short hand-written loop with
  the same transformer call, rotary embedding and CFG layout as the pipeline.

Checkpoint folder layout (only safetensors and JSON)::

    transformer/{config.json, diffusion_pytorch_model.safetensors}
    text_encoder/{config.json, model.safetensors}
    tokenizer/{tokenizer.json, tokenizer_config.json, ...}
    scheduler/scheduler_config.json
    sampling.json        rope theta, timestep scale, CFG row order
    training.json

``load_model(path)`` rebuilds a :class:`TonesModel` from such a folder (default: the shipped one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import tones as world
from .saving import drop_source_paths
from .text import load_text_encoder, text_encoder_config

__all__ = [
    "CHECKPOINT_DIR",
    "TRANSFORMER_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "SCHEDULER_CONFIG",
    "TonesModel",
    "build_transformer",
    "build_text_encoder",
    "build_train_scheduler",
    "build_scheduler",
    "ROPE_THETA",
    "rotary_embedding",
    "generate",
    "evaluate",
    "save_model",
    "load_model",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "tones"

TRANSFORMER_CONFIG = dict(
    sample_size=world.N_TOKENS,
    in_channels=world.N_CHANNELS,
    out_channels=world.N_CHANNELS,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    num_key_value_attention_heads=2,
    cross_attention_dim=128,
    time_proj_dim=64,
    global_states_input_dim=64,
    cross_attention_input_dim=64,
)

TEXT_ENCODER_CONFIG = text_encoder_config(world.vocabulary(), world.MAX_LENGTH)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
)

TIME_SCALE = 1000.0  # the DiT sees t / TIME_SCALE


def build_transformer(**overrides):
    from diffusers import StableAudioDiTModel

    return StableAudioDiTModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_scheduler():
    """The sampling scheduler: DDIM, ``clip_sample=False``, v-prediction, cosine schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=True, steps_offset=0)


ROPE_THETA = 100.0


def rotary_embedding(transformer, length: int = world.N_TOKENS, theta: float = ROPE_THETA):
    """Rotary embedding as ``StableAudioPipeline`` builds it (+1 for the global token), with
    ``theta`` (the pipeline's default is 10,000; this model is trained with ``ROPE_THETA``)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(
        transformer.config.attention_head_dim // 2, length + 1, theta=theta, use_real=True, repeat_interleave_real=False
    )


def encode_text(text_encoder, tokenizer, prompts: list[str]):
    """-> (cross-attention states B x L x 64, global states B x 1 x 64)."""
    device = next(text_encoder.parameters()).device
    with torch.device("cpu"):  # the tokenizer makes its tensors on the default device
        ids = tokenizer(
            list(prompts), padding="max_length", max_length=world.MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
    ids = ids.to(device)
    out = text_encoder(ids)
    return out.last_hidden_state, out.pooler_output[:, None, :]


def denoise(transformer, x, t, states, pooled, rope):
    """One call of the DiT with the continuous timestep ``t / 1000``."""
    tt = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0]) / TIME_SCALE
    return transformer(
        x, tt, encoder_hidden_states=states, global_hidden_states=pooled, rotary_embedding=rope, return_dict=False
    )[0]


@dataclass
class TonesModel:
    """Everything needed to sample: ``model(prompts, guidance_scale=3.0)`` -> representations,
    ``model.to_audio(reps)`` -> waveforms at 8 kHz."""

    transformer: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    rope_theta: float = ROPE_THETA

    def __call__(self, prompts, **kw):
        return generate(self, prompts, **kw)

    @staticmethod
    def to_audio(reps, generator: torch.Generator | None = None):
        return world.synthesize(reps, generator)

    def eval(self):
        self.transformer.eval()
        self.text_encoder.eval()
        return self


@torch.no_grad()
def generate(
    model: TonesModel,
    prompts,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    negative_prompt: str = "",
) -> torch.Tensor:
    """Sample representations (B x 53 x 16) for ``prompts`` with DDIM.

    With ``guidance_scale > 1`` the DiT gets one batch of ``[uncond, cond]`` rows per step (the
    unconditional prompt is ``negative_prompt``, by default the empty prompt used in training) and
    ``v = v_u + s (v_c - v_u)``; at scale 1 only the conditional rows run."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tr, te = model.transformer, model.text_encoder
    sched = model.scheduler
    device = next(tr.parameters()).device
    n = len(prompts)
    cfg = guidance_scale != 1.0
    states, pooled = encode_text(te, model.tokenizer, list(prompts))
    if cfg:
        su, pu = encode_text(te, model.tokenizer, [negative_prompt] * n)
        states, pooled = torch.cat([su, states]), torch.cat([pu, pooled])
    shape = (n, world.N_CHANNELS, world.N_TOKENS)
    x = torch.randn(shape, generator=generator).to(device) if latents is None else latents.to(device)
    rope = rotary_embedding(tr, theta=model.rope_theta)
    sched.set_timesteps(num_inference_steps)
    for t in sched.timesteps:
        inp = torch.cat([x, x]) if cfg else x
        v = denoise(tr, inp, t, states, pooled, rope)
        if cfg:
            vu, vc = v.chunk(2)
            v = vu + guidance_scale * (vc - vu)
        x = sched.step(v, t, x).prev_sample
    return x


@torch.no_grad()
def evaluate(
    model: TonesModel, n: int = 128, scales=(1.0, 3.0), steps: int = 25, seed: int = 7, return_samples: bool = False
):
    """Prompt following: ``n`` random paraphrased prompts per scale, judged by the probes on the
    synthesised audio. -> {f"g{scale}": {"all": .., factor: ..}}."""
    g = torch.Generator().manual_seed(seed)
    f = world.sample_factors(n, g)
    prompts = world.make_prompts(f, g)
    res, samples = {}, {}
    for s in scales:
        reps = generate(
            model,
            prompts,
            guidance_scale=s,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        audio = world.synthesize(reps, torch.Generator().manual_seed(seed + 2))
        pr = world.probes(audio, details=True)
        ok_all = torch.ones(n, dtype=torch.bool)
        r = {}
        for k in world.FACTORS:
            ok = pr[k] == f[k]
            ok_all &= ok
            r[k] = ok.float().mean().item()
        r["all"] = ok_all.float().mean().item()
        res[f"g{s:g}"] = r
        samples[f"g{s:g}"] = (reps, audio, pr)
    return (res, samples, f, prompts) if return_samples else res


def save_model(model: TonesModel, path, extra: dict | None = None) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.transformer.save_pretrained(path / "transformer", safe_serialization=True)
    model.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
    model.tokenizer.save_pretrained(path / "tokenizer")
    model.scheduler.save_pretrained(path / "scheduler")
    drop_source_paths(path)
    (path / "sampling.json").write_text(
        json.dumps(
            {
                "rope_theta": model.rope_theta,
                "time_scale": TIME_SCALE,
                "cfg_layout": ["uncond", "cond"],
                "representation": "tones semitone spectrogram",
                "shape": [world.N_CHANNELS, world.N_TOKENS],
            },
            indent=2,
        )
        + "\n"
    )
    if extra is not None:
        (path / "training.json").write_text(json.dumps(extra, indent=2) + "\n")


def load_model(path=None) -> TonesModel:
    """Load a :class:`TonesModel` (eval mode, CPU) from a checkpoint folder (default: shipped):
    safetensors and JSON only, each config checked against its weights first (:mod:`recipes.folders`)."""
    from diffusers import DDIMScheduler, StableAudioDiTModel
    from transformers import PreTrainedTokenizerFast

    from hub_cards import read_json

    from ..folders import load_component, positive_float, refuse_outside_links

    path = Path(path) if path is not None else CHECKPOINT_DIR
    refuse_outside_links(path)
    theta = ROPE_THETA
    if (path / "sampling.json").exists():
        sampling = read_json(path / "sampling.json", root=path)
        value = sampling.get("rope_theta") if isinstance(sampling, dict) else None
        theta = positive_float(value, "rope_theta", path / "sampling.json")
    tr = load_component(
        StableAudioDiTModel,
        path / "transformer",
        "diffusion_pytorch_model.safetensors",
        path,
        StableAudioDiTModel.from_config,
    )
    te = load_text_encoder(path)
    tok = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    sched = DDIMScheduler.from_pretrained(path / "scheduler")
    return TonesModel(tr, te, tok, sched, rope_theta=theta).eval()
