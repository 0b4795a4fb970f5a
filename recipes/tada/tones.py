"""The tones world as TADA sees it: prompt pairs that swap one factor's word, sampling with fixed
latents (so that a clean and a swapped run start from the same noise), and the world's probes as
the evaluator.

A model is anything :func:`recipes.worlds.tones_model.generate` samples (a ``TonesModel``), or a
model with its own ``encode_prompts`` (the ground-truth split view). The DiT's CFG rows are
``[uncond, cond]``: :data:`CFG` is what ``interventions.attach`` is told.

Every TADA function also takes another model that brings its own parts (duck-typed, so the same
code path runs on it): ``transformer`` (what ``attach`` hooks), ``cfg`` (its batched CFG layout,
or None where the adapter knows it), ``cross_attn_inputs(i)`` / ``cross_attn_output(i)`` (site
names), ``block_count()``, ``prompt_pairs``, ``random_prompts``, ``value_index``,
``sample_prompts`` and ``read``: :class:`recipes.tada.pipeline.PipelineModel` (diffusers),
:class:`recipes.tada.sat.SatModel` (stable-audio-tools), :class:`recipes.tada.shapes.ShapesModel`.

Example::

    pairs = prompt_pairs("tempo", ("slow", "fast"), n=2, seed=0)
    pairs[0].clean, pairs[0].swapped  # the same prompt, "slow" / "leisurely" vs "fast" / "quick"
    reps = sample(model, [p.clean for p in pairs], seed=0)
    judge(reps)["tempo"]  # tensor([0, 0]) when the model follows the prompts
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recipes.worlds import tones as world
from recipes.worlds import tones_model as tm

__all__ = [
    "CFG",
    "PromptPair",
    "prompt_pairs",
    "value_index",
    "sample",
    "judge",
    "measure",
    "read",
    "block_count",
    "cfg_layout",
    "latents",
]

CFG = ("uncond", "cond")  # the tones DiT's batched CFG layout (tones_model.generate)


@dataclass(frozen=True)
class PromptPair:
    """Two prompts that differ in one factor's words; ``factors`` holds the clean prompt's values."""

    clean: str
    swapped: str
    factors: dict[str, int]


def value_index(factor: str, value: str | int, model: Any = None) -> int:
    """A factor value's index (``"fast"`` -> 1 for tempo); refuses unknown values by name. A
    model with its own concepts (:class:`recipes.tada.pipeline.PipelineModel`) answers itself."""
    if hasattr(model, "value_index"):
        return model.value_index(factor, value)
    return index_in(world.FACTORS, "tones", factor, value)


def index_in(factors: dict[str, Sequence[str]], world_name: str, factor: str, value: str | int) -> int:
    """``value``'s index among ``factors[factor]`` (an index in range is kept); an unknown factor
    or value is refused with the ones there are."""
    if factor not in factors:
        raise ValueError(f"unknown factor {factor!r}; the {world_name} factors are {', '.join(factors)}")
    values = factors[factor]
    if isinstance(value, int) and 0 <= value < len(values):
        return value
    if value not in values:
        raise ValueError(f"{factor} has no value {value!r}; its values are {', '.join(values)}")
    return list(values).index(str(value))


def prompt_pairs(
    factor: str,
    values: tuple[str, str],
    n: int,
    seed: int,
    templates: Sequence[int] = (0, 1, 2),
    model: Any = None,
) -> list[PromptPair]:
    """``n`` pairs: a random prompt (templates ``templates``, random synonyms, other factors
    random) with ``factor = values[0]`` and the same prompt with ``values[1]`` (same synonym slot).
    Disjoint seeds or templates give held-out prompts. A model with its own prompts answers itself."""
    if hasattr(model, "prompt_pairs"):
        return model.prompt_pairs(factor, values, n, seed, templates)
    a, b = value_index(factor, values[0]), value_index(factor, values[1])
    g = torch.Generator().manual_seed(seed)
    f = world.sample_factors(n, g)
    tmpl = torch.tensor(list(templates))[torch.randint(len(templates), (n,), generator=g)].tolist()
    syn = torch.randint(2, (n, len(world.FACTORS)), generator=g).tolist()
    out = []
    for i in range(n):
        vals = {k: int(f[k][i]) for k in world.FACTORS}
        clean = world.make_prompt({**vals, factor: a}, tmpl[i], syn[i])
        swapped = world.make_prompt({**vals, factor: b}, tmpl[i], syn[i])
        out.append(PromptPair(clean, swapped, {**vals, factor: a}))
    return out


def latents(n: int, seed: int) -> torch.Tensor:
    """The starting noise of ``n`` samples for ``seed``: every run of one comparison shares it."""
    return torch.randn((n, world.N_CHANNELS, world.N_TOKENS), generator=torch.Generator().manual_seed(seed))


def _encode(model: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(model, "encode_prompts"):
        return model.encode_prompts(prompts)
    return tm.encode_text(model.text_encoder, model.tokenizer, prompts)


@torch.no_grad()
def sample(model: Any, prompts: Sequence[str], seed: int, *, steps: int = 20, guidance: float = 3.0) -> torch.Tensor:
    """DDIM samples (B x 53 x 16) for ``prompts`` from the latents of ``seed``, CFG rows
    ``[uncond, cond]`` in one batch (as :func:`recipes.worlds.tones_model.generate`); a model
    with its own sampler (a pipeline) samples itself."""
    if hasattr(model, "sample_prompts"):
        return model.sample_prompts(list(prompts), seed, steps=steps, guidance=guidance)
    prompts = list(prompts)
    n = len(prompts)
    states, pooled = _encode(model, prompts)
    su, pu = _encode(model, [""] * n)
    states, pooled = torch.cat([su, states]), torch.cat([pu, pooled])
    x = latents(n, seed)
    rope = tm.rotary_embedding(model.transformer, theta=model.rope_theta)
    sched = model.scheduler
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        vu, vc = tm.denoise(model.transformer, torch.cat([x, x]), t, states, pooled, rope).chunk(2)
        x = sched.step(vu + guidance * (vc - vu), t, x).prev_sample
    return x


def judge(reps: torch.Tensor, seed: int = 0, model: Any = None) -> dict[str, torch.Tensor]:
    """The world's probes on the synthesised waveforms: a value index per factor and sample."""
    if hasattr(model, "read"):
        return model.read(reps, None)[0]
    return read(reps, "timbre", seed)[0]


