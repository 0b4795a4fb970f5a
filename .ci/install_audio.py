"""Add stable-audio-tools' text-to-audio path to the running Python, never touching what is there.

Plain ``pip install stable-audio-tools`` resolves ~170 packages including a CUDA torch (via
k-diffusion -> torchvision). This route instead installs:

1. the pinned packages below with ``--no-deps`` (their own pins would pull torch, torchvision,
   numpy<2, ...), and only those not installed at all;
2. the few pure dependencies that the diffusion_cond path (DiT, conditioners, generate) imports,
   only those not installed, after pip's dry run shows that none of what they pull in would
   replace an installed distribution (pip deletes the files of a distribution it replaces).

Left out on purpose: torchaudio (PyPI has none for torch 2.13, and its Linux wheels carry CUDA
libraries that do not load with a CPU torch; stable-audio-tools uses it only to resample audio),
and k-diffusion's unused top-level imports (torchvision, clean-fid, clip, scikit-image).
``interventions.adapters.sat_import.import_stable_audio_tools`` stands in for those at import.
Also left out, imported lazily by other model types only: vector-quantize-pytorch, x-transformers,
local-attention, ema-pytorch, encodec, laion-clap, prefigure, auraloss, wandb, gradio,
v-diffusion-pytorch, PyWavelets, descript-audio-codec, pytorch-lightning, webdataset, pandas.

An installed distribution at another version than the pin is left as it is, with a note. torch
must be installed already; it is pinned to its installed version for every pip call.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile

PINNED = {
    "stable-audio-tools": "0.0.19",
    "k-diffusion": "0.1.1",
    "alias-free-torch": "0.0.6",
    "einops-exts": "0.0.4",
    "dctorch": "0.1.2",
}
LOOSE = ("einops", "safetensors", "huggingface-hub", "scipy", "torchsde", "torchdiffeq", "jsonmerge", "tqdm", "pillow")
SMOKE = "import einops, safetensors, huggingface_hub, einops_exts, alias_free_torch, dctorch, scipy, torchsde, torchdiffeq, jsonmerge, tqdm, PIL"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Canonical name -> version of every distribution this Python sees."""
    return {canonical(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}


def plan(have: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """What to install: (``name==version`` for --no-deps, loose names, notes on what is kept)."""
    pinned = [f"{n}=={v}" for n, v in PINNED.items() if canonical(n) not in have]
    notes = [
        f"{n} {have[canonical(n)]} is installed (this route was tested with {v}); left as it is"
        for n, v in PINNED.items()
        if canonical(n) in have and have[canonical(n)] != v
    ]
    return pinned, [n for n in LOOSE if canonical(n) not in have], notes


def replaced(report: dict, have: dict[str, str]) -> list[str]:
    """Installed distributions that pip's ``--report`` would replace, as ``name old -> new``."""
    out = []
    for item in report.get("install", []):
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name in have:
            out.append(f"{name} {have[name]} -> {version}")
    return out


def main() -> int:
    have = installed()
    if "torch" not in have:
        print(f"install-audio: torch is not installed in {sys.executable}; install a CPU torch first", file=sys.stderr)
        return 1
    pinned, loose, notes = plan(have)
    for note in notes:
        print(f"install-audio: {note}")
    if not pinned and not loose:
        print("install-audio: stable-audio-tools route already in place")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(f"torch=={have['torch']}\n")
        constraints.flush()
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-c",
            constraints.name,
        ]
        if pinned:  # none of them is installed, and --no-deps pulls nothing else: nothing replaced
            subprocess.run([*pip, "-q", "--no-deps", *pinned], check=True)
        if loose:
            dry = subprocess.run(
                [*pip, "-q", "--dry-run", "--report", "-", *loose], check=True, capture_output=True, text=True
            )
            clash = replaced(json.loads(dry.stdout), have)
            if clash:
                print(
                    f"install-audio: installing {' '.join(loose)} would replace installed {', '.join(clash)}; "
                    "nothing changed. Install them yourself if that is what you want, then rerun.",
                    file=sys.stderr,
                )
                return 1
            print("install-audio: pip may now report dependency conflicts of the --no-deps packages above;")
            print("install-audio: they are expected (their pins are what this route avoids) and harmless here.")
            subprocess.run([*pip, "-q", *loose], check=True)
    subprocess.run([sys.executable, "-c", SMOKE], check=True)
    print(f"install-audio: done (torch {have['torch']} and every installed distribution untouched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
