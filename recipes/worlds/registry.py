"""``recipes.worlds.load(name)``: a world's generator, its shipped model and its evaluators.

Trained worlds load from a folder through one code path: the shipped checkpoint folder by
default, any local folder, or a Hub repo id pulled with ``hub_cards.pull`` (online, or from a
pre-filled cache with ``local_files_only=True``), so a user's first steps and a download from the
Hub run the same loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
WORLDS = ("shapes", "tones", "calorimeter", "gaussian_mixture")


@dataclass
class World:
    """What ``load`` returns: the world module (generator, prompts, probes), and for trained
    worlds the model and the evaluators, plus the folder they came from."""

    name: str
    world: ModuleType
    model: Any = None
    evaluators: Any = None
    path: Path | None = None


def resolve_folder(name: str, source: str | os.PathLike[str] | None, **pull_kw: Any) -> Path:
    """The checkpoint folder for ``source``: None -> shipped; an existing folder; else a Hub repo id."""
    if source is None:
        return CHECKPOINTS / name
    if Path(source).is_dir():
        return Path(source)
    from hub_cards.hub import pull

    return Path(pull(str(source), **pull_kw))


def load(name: str, source: str | os.PathLike[str] | None = None, **pull_kw: Any) -> World:
    """Load a world by name; ``source`` is a checkpoint folder or a Hub repo id (default: shipped).

    >>> load("calorimeter").world.PROTON_SHAPE
    (56, 30)
    """
    if name == "shapes":
        from . import shapes, shapes_model

        path = resolve_folder(name, source, **pull_kw)
        return World(name, shapes, shapes_model.load_pipeline(path), shapes_model.load_evaluators(path), path)
    if name == "tones":
        from . import tones, tones_model

        path = resolve_folder(name, source, **pull_kw)
        return World(name, tones, tones_model.load_model(path), tones.probes, path)
    if name == "calorimeter":
        from . import calorimeter

        return World(name, calorimeter)
    if name == "gaussian_mixture":
        from . import gaussian_mixture

        return World(name, gaussian_mixture)
    raise KeyError(f"unknown world {name!r}; worlds: {', '.join(WORLDS)}")
