"""SAeUron on the shapes world: statistics, unlearning runs, baselines and metrics in one object.

Example::

    model = SAeUron.shipped()
    images = model.generate(canonical(), seed=1000, method="saeuron", remove=("stripes",))
    print(model.metrics(images, canonical(), ("stripes",), reference=model.generate(canonical(), seed=1000)))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interventions import MemoryStore, ShapeMismatchError
from interventions.layout import to_tokens
from interventions.sae import SAE
from recipes.worlds import shapes as world

from . import concepts as cs
from .evaluate import feature_distance, unlearning_metrics
from .sampling import Sampling, cache_cond, generate
from .train import STATISTICS
from .unlearn import Redirect, Unlearning, block_ablation, concept_means, edit_hooks, negative_prompt, redirect, select

__all__ = ["CHECKPOINT", "DEFAULTS", "REDIRECT", "MATCH", "METHODS", "Statistics", "SAeUron"]

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "shapes"
METHODS = ("none", "saeuron", "negative_prompt", "block_ablation")
#: (percentile, multiplier, gate) per kind, chosen on the selection seeds 100 and 101 (recipes/results/README.md);
#: styles: percentile 100 selects no feature to scale, so the style edit is the redirection alone
DEFAULTS: dict[str, tuple[float, float, float]] = {"style": (100.0, -1.0, 0.0), "shape": (99.0, -1.0, 0.5)}
#: redirection strength per kind (0: the paper's edit, with the presence gate above): the shift's length
#: in latent units, averaged over steps; chosen on seeds 100 and 101
REDIRECT: dict[str, float] = {"style": 18.0, "shape": 0.0}
#: the factors a redirection's direction is matched on (the image's group, assigned by a probe), per kind
MATCH: dict[str, tuple[str, ...]] = {"style": ("colour",), "shape": ()}


@dataclass
class Statistics:
    """Per-step latents of the canonical prompts (mean over the selection seeds), and the block's mean."""

    latents: torch.Tensor  # [prompts, steps, d_sae]
    labels: dict[str, torch.Tensor]  # per row
    block_means: torch.Tensor  # [steps, channels]
    site: str
    steps: int
    guidance: float

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Statistics:
        from safetensors import safe_open

        from hub_cards import read_safetensors

        path = Path(folder) / STATISTICS
        tensors = read_safetensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        labels = cs.canonical().labels
        if tensors["latents"].shape[0] != len(labels["style"]):
            raise ValueError(
                f"{path}: latents for {tensors['latents'].shape[0]} prompts, expected one row per canonical prompt"
            )
        return cls(
            tensors["latents"].float(),
            labels,
            tensors["block_means"].float(),
            meta.get("site", ""),
            int(meta.get("steps", 0)),
            float(meta.get("guidance", 0)),
        )


