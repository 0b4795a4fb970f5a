"""Checkpoint folders from untrusted sources, as the recipes' loaders read and write them.

A downloaded folder is input like any other: its ``config.json`` may ask for a module of any size,
name files outside the folder, or hold NaN. So a loader here reads only JSON and safetensors
(through ``hub_cards``: bounded, finite numbers only), nothing outside its folder (no ``..``,
absolute or hidden names, no symlink leading out), and builds a module from a config only after
the same config, built on the ``meta`` device (no memory), asked for exactly the tensors that the
weights file holds. Errors are :class:`hub_cards.ArtifactError` naming the file and the fix.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hub_cards import ArtifactError, check_safetensors, read_json
from hub_cards.layouts import find_pickles, outside_links

__all__ = [
    "plain_name",
    "refuse_outside_links",
    "weights_file",
    "header",
    "check_fits",
    "positive_int",
    "positive_float",
    "replace_files",
    "load_component",
]

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def plain_name(name: object, where: Path) -> str:
    """``name`` when it names a file inside a folder: no ``/``, ``..``, absolute or hidden name."""
    if not (isinstance(name, str) and _PLAIN.fullmatch(name) and ".." not in name):
        raise ArtifactError(
            f"{where}: {str(name)[:80]!r} is not a plain name (letters, digits, '_', '.', '-'): a loader reads "
            "nothing outside its folder; rename the entry"
        )
    return name


def refuse_outside_links(root: Path) -> None:
    """Refuse a folder holding a symlink that leads outside it (a Hub cache's links into its own
    ``blobs`` are fine): a loader would read the link's target."""
    links = outside_links(root)
    if links:
        raise ArtifactError(
            f"{root} holds symlinks that lead outside it ({', '.join(links[:4])}): interventions reads nothing "
            "outside a checkpoint's folder; replace the links with the files themselves"
        )


def weights_file(folder: Path, name: str) -> Path:
    """``folder / name``, a safetensors file that must exist: a folder with only pickled weights is
    refused by name (nothing here ever unpickles)."""
    path = folder / name
    if not path.is_file():
        pickles = find_pickles(folder)
        found = f"it holds only pickles ({', '.join(pickles)}), which are never loaded" if pickles else "it is missing"
        raise ArtifactError(f"{path}: expected safetensors weights, {found}; save the weights with safetensors")
    return path


def header(weights: Path, root: Path) -> dict[str, list[int] | None]:
    """Tensor name -> shape of a safetensors file inside ``root``, from its header alone (bounded)."""
    entries = check_safetensors(weights, root=root)
    return {k: v.get("shape") if isinstance(v, dict) else None for k, v in entries.items() if k != "__metadata__"}


def check_fits(build: Callable[[], nn.Module], held: dict[str, list[int] | None], weights: Path, config: Path) -> None:
    """Build the module on the meta device and refuse its config unless it asks for exactly the
    tensors (names and shapes) that ``weights`` holds (``held``: its :func:`header`): a config
    cannot make a loader allocate more than the folder's own weights."""
    try:
        with torch.device("meta"):
            module = build()
    except Exception as exc:  # a constructor's own check of a value (a type, a range)
        raise ArtifactError(f"{config}: the module cannot be built from it ({type(exc).__name__}: {exc})") from None
    wanted = {k: list(v.shape) for k, v in module.state_dict().items()}
    bad = [k for k in wanted if held.get(k) != wanted[k]] + [k for k in held if k not in wanted]
    if bad:
        k = bad[0]
        raise ArtifactError(
            f"{config} does not fit {weights.name}: {len(bad)} tensors differ, e.g. {k!r} is {wanted.get(k)} for the "
            f"config and {held.get(k)} in the file; use the config that was saved with these weights"
        )


def positive_int(config: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    """``config[key]`` as a positive int (a bool, a float or a string is refused by name)."""
    value = config.get(key, default)
    if type(value) is not int or value < 1:
        raise ArtifactError(f"{where}: {key!r} must be a positive integer, got {str(value)[:80]!r}")
    return value


def positive_float(value: object, key: str, where: Path) -> float:
    """``value`` as a finite positive number (NaN, Infinity, a bool or a string is refused by name)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ArtifactError(f"{where}: {key!r} must be a finite positive number, got {str(value)[:80]!r}")
    return float(value)


def replace_files(folder: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a fresh hidden folder beside ``folder``'s files, then rename each file it
    wrote onto ``folder``: a symlink planted at one of those names is replaced, never written
    through (an open() or a safetensors save would overwrite its target)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".write-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        write(tmp)
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_component(
    cls: Any, folder: Path, weights_name: str, root: Path, from_config: Callable[[dict[str, Any]], nn.Module]
) -> Any:
    """A diffusers / transformers component of a checkpoint (``folder`` inside ``root``), loaded from
    safetensors only, after :func:`check_fits` of its ``config.json`` (``from_config`` builds it)."""
    config_path = folder / "config.json"
    config = read_json(config_path, root=root)
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path}: expected a JSON object")
    weights = weights_file(folder, weights_name)
    check_fits(lambda: from_config(config), header(weights, root), weights, config_path)
    return cls.from_pretrained(folder, use_safetensors=True)
