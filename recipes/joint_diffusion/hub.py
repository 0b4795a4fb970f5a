"""Trained joint diffusion classifiers as Hub folders: ``config.json`` (the constructor's
arguments), ``model.safetensors`` and a ``README.md`` card (``hub_cards``' model template).

Both joint models are served: the image model :class:`~recipes.joint_diffusion.model.JointDiffusion`
(shapes world) and the vector model :class:`recipes.jdcl.mlp.JointMLP` (Gaussian-mixture world);
:func:`load_joint` tells them apart by their constructor arguments (only ``JointMLP`` takes ``dim``).

>>> import tempfile
>>> import torch
>>> model = JointDiffusion(widths=(8, 16), hidden=16)
>>> folder = save_joint(model, tempfile.mkdtemp(), metrics={"test_accuracy": 0.9}, recipe="mediffusion")
>>> sorted(p.name for p in folder.iterdir())
['README.md', 'config.json', 'metrics.json', 'model.safetensors']
>>> back = load_joint(folder)
>>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
True
>>> from recipes.jdcl.mlp import JointMLP
>>> type(load_joint(save_joint(JointMLP(dim=4, num_classes=3, width=8, depth=1), tempfile.mkdtemp()))).__name__
'JointMLP'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub_cards import ArtifactError, pull, push, read_json

from ..folders import check_fits, header, refuse_outside_links, replace_files, weights_file
from .model import JointDiffusion

__all__ = ["save_joint", "load_joint", "push_joint"]

if TYPE_CHECKING:
    from recipes.jdcl.mlp import JointMLP

_PAPERS = {"mediffusion": "https://arxiv.org/abs/2411.09434", "jdcl": "https://arxiv.org/abs/2411.08224"}
#: The constructor arguments config.json may hold, per model class.
_ARGUMENTS = {
    "JointDiffusion": {
        "num_classes",
        "image_size",
        "channels",
        "widths",
        "layers_per_block",
        "hidden",
        "dropout",
        "train_timesteps",
        "class_conditional",
        "prediction",
    },
    "JointMLP": {"dim", "num_classes", "width", "depth", "hidden", "dropout", "train_timesteps"},
}


def _model_class(config: dict[str, Any]) -> type:
    """``JointMLP`` for a config with ``dim`` (vector data), else ``JointDiffusion``."""
    if "dim" in config:
        from recipes.jdcl.mlp import JointMLP

        return JointMLP
    return JointDiffusion


def _describe(model: Any, recipe: str) -> str:
    """The card's default description of ``model``."""
    if isinstance(model, JointDiffusion):
        return (
            f"A tiny {'class-conditional ' if model.class_conditional else ''}diffusers UNet2DModel "
            f"({'v' if model.prediction == 'v_prediction' else 'eps'}-prediction, {model.train_timesteps} "
            "linear-beta steps) whose "
            "down-block feature maps, pooled, feed an MLP classifier; trained with the denoising loss plus "
            f"cross-entropy by the `{recipe}` recipe of interventions on the shapes world (16 x 16 RGB in [-1, 1]). "
            "`model.classify(x)` gives logits, `model.denoise(x_t, t)` the noise prediction."
        )
    return (
        f"A residual-MLP denoiser (eps-prediction, {model.train_timesteps} linear-beta steps, "
        f"{len(model.trunk.blocks)} blocks of width {model.trunk.width}) whose block outputs on the clean input feed "
        f"an MLP classifier; trained with the denoising loss plus cross-entropy by the `{recipe}` recipe of "
        f"interventions on {model.dim}-dimensional points of the Gaussian-mixture world. "
        "`model.classify(x)` gives logits, `model.denoise(x_t, t)` the noise prediction."
    )


def save_joint(
    model: JointDiffusion | JointMLP,
    folder: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    recipe: str = "mediffusion",
    description: str | None = None,
) -> Path:
    """Write ``model`` (a ``JointDiffusion`` or ``JointMLP``) as a Hub folder with its card (and
    ``metrics.json`` when given)."""
    from recipes.jdcl.mlp import JointMLP

    if not isinstance(model, (JointDiffusion, JointMLP)):
        raise TypeError(f"expected a JointDiffusion or JointMLP, got {type(model).__name__}")
    lines = None
    if metrics:
        rows = [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))]
        lines = "\n".join(["| metric | value |", "|---|---|", *rows])
    card = {
        "title": f"Joint diffusion classifier ({recipe})",
        "description": description or _describe(model, recipe),
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


def load_joint(repo_or_folder: str | os.PathLike, **kwargs: Any) -> JointDiffusion | JointMLP:
    """A joint model (``JointDiffusion`` or ``JointMLP``, as its config says) from a folder written
    by :func:`save_joint` or a Hub repo id (``kwargs`` go to ``hub_cards.pull``); the config is
    checked against the weights before anything is built."""
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
    cls = _model_class(config)
    unknown = sorted(set(config) - _ARGUMENTS[cls.__name__])
    if unknown:
        raise ArtifactError(
            f"{path}: unknown arguments {unknown}; {cls.__name__} takes {sorted(_ARGUMENTS[cls.__name__])}"
        )
    weights = weights_file(folder, "model.safetensors")
    check_fits(lambda: cls(**config), header(weights, folder), weights, path)
    model = cls.from_pretrained(str(folder))
    return model.eval()
