"""The demo's :class:`~recipes.demo.steps.Task` s: the shipped shapes world (circle vs square,
judged by its evaluator CNNs), the shipped tones world (vocals vs instrumental, judged by its
waveform probes), and a real Stable Diffusion 1.5 checkpoint (cat vs dog, judged zero-shot by a
CLIP model: the same steps at full scale on a GPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .steps import Task

__all__ = ["shapes_task", "tones_task", "sd_task", "is_shapes_folder"]

SHAPES_STEPS = 10  # the shipped SAeUron statistics are per step of a 10-step DDIM run
TONES_STEPS = 10


def is_shapes_folder(path: str | os.PathLike[str]) -> bool:
    """A checkpoint folder in the shapes world's layout (it ships its evaluators)."""
    return (Path(path) / "evaluators").is_dir() and (Path(path) / "unet").is_dir()


def _pipeline_run(pipe, steps: int, guidance: float):
    def generate(prompts: Sequence[str], seed: int) -> torch.Tensor:
        with torch.no_grad():
            out = pipe(
                list(prompts),
                num_inference_steps=steps,
                guidance_scale=guidance,
                output_type="pt",
                generator=torch.Generator().manual_seed(seed),
            )
        return out.images.float().cpu()

    return generate


def shapes_task(source: str | os.PathLike[str] | None = None) -> Task:
    """Circle vs square on the shapes world (the shipped checkpoint, or a folder in its layout)."""
    from recipes.worlds import load
    from recipes.worlds import shapes as world

    loaded = load("shapes", source)
    pipe, evaluators = loaded.model, loaded.evaluators
    circle, square = world.SHAPES.index("circle"), world.SHAPES.index("square")

    def judge(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        x = images * 2 - 1
        with torch.no_grad():
            shape = evaluators["shape"](x)
            out = {"margin": shape[:, circle] - shape[:, square], "hit": shape.argmax(-1) == circle}
            for factor in ("colour", "style"):
                truth = torch.tensor([world.parse_prompt(p)[factor] for p in prompts])
                out[f"{factor} kept"] = evaluators[factor](x).argmax(-1) == truth
        return out

    def prompts(shape: int) -> tuple[str, ...]:
        return tuple(world.make_prompt(shape, c, s) for c in range(4) for s in (0, 1))

    return Task(
        name="shapes world",
        model=pipe,
        generate=_pipeline_run(pipe, SHAPES_STEPS, 3.0),
        judge=judge,
        positive="circle",
        clean=world.make_prompt(circle, 0, 0),
        corrupt=world.make_prompt(square, 0, 0),
        pos_prompts=prompts(circle),
        neg_prompts=prompts(square),
        targets=tuple(world.make_prompt(square, c, s) for c, s in ((0, 0), (1, 1), (2, 2), (3, 3))),
        steps=SHAPES_STEPS,
        strengths=(0.0, 2.0, 4.0, 8.0, 16.0, 32.0),
    )


def tones_task() -> Task:
    """Vocals vs instrumental on the shipped tones world (a bare StableAudioDiT denoiser that
    batches CFG as ``[uncond, cond]``); the margin is the vocal band's energy share in dB."""
    from recipes.worlds import load
    from recipes.worlds import tones as world

    model = load("tones").model
    factors = ("timbre", "tempo", "mood")

    def generate(prompts: Sequence[str], seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return model(list(prompts), guidance_scale=3.0, num_inference_steps=TONES_STEPS, generator=gen)

    def judge(reps: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        found = world.probes(world.synthesize(reps, torch.Generator().manual_seed(0)), details=True)
        out = {"margin": found["vocal_db"], "hit": found["vocals"] == 1}
        for factor in factors:
            out[f"{factor} kept"] = found[factor] == torch.tensor([world.parse_prompt(p)[factor] for p in prompts])
        return out

    def prompt(timbre: int, tempo: int, mood: int, vocals: int) -> str:
        return world.make_prompt({"timbre": timbre, "tempo": tempo, "mood": mood, "vocals": vocals})

    combos = [(t, s, m) for t in range(3) for s, m in ((0, 0), (1, 1))]
    return Task(
        name="tones world",
        model=model.transformer,
        generate=generate,
        judge=judge,
        positive="vocals",
        clean=prompt(0, 0, 0, 1),
        corrupt=prompt(0, 0, 0, 0),
        pos_prompts=tuple(prompt(*c, 1) for c in combos),
        neg_prompts=tuple(prompt(*c, 0) for c in combos),
        targets=(prompt(1, 0, 0, 0), prompt(2, 1, 1, 0), prompt(0, 1, 0, 0)),
        steps=TONES_STEPS,
        strengths=(0.0, 2.0, 4.0, 8.0, 16.0),
        attach_kw={"cfg": ("uncond", "cond")},
    )


def _clip_judge(judge: str, labels: tuple[str, str], device: torch.device):
    """Zero-shot CLIP: ``margin`` = logit(labels[0]) - logit(labels[1]) per image."""
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(judge, use_safetensors=True).to(device).eval()
    tokens = AutoTokenizer.from_pretrained(judge)(list(labels), padding=True, return_tensors="pt").to(device)
    size = clip.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device)[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device)[:, None, None]

    def score(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.interpolate(images.to(device), size=(size, size), mode="bicubic", antialias=True)
        with torch.no_grad():
            logits = clip(pixel_values=((x.clamp(0, 1) - mean) / std), **tokens).logits_per_image.float().cpu()
        margin = logits[:, 0] - logits[:, 1]
        return {"margin": margin, "hit": margin > 0}

    return score


def sd_task(model: str, judge: str, steps: int = 25) -> Task:
    """Cat vs dog on a Stable Diffusion 1.5 checkpoint (a Hub id or a local folder), judged by the
    CLIP model ``judge`` (a Hub id or folder); fp16 on a GPU when there is one."""
    from diffusers import StableDiffusionPipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None, use_safetensors=True)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    places = ("on a sofa", "in a garden", "on a beach", "in the snow", "on a wooden floor", "in a city street")
    return Task(
        name=str(model),
        model=pipe,
        generate=_pipeline_run(pipe, steps, 7.5),
        judge=_clip_judge(judge, ("a photo of a cat", "a photo of a dog"), device),
        positive="cat",
        clean="a photo of a cat sitting on a sofa",
        corrupt="a photo of a dog sitting on a sofa",
        pos_prompts=tuple(f"a photo of a cat {p}" for p in places),
        neg_prompts=tuple(f"a photo of a dog {p}" for p in places),
        targets=tuple(f"a photo of a dog {p}" for p in places[:4]),
        steps=steps,
        strengths=(0.0, 4.0, 8.0, 16.0, 32.0),
    )
