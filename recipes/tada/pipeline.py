"""A real text-to-audio checkpoint in place of the tones model: any diffusers
``StableAudioPipeline`` (Stable Audio Open: ``stabilityai/stable-audio-open-1.0``, 24 DiT blocks),
through the same :func:`~recipes.tada.localize.localize`, :func:`~recipes.tada.caa.caa_vectors`,
steering curves and SAE functions as the tones world: the sites are the same
(``transformer_blocks.<i>.attn2`` of ``pipe.transformer``, a ``StableAudioDiTModel`` that batches
CFG rows ``[uncond, cond]``), the prompts come from templates with a ``{value}`` slot, and the
judge is an audio-text model (:class:`ClapJudge`: zero-shot CLAP over each concept's values, as
TADA scores with CLAP).

::

    interventions run tada --model stabilityai/stable-audio-open-1.0 --device cuda --concept tempo \\
        --values slow fast --prompt "a {value} piano piece" --prompt "{value} jazz with drums" \\
        --keep "instrument=piano,guitar,drums" --steps 100 --guidance 7 --n 32 --seconds 10

Not run here (no weights on these machines); ``tests/test_tada.py`` runs this code path on a tiny
``StableAudioPipeline`` built from its config with a rule-based judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tones import PromptPair

__all__ = ["TemplateModel", "PipelineModel", "ClapJudge"]

#: a judge: (waveforms [B, channels, samples], sampling rate) -> {concept: scores [B, n_values]}
Judge = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]


@dataclass
class TemplateModel:
    """What a real text-to-audio model shares with the tones world in TADA, whatever samples it:
    prompt templates (``{value}`` = the steered concept's word), the concepts the judge scores
    (``{name: values}``; the steered one first) and the judge. Subclasses sample
    (:meth:`sample_prompts`) and name the sampling rate."""

    templates: Sequence[str]
    concepts: dict[str, tuple[str, ...]]
    judge: Judge

    def __post_init__(self) -> None:
        if not self.templates or any("{value}" not in t for t in self.templates):
            raise ValueError("every prompt template needs a {value} slot, e.g. 'a {value} piano piece'")

    @property
    def sampling_rate(self) -> int:
        raise NotImplementedError

    def value_index(self, factor: str, value: str | int) -> int:
        values = self.concepts.get(factor)
        if values is None:
            raise ValueError(f"unknown concept {factor!r}; the judge scores {', '.join(self.concepts)}")
        if isinstance(value, int) and 0 <= value < len(values):
            return value
        if value not in values:
            raise ValueError(f"{factor} has no value {value!r}; its values are {', '.join(values)}")
        return values.index(str(value))

    def _templates(self, templates: Sequence[int]) -> list[str]:
        picked = [self.templates[i] for i in templates if i < len(self.templates)]
        return picked or list(self.templates)

    def prompt_pairs(
        self, factor: str, values: tuple[str, str], n: int, seed: int, templates: Sequence[int]
    ) -> list[PromptPair]:
        """``n`` pairs cycling through the templates (from ``seed``); the noise differs per row."""
        self.value_index(factor, values[0]), self.value_index(factor, values[1])
        pool = self._templates(templates)
        return [
            PromptPair(t.format(value=values[0]), t.format(value=values[1]), {})
            for t in (pool[(seed + i) % len(pool)] for i in range(n))
        ]

    def random_prompts(self, n: int, seed: int) -> list[str]:
        g = torch.Generator().manual_seed(seed)
        values = next(iter(self.concepts.values()))
        return [
            self.templates[int(torch.randint(len(self.templates), (), generator=g))].format(
                value=values[int(torch.randint(len(values), (), generator=g))]
            )
            for _ in range(n)
        ]

    def read(self, audio: torch.Tensor, factor: str | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The judge's value per concept and, for ``factor``, the score margin last minus first value."""
        scores = self.judge(audio.float().cpu(), self.sampling_rate)
        preds = {k: s.argmax(-1) for k, s in scores.items()}
        margin = scores[factor][:, -1] - scores[factor][:, 0] if factor else torch.zeros(len(audio))
        return preds, margin


@dataclass
class PipelineModel(TemplateModel):
    """A diffusers ``StableAudioPipeline`` as a TADA model (its ``StableAudioDiTModel`` is hooked,
    CFG rows ``[uncond, cond]``, the tones DiT's site names)."""

    pipe: Any
    seconds: float | None = None

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def sampling_rate(self) -> int:
        return int(self.pipe.vae.sampling_rate)

    @torch.no_grad()
    def sample_prompts(self, prompts: list[str], seed: int, *, steps: int, guidance: float) -> torch.Tensor:
        kw: dict[str, Any] = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "pt"}
        if self.seconds is not None:
            kw["audio_end_in_s"] = self.seconds
        device = self.pipe.transformer.device
        return self.pipe(prompts, generator=torch.Generator(device).manual_seed(seed), **kw).audios


@dataclass
class ClapJudge:
    """Zero-shot CLAP: per concept, the audio-text similarity of each value's word (TADA scores
    steered audio with CLAP). Loads safetensors weights only; needs the checkpoint locally or online."""

    concepts: dict[str, tuple[str, ...]]
    model_id: str = "laion/clap-htsat-unfused"

    def __post_init__(self) -> None:
        from transformers import ClapModel, ClapProcessor

        self.model = ClapModel.from_pretrained(self.model_id, use_safetensors=True).eval()
        self.processor = ClapProcessor.from_pretrained(self.model_id)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, sampling_rate: int) -> dict[str, torch.Tensor]:
        target = self.processor.feature_extractor.sampling_rate
        mono = audio.mean(1) if audio.dim() == 3 else audio
        if sampling_rate != target:
            size = int(mono.shape[-1] * target / sampling_rate)
            mono = torch.nn.functional.interpolate(mono[:, None], size=size, mode="linear")[:, 0]
        out = {}
        for name, values in self.concepts.items():
            inputs = self.processor(
                text=list(values), audios=list(mono.numpy()), sampling_rate=target, return_tensors="pt", padding=True
            )
            out[name] = self.model(**inputs).logits_per_audio
        return out
