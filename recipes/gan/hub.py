"""Trained calorimeter generators as Hub artifacts, through ``hub_cards``.

:class:`HubGenerator` (one SDI-GAN generator) and :class:`HubMixtureGenerator` (ExpertSim: router +
experts) are the recipe's modules with ``hub_cards.ModelHubMixin``: ``config.json`` holds the
constructor arguments, ``model.safetensors`` the weights (condition-encoder statistics included),
``README.md`` the card (``hub_cards``' model template, with the held-out metrics).

>>> folder = save_generator(trainer.sampler, "out/sdi_gan", metrics=metrics, recipe="sdi_gan")  # doctest: +SKIP
>>> push_generator(folder, "me/zdc-sdi-gan")  # doctest: +SKIP
>>> generator = load_generator("me/zdc-sdi-gan")  # doctest: +SKIP
>>> images = generator.sample(conditions)  # doctest: +SKIP

Importing this module imports ``huggingface_hub`` (the mixin is a base class); the recipes import
it only when they save, push or pull.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from hub_cards import ArtifactError, ModelHubMixin, pull, push, read_json

from ..folders import check_fits, header, positive_int, refuse_outside_links, replace_files, weights_file
from .models import Generator, MixtureGenerator

__all__ = ["HubGenerator", "HubMixtureGenerator", "save_generator", "push_generator", "load_generator"]

_PAPERS = {
    "sdi_gan": "https://arxiv.org/abs/2406.03263",
    "expertsim": "https://arxiv.org/abs/2508.20991",
}
_TAGS = ["gan", "physics", "calorimeter", "fast-simulation"]


class HubGenerator(Generator, ModelHubMixin, tags=[*_TAGS, "sdi-gan"]):
    """SDI-GAN generator ``G(z, c)`` of the calorimeter world, loadable with ``from_pretrained``."""


class HubMixtureGenerator(MixtureGenerator, ModelHubMixin, tags=[*_TAGS, "mixture-of-experts", "expertsim"]):
    """ExpertSim router + generators of the calorimeter world, loadable with ``from_pretrained``."""


def _metrics_markdown(metrics: dict[str, Any] | None) -> str | None:
    if not metrics:
        return None
    rows = [
        ("5-channel Wasserstein (mean)", metrics.get("ws_channels")),
        ("photon-sum Wasserstein", metrics.get("ws_photon_sum")),
        ("brightest-pixel error (px)", metrics.get("position_error")),
        ("per-condition spread correlation", metrics.get("spread_corr")),
    ]
    routing = metrics.get("routing")
    if routing:
        rows.append(("routing purity (regime -> expert)", routing.get("purity")))
    lines = ["Held-out conditions of the calorimeter world (`recipes.worlds.calorimeter`):", "", "| metric | value |"]
    lines.append("|---|---|")
    lines += [f"| {name} | {value:.4g} |" for name, value in rows if isinstance(value, (int, float))]
    if "n_train_events" in metrics:
        lines += ["", f"Trained on {metrics['n_train_events']} events for {metrics.get('steps')} steps."]
    return "\n".join(lines)


def save_generator(
    module: nn.Module,
    folder: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    recipe: str = "sdi_gan",
    repo_id: str | None = None,
) -> Path:
    """Save a trained :class:`Generator` or :class:`MixtureGenerator` as a Hub folder with its card."""
    if isinstance(module, MixtureGenerator):
        expert = module.experts[0]
        hub: nn.Module = HubMixtureGenerator(
            n_experts=module.n_experts, noise_dim=module.noise_dim, width=expert.width, shape=list(module.shape)
        )
        title = f"ExpertSim calorimeter generator ({module.n_experts} experts)"
    elif isinstance(module, Generator):
        hub = HubGenerator(noise_dim=module.noise_dim, width=module.width, shape=list(module.shape))
        title = "SDI-GAN calorimeter generator"
    else:
        raise TypeError(f"expected a Generator or MixtureGenerator, got {type(module).__name__}")
    hub.load_state_dict(module.state_dict())
    folder = Path(folder)
    description = (
        f"A conditional GAN generator trained with the `{recipe}` recipe of interventions on the calorimeter world "
        "(a Monte-Carlo toy of ALICE's proton zero-degree calorimeter): noise (10) + 9 particle conditions "
        "(E, vx, vy, vz, px, py, pz, mass, charge) -> a 56 x 30 photon image in log1p space. "
        "`model.sample(conditions)` returns photon images."
    )
    card: dict[str, Any] = {
        "title": title,
        "description": description,
        "metrics": _metrics_markdown(metrics),
        "paper_url": _PAPERS.get(recipe),
    }
    if repo_id is not None:
        card["repo_id"] = repo_id

    def write(tmp: Path) -> None:
        hub.save_pretrained(tmp, model_card_kwargs=card)  # type: ignore[operator]
        if metrics is not None:
            slim = {k: v for k, v in metrics.items() if not k.startswith("_") and k != "history"}
            (tmp / "metrics.json").write_text(json.dumps(slim, indent=1, default=str))

    replace_files(folder, write)  # a symlink planted in the folder is replaced, never written through
    return folder


def push_generator(folder: str | os.PathLike, repo_id: str, **kwargs: Any) -> Any:
    """``hub_cards.push``: checks the folder (safetensors + JSON only) and uploads it in one commit."""
    return push(folder, repo_id, **kwargs)


def load_generator(repo_or_folder: str | os.PathLike, **kwargs: Any) -> HubGenerator | HubMixtureGenerator:
    """A generator from a local folder or a Hub repo (``hub_cards.pull``: safetensors, JSON, cards only).

    ``kwargs`` go to ``hub_cards.pull`` (``revision``, ``cache_dir``, ``local_files_only``,
    ``endpoint``...). The class is chosen from ``config.json`` (``n_experts`` -> mixture).
    """
    folder = Path(repo_or_folder)
    if not folder.is_dir():
        name = os.fspath(repo_or_folder)
        if folder.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
            raise FileNotFoundError(
                f"no generator folder at {name!r} (a folder written by save_generator, or a Hub repo id 'owner/name')"
            )
        folder = pull(name, **kwargs)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json: not a folder written by save_generator")
    cls = _checked_class(folder)
    model = cls.from_pretrained(str(folder))
    model.eval()
    return model


def _checked_class(folder: Path) -> type[HubGenerator] | type[HubMixtureGenerator]:
    """The class ``folder`` holds, once its config is known to ask for exactly the tensors of its
    weights (before anything is allocated: a config cannot ask for terabytes)."""
    refuse_outside_links(folder)
    path = folder / "config.json"
    config = read_json(path, root=folder)
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: expected a JSON object of constructor arguments")
    unknown = sorted(set(config) - {"n_experts", "noise_dim", "width", "shape"})
    if unknown:
        raise ArtifactError(
            f"{path}: unknown arguments {unknown}; a generator takes n_experts, noise_dim, width, shape"
        )
    shape = config.get("shape", [56, 30])
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and 0 < n <= 4096 for n in shape)):
        raise ArtifactError(f"{path}: 'shape' must be [height, width] of two integers in 1..4096, got {shape!r}")
    for key in ("noise_dim", "width"):
        positive_int(config, key, path, default=1)
    weights = weights_file(folder, "model.safetensors")
    held = header(weights, folder)
    cls: type[HubGenerator] | type[HubMixtureGenerator] = HubGenerator
    if "n_experts" in config:
        experts = len({name.split(".")[1] for name in held if name.startswith("experts.")})
        if positive_int(config, "n_experts", path) != experts:
            raise ArtifactError(f"{path}: 'n_experts' is {config['n_experts']} but {weights.name} holds {experts}")
        cls = HubMixtureGenerator
    check_fits(lambda: cls(**config), held, weights, path)
    return cls
