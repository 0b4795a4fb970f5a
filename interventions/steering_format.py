"""The steering-vector format: a :class:`~interventions.steering.SteeringVector` <-> a folder, both directions::

    <folder>/cfg.json                      {base_model, sites, layout, method, default_scale, normalized,
                                            steps, branch, [dataset], [metrics], [extra], sdk_version}
    <folder>/steering_vector.safetensors   direction.<site> (every step) or direction.<site>.step<k>

Tensor names are written and parsed here only. Loading refuses by name what would steer wrongly
or crash later: a non-finite ``default_scale`` or direction, a branch outside the core's
vocabulary, ``extra`` that is not an object, tensors for sites the config does not list.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any

import torch

from .artifact_fields import check_metrics, check_text, check_version, check_weights, check_window

if TYPE_CHECKING:
    from .steering import Key, SteeringVector

_STEP = re.compile(r"^(?P<site>.+)\.step(?P<step>\d{1,9})$")


def tensor_name(key: Key) -> str:
    """``"a.b"`` -> ``direction.a.b``; ``("a.b", 3)`` -> ``direction.a.b.step3``."""
    return f"direction.{key}" if isinstance(key, str) else f"direction.{key[0]}.step{key[1]}"


def parse_name(name: str, sites: list[str]) -> Key | None:
    """The key a tensor name stands for, given the config's sites; None for a foreign name."""
    rest = name.removeprefix("direction.")
    if rest == name:
        return None
    if rest in sites:
        return rest
    m = _STEP.match(rest)
    return (m["site"], int(m["step"])) if m and m["site"] in sites else None


def to_files(vector: SteeringVector) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from hub_cards.layouts import sdk_version

    steps = sorted({k[1] for k in vector.directions if isinstance(k, tuple)}) or None
    cfg = {
        "base_model": vector.base_model,
        "sites": vector.sites,
        "layout": vector.layout,
        "method": vector.method,
        "default_scale": vector.default_scale,
        "normalized": vector.normalized,
        "steps": steps,
        "branch": vector.branch,
        **({"extra": vector.extra} if vector.extra else {}),
        "sdk_version": sdk_version(),
    }
    return cfg, {tensor_name(k): v.detach().contiguous() for k, v in vector.directions.items()}


def fields(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    """Validate ``(cfg, tensors)``; the :class:`SteeringVector` constructor's arguments, or
    ``hub_cards.ArtifactError`` listing every problem."""
    from hub_cards.layouts import Problems

    p = Problems()
    check_text(p, cfg, "base_model", required=True)
    sites = p.field(cfg, "sites", (list,))
    if sites is not None and (not sites or not all(isinstance(s, str) and s for s in sites)):
        p.add(f"'sites' must be a non-empty list of site names (str), got {sites!r}")
        sites = None
    elif sites is not None and len(set(sites)) != len(sites):
        p.add(f"'sites' has duplicates: {sites!r}")
    check_text(p, cfg, "method", required=True)
    scale = p.field(cfg, "default_scale", (float,))
    if scale is not None and not math.isfinite(scale):
        p.add(f"'default_scale' must be a finite number, got {scale}")
    p.field(cfg, "normalized", (bool,))
    for needed, kind in (("steps", "list of int or null"), ("branch", "a branch name or null")):
        if needed not in cfg:
            p.add(f"missing {needed!r} ({kind})")
    check_window(p, cfg)
    check_text(p, cfg, "dataset")
    check_metrics(p, cfg)
    p.field(cfg, "extra", (dict,), required=False)
    check_version(p, cfg, "sdk_version")
    directions: dict[Key, torch.Tensor] = {}
    if sites:
        shapes: dict[str, tuple[int, ...]] = {}
        steps = cfg.get("steps")
        for name in sorted(tensors):
            key = parse_name(name, sites)
            if key is None:
                p.add(f"tensor {name!r} is not 'direction.<site>' or 'direction.<site>.step<k>' for a site in {sites}")
                continue
            t = tensors[name]
            site = key if isinstance(key, str) else key[0]
            if not isinstance(key, str) and isinstance(steps, list) and key[1] not in steps:
                p.add(f"tensor {name!r} is for step {key[1]}, which is not in the config's steps {steps}")
            shape = shapes.setdefault(site, tuple(t.shape))
            if t.ndim == 0 or tuple(t.shape) != shape:
                p.add(
                    f"tensor {name!r} has shape {list(t.shape)}, other directions of site {site!r} have {list(shape)}"
                )
            directions[key] = t
        missing = [s for s in sites if s not in shapes]
        if missing:
            p.add(f"no direction tensor for sites {missing}")
    check_weights(p, tensors)
    p.raise_if_any(f"{what} is not a valid steering vector")
    return {
        "directions": directions,
        "base_model": cfg["base_model"],
        "layout": cfg.get("layout"),
        "method": cfg["method"],
        "branch": cfg.get("branch") or "all",
        "normalized": cfg["normalized"],
        "default_scale": float(cfg["default_scale"]),
        "extra": dict(cfg.get("extra") or {}),
    }


def save(vector: SteeringVector, folder: str | os.PathLike[str]) -> None:
    """Write ``vector`` to ``folder``; validated as :func:`read` would first, so nothing is written on refusal."""
    from hub_cards.layouts import STEERING_VECTOR_NAME, write_artifact

    cfg, tensors = to_files(vector)
    fields(cfg, tensors, f"the steering vector for {os.fspath(folder)}")
    write_artifact(folder, STEERING_VECTOR_NAME, cfg, tensors)


def read(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The :class:`SteeringVector` constructor's arguments from a validated folder."""
    from hub_cards.layouts import CFG_NAME, STEERING_VECTOR_NAME, read_artifact

    cfg, tensors = read_artifact(folder, STEERING_VECTOR_NAME, "steering-vector")
    return fields(cfg, tensors, os.path.join(os.fspath(folder), CFG_NAME))
