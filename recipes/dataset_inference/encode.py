"""Encode a folder of ``.wav`` clips into a set folder with a ``StableAudioPipeline``'s VAE.

``python -m recipes.dataset_inference.encode --model stabilityai/stable-audio-open-1.0 --audio clips/
--out suspect_latents/ [--device cuda]``

``clips/prompts.json`` maps every file name to its caption (``{"a.wav": "warm analog pad", ...}``).
The output (``latents.safetensors`` + ``prompts.json``) is what ``interventions run dataset_inference
--suspect / --heldout`` reads (:func:`recipes.dataset_inference.sets.encode_wav_folder`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.dataset_inference.encode", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a StableAudioPipeline: Hub id or folder (safetensors only)")
    ap.add_argument("--audio", type=Path, required=True, help="folder of .wav clips and prompts.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    from diffusers import StableAudioPipeline

    from .sets import encode_wav_folder

    pipe = StableAudioPipeline.from_pretrained(args.model, use_safetensors=True).to(args.device)
    out = encode_wav_folder(pipe, args.audio, args.out, args.batch_size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