def _mood_margin(reps: torch.Tensor, root_midi: torch.Tensor) -> torch.Tensor:
    """(minor third - major third) / both: energy of the bins 3 and 4 semitones above the
    probe's root, summed over frames (-1 major ... +1 minor)."""
    amp = ((world.unpatchify(reps.float()) + 1) / 2).clamp(0, 1.5) ** 2
    root = (root_midi - world.MIDI_LO).clamp(0, world.N_NOTE_BINS - 5)
    rows = torch.arange(len(reps))
    n3, n4 = amp[rows, root + 3].sum(-1), amp[rows, root + 4].sum(-1)
    return (n3 - n4) / (n3 + n4).clamp_min(1e-6)


def read(
    reps: torch.Tensor, factor: str, seed: int = 0, model: Any = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The probes' value per factor and sample (:func:`judge`) and a continuous reading of
    ``factor`` (:func:`measure`), from one synthesis; a model with its own judge reads itself."""
    if hasattr(model, "read"):
        return model.read(reps, factor)
    value_index(factor, 0)
    audio = world.synthesize(reps, torch.Generator().manual_seed(seed + 7919))
    d = world.probes(audio, details=True)
    if factor == "timbre":
        m = d["h2"] + d["h3"]
    elif factor == "tempo":
        m = d["changes"].float()
    elif factor == "mood":
        m = _mood_margin(reps, d["root"])
    else:
        m = d["vocal_db"]
    return {k: d[k] for k in world.FACTORS}, m


def measure(reps: torch.Tensor, factor: str, seed: int = 0) -> torch.Tensor:
    """A continuous reading of ``factor`` per sample, increasing with the value index (what a
    partial effect moves before the probe's decision flips): timbre ``h2 + h3`` (harmonic levels
    relative to the fundamental), tempo the number of notes, mood the minor-vs-major third margin,
    vocals the formant band's energy share in dB."""
    return read(reps, factor, seed)[1]


def block_count(model: Any) -> int:
    """The number of cross-attention layers TADA sweeps (a model with other names counts its own)."""
    if hasattr(model, "block_count"):
        return model.block_count()
    return len(model.transformer.transformer_blocks)


def cfg_layout(model: Any) -> tuple[str, ...] | None:
    """The CFG row layout to tell ``attach``: the tones DiT's :data:`CFG` unless the model names its
    own (None: ``attach``'s adapter knows it, as for pipelines and stable-audio-tools)."""
    return model.cfg if hasattr(model, "cfg") else CFG