class SAeUron:
    """The shapes pipeline, its evaluators, and per kind an SAE at one block with the statistics
    SAeUron selects features with (SAeUron too uses one block for styles, another for objects).
    Each SAE is checked against its statistics and the pipeline when built."""

    def __init__(
        self, pipe: Any, evaluators: dict, saes: dict[str, tuple[SAE, Statistics]], sampling: Sampling | None = None
    ) -> None:
        if not saes:
            raise ValueError("give an SAE for at least one kind")
        for kind in saes:
            cs.check_kind(kind)
        self.pipe, self.evaluators, self.saes = pipe, evaluators, saes
        self.tokens: dict[str, int] = {}  # tokens per image at each kind's site
        first = next(iter(saes.values()))[1]
        self.sampling = sampling or Sampling(steps=first.steps, guidance=first.guidance)
        for kind, (sae, stats) in saes.items():
            if sae.info.site != stats.site:
                raise ValueError(f"{kind}: the SAE is for site {sae.info.site!r}, its statistics for {stats.site!r}")
            if stats.latents.shape[-1] != sae.d_sae:
                raise ValueError(f"{kind}: the statistics have {stats.latents.shape[-1]} latents, the SAE {sae.d_sae}")
            if self.sampling.steps != stats.steps:
                raise ValueError(
                    f"{kind}: statistics were collected over {stats.steps} steps, sampling asks {self.sampling.steps}"
                )
            self.tokens[kind] = self._check_site(sae)

    @classmethod
    def shipped(
        cls, source: str | os.PathLike[str] | None = None, folder: str | os.PathLike[str] = CHECKPOINT
    ) -> SAeUron:
        """The shipped world (or ``source``: a checkpoint folder or Hub id) with the SAEs in
        ``folder``'s subfolders, one per kind (``style/``, ``shape/``)."""
        from recipes.worlds import load

        folder = Path(folder)
        kinds = [k for k in world.FACTORS if (folder / k).is_dir()]
        if not kinds:
            raise FileNotFoundError(f"{folder} has no SAE subfolder named after a kind ({', '.join(world.FACTORS)})")
        shapes = load("shapes", source)
        return cls(
            shapes.model, shapes.evaluators, {k: (SAE.load(folder / k), Statistics.load(folder / k)) for k in kinds}
        )

    def _check_site(self, sae: SAE) -> int:
        """One one-step call: the site exists and has the SAE's width (before any long run); returns
        the site's tokens per image."""
        store = MemoryStore()
        cache_cond(self.pipe, sae.info.site, ("a",), 0, Sampling(steps=1, guidance=self.sampling.guidance), store)
        x = store.get(store.keys()[0])
        width = x.shape[1]
        if width != sae.d_in:
            raise ShapeMismatchError(f"site {sae.info.site!r} has {width} channels, the SAE expects {sae.d_in}")
        return to_tokens(x, sae.info.layout).shape[0] // x.shape[0]

    def _for(self, remove: tuple[str, ...]) -> tuple[str, SAE, Statistics]:
        kind = cs.check_concepts(remove)
        if kind not in self.saes:
            raise KeyError(f"no SAE for {kind!r} concepts; SAEs for: {', '.join(self.saes)}")
        return (kind, *self.saes[kind])

    def unlearning(
        self,
        remove: tuple[str, ...],
        percentile: float | None = None,
        multiplier: float | None = None,
        gate: float | None = None,
        strength: float | None = None,
    ) -> Unlearning | Redirect:
        """The per-step edit removing ``remove``; ``None`` takes the kind's :data:`DEFAULTS` and
        :data:`REDIRECT`. A ``strength`` above 0 redirects the images a probe assigns a removed concept
        (:func:`.unlearn.redirect`, its direction matched on the kind's :data:`MATCH` factors, then the
        paper's scaling on them unless ``percentile`` is 100; ``gate`` unused); 0 is the
        paper's edit, where a ``gate`` of 0 edits every image (the paper's procedure)."""
        kind, _, stats = self._for(remove)
        default = DEFAULTS[kind]
        pct = default[0] if percentile is None else percentile
        mult = default[1] if multiplier is None else multiplier
        g = default[2] if gate is None else gate
        s = REDIRECT[kind] if strength is None else strength
        if g < 0:
            raise ValueError(f"gate must be >= 0 (0: no gate), got {g}")
        if s < 0:
            raise ValueError(f"strength must be >= 0 (0: the paper's edit), got {s}")
        by_concept = concept_means(stats.latents, stats.labels[kind], kind)
        if s > 0:
            scaling = select(by_concept, remove, pct, mult) if pct < 100 else None
            groups = _groups(stats.labels, kind, MATCH[kind]) if MATCH[kind] else None
            return redirect(by_concept, remove, s, self.tokens[kind], scaling, groups=groups)
        return select(by_concept, remove, pct, mult, g or None, self.tokens[kind])

    def generate(
        self,
        prompts: cs.PromptSet,
        seed: int,
        method: str = "none",
        remove: tuple[str, ...] = (),
        percentile: float | None = None,
        multiplier: float | None = None,
        gate: float | None = None,
        strength: float | None = None,
    ) -> torch.Tensor:
        """Images in ``[-1, 1]`` with ``method`` removing ``remove`` (``"none"``: the plain model;
        ``"block_ablation"`` ablates the block of the removed kind's SAE). SAeUron's settings left
        ``None`` are the kind's :data:`DEFAULTS` and :data:`REDIRECT`."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
        hooks, negative = None, None
        if method == "saeuron":
            hooks = edit_hooks(self._for(remove)[1], self.unlearning(remove, percentile, multiplier, gate, strength))
        elif method == "negative_prompt":
            cs.check_concepts(remove)
            negative = negative_prompt(remove)
        elif method == "block_ablation":
            _, sae, stats = self._for(remove)
            hooks = block_ablation(sae.info.site, stats.block_means)
        return generate(self.pipe, prompts.prompts, seed, self.sampling, hooks, negative)

    def metrics(
        self,
        images: torch.Tensor,
        prompts: cs.PromptSet,
        remove: tuple[str, ...],
        reference: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """UA / IRA / CRA, and with ``reference`` (the same prompts and seed unedited) the feature
        distance of the kept images."""
        kind = cs.check_concepts(remove)
        out = unlearning_metrics(self.evaluators, images, prompts, kind, remove)
        if reference is not None:
            kept = ~torch.isin(prompts.labels[kind], torch.tensor([world.FACTORS[kind].index(c) for c in remove]))
            out["distance"] = feature_distance(self.evaluators, images[kept], reference[kept])
        return out


def _groups(labels: dict[str, torch.Tensor], kind: str, factors: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per concept of ``kind``, each of its prompts' group: the index of its combination of ``factors``."""
    group = torch.zeros_like(labels[kind])
    for f in factors:
        group = group * len(world.FACTORS[f]) + labels[f]
    return {c: group[labels[kind] == i] for i, c in enumerate(world.FACTORS[kind])}
