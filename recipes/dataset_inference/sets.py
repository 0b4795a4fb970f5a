"""Suspect and held-out sets on disk: a folder with ``latents.safetensors`` (one tensor,
``latents``: ``N x C x T``, the model's input space) and ``prompts.json`` (``N`` captions).

Only safetensors and JSON are read. For the tones model the latents are the world's semitone
representation (:func:`write_catalogue_sets` writes member, held-out and non-member folders); for
Stable Audio Open they are its VAE latents of ``.wav`` clips (:func:`encode_wav_folder`, captions
from ``prompts.json`` mapping file names to captions).

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as d:
...     _ = save_set(d, torch.zeros(2, 3, 4), ["a", "b"])
...     s = load_set(d)
>>> tuple(s.latents.shape), s.conditions
((2, 3, 4), ['a', 'b'])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .features import SampleSet

__all__ = ["save_set", "load_set", "write_catalogue_sets", "encode_wav_folder"]

LATENTS = "latents.safetensors"
PROMPTS = "prompts.json"


def save_set(folder: str | Path, latents: torch.Tensor, prompts: list[str]) -> Path:
    """Write one set (see the module doc); returns the folder."""
    from safetensors.torch import save_file

    if len(prompts) != latents.shape[0]:
        raise ValueError(f"{latents.shape[0]} latents but {len(prompts)} prompts")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().float().cpu().contiguous()}, str(folder / LATENTS))
    (folder / PROMPTS).write_text(json.dumps(list(prompts), indent=0) + "\n")
    return folder


def load_set(folder: str | Path) -> SampleSet:
    """Read a set written by :func:`save_set` (or by hand in the same layout), checked."""
    from safetensors import safe_open

    from hub_cards import read_json

    folder = Path(folder)
    missing = [name for name in (LATENTS, PROMPTS) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: a set folder holds {LATENTS} (tensor 'latents', N x C x T) and "
            f"{PROMPTS} (a list of N captions); write one with recipes.dataset_inference.sets.save_set"
        )
    with safe_open(str(folder / LATENTS), framework="pt") as f:
        if list(f.keys()) != ["latents"]:
            raise ValueError(f"{folder / LATENTS} must hold one tensor named 'latents', has {list(f.keys())}")
        latents = f.get_tensor("latents").float()
    prompts = read_json(folder / PROMPTS, root=folder)
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{folder / PROMPTS} must be a JSON list of strings (one caption per latent)")
    if len(prompts) != latents.shape[0]:
        raise ValueError(f"{folder}: {latents.shape[0]} latents but {len(prompts)} prompts")
    return SampleSet(latents, prompts)


def write_catalogue_sets(
    out: str | Path, members: int, heldout: int, nonmembers: int, member_count: int
) -> dict[str, Path]:
    """Folders ``members/`` (the first ``members`` of the model's ``member_count`` training
    clips), ``heldout/`` and ``nonmembers/`` (fresh catalogue clips, disjoint seeds)."""
    from . import catalogue

    if members > member_count:
        raise ValueError(f"the model has {member_count} members; asked for {members}")
    out = Path(out)
    m = catalogue.members(member_count)
    h, n = catalogue.fresh(heldout, seed=1), catalogue.fresh(nonmembers, seed=2)
    return {
        "members": save_set(out / "members", m.reps[:members], m.prompts[:members]),
        "heldout": save_set(out / "heldout", h.reps, h.prompts),
        "nonmembers": save_set(out / "nonmembers", n.reps, n.prompts),
    }


def encode_wav_folder(pipe: Any, audio_dir: str | Path, out: str | Path, batch_size: int = 8) -> Path:
    """Encode every ``*.wav`` of ``audio_dir`` with a ``StableAudioPipeline``'s VAE into a set folder.

    Clips are resampled to the VAE's rate, made stereo, cut or zero-padded to the longest clip;
    captions come from ``audio_dir/prompts.json`` (``{"file.wav": "caption", ...}``)."""
    from scipy.io import wavfile

    from hub_cards import read_json

    audio_dir = Path(audio_dir)
    files = sorted(audio_dir.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no .wav files in {audio_dir}")
    captions = read_json(audio_dir / PROMPTS, root=audio_dir) if (audio_dir / PROMPTS).is_file() else None
    if not isinstance(captions, dict) or not all(f.name in captions for f in files):
        raise ValueError(f"{audio_dir / PROMPTS} must map every .wav file name to its caption")
    rate = pipe.vae.config.sampling_rate
    clips = []
    for f in files:
        sr, data = wavfile.read(f)
        x = torch.as_tensor(data).float()
        if data.dtype.kind == "i":
            x = x / float(2 ** (8 * data.dtype.itemsize - 1))
        x = x.T if x.ndim == 2 else x[None]
        x = x[:2] if x.shape[0] >= 2 else x.expand(2, -1)
        if sr != rate:
            x = torch.nn.functional.interpolate(x[None], scale_factor=rate / sr, mode="linear")[0]
        clips.append(x)
    length = max(c.shape[-1] for c in clips)
    audio = torch.stack([torch.nn.functional.pad(c, (0, length - c.shape[-1])) for c in clips])
    device = next(pipe.vae.parameters()).device
    latents = []
    with torch.no_grad():
        for i in range(0, len(audio), batch_size):
            batch = audio[i : i + batch_size].to(device, pipe.vae.dtype)
            latents.append(pipe.vae.encode(batch).latent_dist.mode().float().cpu())
    return save_set(out, torch.cat(latents), [captions[f.name] for f in files])
