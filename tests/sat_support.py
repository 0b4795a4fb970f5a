"""Offline helpers for testing against stable-audio-tools (a plain module, not a test file).

stable-audio-tools is installed by ``bash .ci/install-audio.sh`` and imported through the public
``interventions.adapters.sat_import.import_stable_audio_tools`` (which stands in for k-diffusion's
unused imports and restores the dynamo config), as a user would. What is left here is test-only:
every real conditioner (T5, CLAP) downloads weights, so the tiny model uses a ``lut`` conditioner
with a local word-level tokenizer written to a temp dir (prompt -> cross-attention tokens) and two
``number`` conditioners (seconds_start / seconds_total), laid out like stable-audio-open-1.0: all
three go to cross-attention, the two numbers also to the global (prepended) token.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import types
import warnings
from typing import Any

import torch

from interventions.adapters import sat_import

__all__ = [
    "SAT_INSTALL_HINT",
    "sat_available",
    "import_stable_audio_tools",
    "tiny_sat_config",
    "build_tiny_sat_model",
    "generate",
    "TOKENIZER_WORDS",
]

SAT_INSTALL_HINT = sat_import.INSTALL_HINT

TOKENIZER_WORDS = [
    "drum", "drums", "kick", "snare", "hat", "loop", "beat", "piano", "guitar", "bass", "synth",
    "pad", "lead", "vocal", "strings", "ambient", "techno", "house", "jazz", "rock", "slow",
    "fast", "soft", "loud", "bright", "dark", "warm", "noise", "bpm", "120", "90", "a", "with",
    "and", "of", "the",
]  # fmt: skip
PROMPT_MAX_TOKENS = 8

_MODULES: types.SimpleNamespace | None = None
_TOKENIZER_DIR: str | None = None


def sat_available() -> bool:
    """True if stable_audio_tools and k_diffusion are installed (does not import them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("stable_audio_tools", "k_diffusion"))


def import_stable_audio_tools() -> types.SimpleNamespace:
    """The names the tests use from the diffusion_cond + DiT + generate path, imported through
    the public helper. Raises ImportError (with the install command) if not installed."""
    global _MODULES
    if _MODULES is None:
        sat = sat_import.import_stable_audio_tools()
        from stable_audio_tools.inference.generation import generate_diffusion_cond
        from stable_audio_tools.inference.sampling import sample_k, sample_rf
        from stable_audio_tools.models.diffusion import ConditionedDiffusionModelWrapper, DiTWrapper
        from stable_audio_tools.models.dit import DiffusionTransformer
        from stable_audio_tools.models.factory import create_model_from_config
        from stable_audio_tools.models.transformer import Attention, ContinuousTransformer, TransformerBlock

        _MODULES = types.SimpleNamespace(
            stable_audio_tools=sat,
            k_diffusion=sys.modules["k_diffusion"],
            create_model_from_config=create_model_from_config,
            generate_diffusion_cond=generate_diffusion_cond,
            sample_k=sample_k,
            sample_rf=sample_rf,
            DiffusionTransformer=DiffusionTransformer,
            ContinuousTransformer=ContinuousTransformer,
            TransformerBlock=TransformerBlock,
            Attention=Attention,
            ConditionedDiffusionModelWrapper=ConditionedDiffusionModelWrapper,
            DiTWrapper=DiTWrapper,
        )
    return _MODULES


def _local_tokenizer_dir() -> str:
    """A word-level fast tokenizer saved to a temp dir (AutoTokenizer.from_pretrained(dir) works
    offline). Written once per process, removed at exit."""
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is not None and os.path.isdir(_TOKENIZER_DIR):
        return _TOKENIZER_DIR
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in TOKENIZER_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()

    path = tempfile.mkdtemp(prefix="sat_tiny_tokenizer_")
    atexit.register(shutil.rmtree, path, True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": PROMPT_MAX_TOKENS,
                "padding_side": "right",
            },
            f,
        )
    _TOKENIZER_DIR = path
    return path


