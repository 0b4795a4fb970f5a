"""Trained joint diffusion classifiers as Hub folders: ``config.json`` (the constructor's
arguments), ``model.safetensors`` and a ``README.md`` card (``hub_cards``' model template).

>>> import tempfile
>>> import torch
>>> model = JointDiffusion(widths=(8, 16), hidden=16)
>>> folder = save_joint(model, tempfile.mkdtemp(), metrics={"test_accuracy": 0.9}, recipe="mediffusion")
>>> sorted(p.name for p in folder.iterdir())
['README.md', 'config.json', 'metrics.json', 'model.safetensors']
>>> back = load_joint(folder)
>>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hub_cards import ArtifactError, pull, push, read_json

from ..folders import check_fits, header, refuse_outside_links, replace_files, weights_file
from .model import JointDiffusion

__all__ = ["save_joint", "load_joint", "push_joint"]

_PAPERS = {"mediffusion": "https://arxiv.org/abs/2411.09434", "jdcl": "https://arxiv.org/abs/2411.08224"}
_ARGUMENTS = {
    "num_classes",
    "image_size",
    "channels",
    "widths",
    "layers_per_block",
    "hidden",
    "dropout",
    "train_timesteps",
}


def save_joint(
    model: JointDiffusion,
    folder: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    recipe: str = "mediffusion",
    description: str | None = None,
) -> Path:
    """Write ``model`` as a Hub folder with its card (and ``metrics.json`` when given)."""
    if not isinstance(model, JointDiffusion):
        raise TypeError(f"expected a JointDiffusion, got {type(model).__name__}")
    lines = None
    if metrics:
        rows = [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))]
        lines = "\n".join(["| metric | value |", "|---|---|", *rows])
    card = {
        "title": f"Joint diffusion classifier ({recipe})",
        "description": description
        or (
            f"A tiny diffusers UNet2DModel (eps-prediction, {model.train_timesteps} linear-beta steps) whose "
            "down-block feature maps, pooled, feed an MLP classifier; trained with the denoising loss plus "
            f"cross-entropy by the `{recipe}` recipe of interventions on the shapes world (16 x 16 RGB in [-1, 1]). "
            "`model.classify(x)` gives logits, `model.denoise(x_t, t)` the noise prediction."
        ),
        "metrics": lines,
        "paper_url": _PAPERS.get(recipe),
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, model_card_kwargs=card)
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str) + "\n")

    folder = Path(folder)
    replace_files(folder, write)
    return folder


def push_joint(folder: str | os.PathLike, repo_id: str, **kwargs: Any) -> Any:
    """``hub_cards.push``: checks the folder (safetensors + JSON only) and uploads it in one commit."""
    return push(folder, repo_id, **kwargs)


def load_joint(repo_or_folder: str | os.PathLike, **kwargs: Any) -> JointDiffusion:
    """A joint model from a folder written by :func:`save_joint` or a Hub repo id (``kwargs`` go to
    ``hub_cards.pull``); the config is checked against the weights before anything is built."""
    folder = Path(repo_or_folder)
    if not folder.is_dir():
        name = os.fspath(repo_or_folder)
        if folder.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
            raise FileNotFoundError(f"no joint model folder at {name!r} (a save_joint folder or a Hub id 'owner/name')")
        folder = pull(name, **kwargs)
    refuse_outside_links(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json: not a folder written by save_joint")
    config = read_json(path, root=folder)
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: expected a JSON object of constructor arguments")
    unknown = sorted(set(config) - _ARGUMENTS)
    if unknown:
        raise ArtifactError(f"{path}: unknown arguments {unknown}; JointDiffusion takes {sorted(_ARGUMENTS)}")
    weights = weights_file(folder, "model.safetensors")
    check_fits(lambda: JointDiffusion(**config), header(weights, folder), weights, path)
    model = JointDiffusion.from_pretrained(str(folder))
    return model.eval()
