"""Model cards (``README.md``) for the artifacts we publish, one template per kind.

The YAML header carries ``base_model``, ``datasets``, ``library_name``, ``tags`` and ``license``
(rendered by ``huggingface_hub.ModelCardData``); the body says which site, layout, steps and CFG
branch each artifact was made for, its method, training data and held-out metrics, and how to load
it as an object that attaches itself (``SAE.load(pull(...))``). For SAEs and steering vectors the
table is read from the ``cfg.json`` files already saved in the folder, so the card cannot
disagree with the artifacts it describes; ``datasets`` defaults to the ones they record.

>>> write_card("out/my-saes", "sae", repo_id="me/my-saes", datasets=["me/prompts"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError
from .layouts import CFG_NAME, SAE_WEIGHTS_NAME, STEERING_VECTOR_NAME, read_json, walk_files, write_text

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

__all__ = ["KINDS", "TEMPLATES", "card_entries", "format_steps", "render_card", "write_card"]

TEMPLATES = Path(__file__).parent / "templates"
KINDS = ("sae", "steering_vector", "model")
LIBRARY_NAME = "interventions"
DEFAULT_LICENSE = "apache-2.0"
_KIND_TAGS = {
    "sae": ["interventions", "sparse-autoencoder", "saelens"],
    "steering_vector": ["interventions", "steering-vector"],
    "model": ["interventions"],
}
_WEIGHTS = {"sae": SAE_WEIGHTS_NAME, "steering_vector": STEERING_VECTOR_NAME}
# What the Hub accepts as a model id in `base_model`; anything else (a model built from a config) stays in the body.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def format_steps(steps: Iterable[int] | None) -> str:
    """``None`` -> ``"all"``; ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    if steps is None:
        return "all"
    values = sorted(set(steps))
    if not values:
        return "none"
    parts: list[str] = []
    start = prev = values[0]
    for s in [*values[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts)


def _branch(branch: str | None) -> str:
    return "cond and uncond" if branch in (None, "all") else str(branch)


def _layout(layout: str | None) -> str:
    return "features last" if layout is None else f"`{layout}`"


def _metrics(metrics: Any) -> str:
    """A training report's numbers (``{"fvu": 0.07, "l0": 8}``) as ``fvu 0.07, l0 8``."""
    if not isinstance(metrics, Mapping) or not metrics:
        return "-"
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _entry(kind: str, subfolder: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """One table row; the config's fields are shown as they are (their meaning is the format owner's)."""
    if kind == "sae":
        meta = cfg.get("metadata") or {}
        return {
            "subfolder": subfolder,
            "site": meta.get("site") or meta.get("hook_name") or "not recorded",
            "layout": _layout(meta.get("layout")),
            "steps": format_steps(meta.get("steps")),
            "branch": _branch(meta.get("branch")),
            "architecture": meta.get("interventions_architecture") or cfg.get("architecture"),
            "d_in": cfg.get("d_in"),
            "d_sae": cfg.get("d_sae"),
            "k": cfg.get("k", "-"),
            "method": meta.get("method") or "-",
            "dataset": meta.get("dataset") or "-",
            "metrics": _metrics(meta.get("metrics")),
            "base_model": meta.get("base_model") or meta.get("model_name"),
        }
    return {
        "subfolder": subfolder,
        "sites": ", ".join(f"`{s}`" for s in cfg.get("sites") or []),
        "layout": _layout(cfg.get("layout")),
        "steps": format_steps(cfg.get("steps")),
        "branch": _branch(cfg.get("branch")),
        "method": cfg.get("method"),
        "dataset": cfg.get("dataset") or "-",
        "metrics": _metrics(cfg.get("metrics")),
        "default_scale": cfg.get("default_scale"),
        "normalized": "yes" if cfg.get("normalized") else "no",
        "base_model": cfg.get("base_model"),
    }


def card_entries(folder: str | os.PathLike[str], kind: str) -> list[dict[str, Any]]:
    """One table row per artifact saved under ``folder`` (the folder itself or any subfolder)."""
    if kind not in _WEIGHTS:
        raise ValueError(f"card_entries reads SAE and steering-vector folders, not {kind!r}")
    root = Path(folder)
    rows = []
    for weights in walk_files(root):
        cfg_path = weights.parent / CFG_NAME
        if weights.name != _WEIGHTS[kind] or not cfg_path.is_file():
            continue
        cfg = read_json(cfg_path, root=root)
        if not isinstance(cfg, dict):
            raise ArtifactError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
        rows.append(_entry(kind, weights.parent.relative_to(root).as_posix(), cfg))
    return rows


def _snippet(kind: str, repo_id: str, subfolder: str) -> str:
    cls, module = ("SAE", "interventions.sae") if kind == "sae" else ("SteeringVector", "interventions.steering")
    return (
        f"from hub_cards import pull\nfrom {module} import {cls}\n\n"
        f'{kind} = {cls}.load(pull("{repo_id}", subfolder="{subfolder}"))\n'
        f"session = {kind}.attach(model)  # a context manager; exit it to remove the hooks"
    )


def render_card(kind: str, *, card_data: ModelCardData | None = None, **fields: Any) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` for ``kind`` from ``templates/<kind>.md``.

    ``fields``: ``repo_id``, ``base_model`` (str or list), ``datasets``, ``license``, ``tags``,
    ``title``, ``description``, ``metrics`` (markdown), ``citation``, ``load_snippet`` (replaces the
    default three lines), ``entries`` (table rows, see :func:`card_entries`), and for ``"model"``:
    ``class_name``, ``module``, ``site``, ``layout``, ``steps``, ``branch``, ``repo_url``,
    ``paper_url``, ``docs_url``. Other fields are passed to the template.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}; use one of {KINDS}")
    entries: list[dict[str, Any]] = list(fields.pop("entries", None) or [])
    repo_id = fields.get("repo_id") or "<repo_id>"
    fields["repo_id"] = repo_id
    base = fields.pop("base_model", None)
    if base is None:
        base = sorted({e["base_model"] for e in entries if e.get("base_model")}) or None
    bases = [base] if isinstance(base, str) else list(base or [])
    fields["base_model_text"] = ", ".join(bases)
    hub_bases = [b for b in bases if _REPO_ID.match(b)]

    data = ModelCardData(**(card_data.to_dict() if card_data is not None else {}))
    data.library_name = data.library_name or LIBRARY_NAME
    data.license = fields.pop("license", None) or data.license or DEFAULT_LICENSE
    tags = [*(data.tags or []), *_KIND_TAGS[kind], *(fields.pop("tags", None) or [])]
    data.tags = sorted(set(tags))
    datasets = fields.pop("datasets", None)
    if datasets is None:
        datasets = sorted({e["dataset"] for e in entries if e.get("dataset") not in (None, "-")}) or None
    if datasets is not None:
        data.datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    if hub_bases:
        data.base_model = hub_bases[0] if len(hub_bases) == 1 else hub_bases

    if kind == "model":
        if "steps" in fields and not isinstance(fields["steps"], str):
            fields["steps"] = format_steps(fields["steps"])
    else:
        first = entries[0] if entries else {"subfolder": "<folder>"}
        fields["first"] = first
        fields.setdefault("load_snippet", _snippet(kind, repo_id, first["subfolder"]))
    fields["entries"] = entries
    return ModelCard.from_template(data, template_path=str(TEMPLATES / f"{kind}.md"), **fields)


def write_card(folder: str | os.PathLike[str], kind: str, **fields: Any) -> Path:
    """Render the card of ``kind`` (``"sae"``, ``"steering_vector"``, ``"model"``) to ``<folder>/README.md``.

    For SAEs and steering vectors the rows (site, layout, steps, branch, ...) and, when not given,
    ``base_model`` are read from the artifacts saved under ``folder``; saving them first is
    required. See :func:`render_card` for ``fields``. Returns the README path.
    """
    folder = Path(folder)
    if kind in _WEIGHTS and "entries" not in fields:
        fields["entries"] = card_entries(folder, kind)
        if not fields["entries"]:
            raise ArtifactError(
                f"{folder} holds no {kind.replace('_', ' ')} ({CFG_NAME} + {_WEIGHTS[kind]}): save the artifacts "
                "before writing their card"
            )
    card = render_card(kind, **fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    write_text(path, str(card))  # through a rename: a planted symlink is replaced, never written through
    return path