def tiny_sat_config(
    *,
    diffusion_objective: str = "v",
    depth: int = 2,
    embed_dim: int = 64,
    num_heads: int = 2,
    cond_dim: int = 32,
    sample_rate: int = 16000,
    sample_size: int = 16,
) -> dict[str, Any]:
    """The model config of a tiny stable-audio-open-like ``diffusion_cond`` DiT, no pretransform
    (so it denoises a 4-channel "latent" of length ``sample_size`` directly)."""
    return {
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": sample_rate,
        "audio_channels": 1,
        "model": {
            "io_channels": 4,
            "conditioning": {
                "configs": [
                    {
                        "id": "prompt",
                        "type": "lut",
                        "config": {
                            "tokenizer_name": _local_tokenizer_dir(),
                            "max_length": PROMPT_MAX_TOKENS,
                        },
                    },
                    {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                ],
                "cond_dim": cond_dim,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "type": "dit",
                "diffusion_objective": diffusion_objective,
                "config": {
                    "io_channels": 4,
                    "embed_dim": embed_dim,
                    "depth": depth,
                    "num_heads": num_heads,
                    "cond_token_dim": cond_dim,
                    "global_cond_dim": 2 * cond_dim,
                    "project_cond_tokens": False,
                    "transformer_type": "continuous_transformer",
                    "zero_init_branch_outputs": False,
                },
            },
        },
    }


def build_tiny_sat_model(seed: int = 0, **config_kw: Any) -> torch.nn.Module:
    """A tiny ``ConditionedDiffusionModelWrapper`` (DiT, ~0.2M params) built by stable-audio-tools'
    own ``create_model_from_config``; deterministic for ``seed``, eval mode, CPU, no downloads.
    The caller's global RNG state is left untouched."""
    sat = import_stable_audio_tools()
    config = tiny_sat_config(**config_kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sat.create_model_from_config(config)
    model.eval().requires_grad_(False)
    model.sample_size = config["sample_size"]  # for generate()'s default
    return model


def generate(
    model: torch.nn.Module,
    steps: int = 4,
    cfg_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 1,
    *,
    prompt: str | list[str] = "a slow ambient synth pad",
    negative_prompt: str | list[str] | None = None,
    seconds_start: float = 0.0,
    seconds_total: float = 1.0,
    sample_size: int | None = None,
    sampler_type: str | None = None,
    quiet: bool = True,
    **kw: Any,
) -> torch.Tensor:
    """Run stable-audio-tools' own ``generate_diffusion_cond`` on CPU.

    Returns the sampled latent, shape ``(batch_size, 4, sample_size)``. ``dpmpp-3m-sde`` needs
    ``steps >= 2`` (k-diffusion 0.1.1 raises UnboundLocalError for one step). Default sampler:
    ``dpmpp-3m-sde`` for the "v" objective (stable-audio-open's default; k-diffusion, one denoiser
    call per step, Brownian-tree noise seeded from the global RNG that generate_diffusion_cond
    seeds), ``euler`` for rectified_flow (one call per step). Same seed -> same output.
    ``kw`` goes to ``generate_diffusion_cond`` (e.g. ``sigma_min``, ``sigma_max``, ``callback``).
    ``quiet`` swallows the ``print(seed)``, tqdm bars and torchsde's rounding warning.
    The caller's global RNG state is left untouched.
    """
    sat = import_stable_audio_tools()
    prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch_size:
        raise ValueError(f"{len(prompts)} prompts for batch_size={batch_size}")

    def cond(texts: list[str]) -> list[dict[str, Any]]:
        return [{"prompt": t, "seconds_start": seconds_start, "seconds_total": seconds_total} for t in texts]

    if negative_prompt is not None:
        negs = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
        kw["negative_conditioning"] = cond(negs)
    if sample_size is None:
        sample_size = getattr(model, "sample_size", 16)
    if sampler_type is None:
        sampler_type = "dpmpp-3m-sde" if model.diffusion_objective == "v" else "euler"

    sink = io.StringIO()
    redirect = (
        (contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink))
        if quiet
        else (contextlib.nullcontext(), contextlib.nullcontext())
    )
    with torch.random.fork_rng(devices=[]), redirect[0], redirect[1], warnings.catch_warnings():
        if quiet:  # torchsde's BrownianTree complains about float32 rounding of sigma_min
            warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)
        out = sat.generate_diffusion_cond(
            model,
            steps=steps,
            cfg_scale=cfg_scale,
            conditioning=cond(prompts),
            batch_size=batch_size,
            sample_size=sample_size,
            seed=seed,
            device="cpu",
            sampler_type=sampler_type,
            **kw,
        )
    return out
