"""SAeUron's unlearning edit and the two baselines it is compared with.

:func:`select` turns per-concept latent statistics into a per-step :class:`Unlearning`: at step
``t`` the features scoring above the percentile (:func:`interventions.scores.normalized_difference_by_step`)
for each removed concept ``c``; on every token where a selected feature ``f`` fires above its mean
over all concepts of the kind, ``z_f <- z_f * mu_{c,f,t} * multiplier`` (the published hook). The
edit runs inside :class:`~interventions.SAEEdit` on both CFG branches, so the error term is kept as
``x + dec(z') - dec(z)`` (the published code adds ``dec(z) - x``: the sign flipped).

An optional *presence gate* (not in the paper) edits an image only while it shows the concept: at
step ``t`` a row's score is the sum over the concept's selected features of their token-mean
latents, and the row is edited only if that score reaches ``gate`` times the concept prompts' mean
score on the selection seeds. With four concepts per kind (the paper has fifty styles), the
selected features also fire on the other concepts' images; the gate keeps those images unedited.

*Redirection* (:class:`Redirect`, not in the paper; the shipped style edit): in a world where every
image has some style, removing a style's features leaves the network's default style (stripes
without a style word, dots without the style block), which the evaluator names as before. At the
first cond-branch call of a run each image is assigned a concept by a ridge probe on its token-mean
latents (:func:`interventions.scores.ridge_probe`, fitted per step on the selection prompts'
latents), and optionally a *group* (the image's other factors, e.g. its colour) by a second probe;
the images assigned a removed concept ``c`` and group ``g`` get, on both branches at every step,
``z <- max(0, z + s * d_g,t / mean_t |d_g,t|)`` with ``d_g,t = mu_target,g,t - mu_c,g,t``: toward the
kept concept whose means are farthest from ``c``'s, measured within the image's group, with the
same length ``s`` for every concept and group (the distance between two styles' means differs by
almost 2x, so a shift proportional to it under-pushes the nearby pairs); then (if given) the paper's
scaling, which the shipped style default leaves out; the other images are not edited.

Baselines on the same prompts and seeds: :func:`negative_prompt` (the concept's word as the
pipeline's negative prompt) and :func:`block_ablation` (the whole block's output replaced by its
per-step mean over the selection prompts, both branches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from interventions import Ablate, Context, SAEEdit, When
from interventions.sae import SAE
from interventions.scores import above_percentile_by_step, normalized_difference_by_step, probe_predict, ridge_probe
from recipes.worlds import shapes as world

__all__ = ["Unlearning", "Redirect", "select", "redirect", "edit_hooks", "negative_prompt", "block_ablation"]


@dataclass
class Unlearning:
    """Per step ``t``: the features to scale, their factors ``mu_{c,f,t} * multiplier`` and the
    thresholds (mean over concepts) above which a token's latent is scaled. Called as an
    ``SAEEdit`` edit on ``[tokens, d_sae]`` latents.

    With ``gates`` (per step, one score threshold per removed concept), ``groups`` (per step, the
    index of the concept each feature was selected for) and ``tokens`` (tokens per image), a
    concept's features are scaled only in images whose score for it reaches its gate."""

    concepts: tuple[str, ...]
    features: list[Tensor]
    factors: list[Tensor]
    thresholds: list[Tensor]
    gates: list[Tensor] | None = None
    groups: list[Tensor] | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        gated = (self.gates is not None, self.groups is not None, self.tokens is not None)
        if any(gated) and not all(gated):
            raise ValueError("a gated Unlearning needs gates, groups and tokens together")

    def __call__(self, z: Tensor, ctx: Context) -> Tensor:
        step = ctx.step
        if step is None or step >= len(self.features):
            raise ValueError(
                f"SAeUron edit at {ctx.site!r}: step {step} has no selected features (prepared for {len(self.features)} "
                "steps): run with the num_inference_steps the statistics were collected at"
            )
        ids = self.features[step].to(z.device)
        if ids.numel() == 0:
            return z
        picked = z[:, ids]
        fires = picked > self.thresholds[step].to(z)
        if self.gates is not None:
            fires = fires & self._present(picked, step)
        z = z.clone()
        z[:, ids] = torch.where(fires, picked * self.factors[step].to(z), picked)
        return z

    def _present(self, picked: Tensor, step: int) -> Tensor:
        """``[tokens, n_features]``: whether each token's image passes the gate of the feature's concept."""
        assert self.gates is not None and self.groups is not None and self.tokens is not None
        if picked.shape[0] % self.tokens:
            raise ValueError(f"{picked.shape[0]} tokens are not whole images of {self.tokens} tokens")
        groups = self.groups[step].to(picked.device)
        per_image = picked.view(-1, self.tokens, picked.shape[1]).mean(1)  # [images, n_features]
        scores = torch.zeros(per_image.shape[0], len(self.concepts), dtype=picked.dtype, device=picked.device)
        scores.index_add_(1, groups, per_image)
        passed = scores >= self.gates[step].to(scores)  # [images, concepts]
        return passed[:, groups].repeat_interleave(self.tokens, 0)


@dataclass
class Redirect:
    """The gated redirection edit (an ``SAEEdit`` edit on ``[tokens, d_sae]`` latents).

    ``probes [steps, d_sae + 1, concepts]``: per step, the :func:`~interventions.scores.ridge_probe`
    that assigns an image a concept from its token-mean latents; ``removed``: the
    removed concepts' indices; ``shifts [removed, groups, steps, d_sae]``: what is added to an image
    assigned ``removed[j]`` and group ``g``; ``group_probes [steps, d_sae + 1, groups]``: the probe
    assigning the group (``None``: one group); ``scaling``: the paper's edit, applied to those images
    too. Images are assigned at the first cond-branch call of a run; the uncond branch edits the same
    images (a run's uncond rows before that first cond call are not edited)."""

    concepts: tuple[str, ...]
    probes: Tensor
    removed: tuple[int, ...]
    shifts: Tensor
    tokens: int
    scaling: Unlearning | None = None
    group_probes: Tensor | None = None
    _assigned: tuple[int, int, Tensor, Tensor] | None = field(default=None, repr=False)  # run, step, which, group

    def __post_init__(self) -> None:
        steps, width = self.probes.shape[0], self.probes.shape[1] - 1
        groups = 1 if self.group_probes is None else self.group_probes.shape[2]
        if self.shifts.shape != (len(self.removed), groups, steps, width):
            raise ValueError(
                f"shifts {tuple(self.shifts.shape)} must be [removed={len(self.removed)}, groups={groups}, "
                f"steps={steps}, d_sae={width}] like the probes {tuple(self.probes.shape)}"
            )
        if self.group_probes is not None and self.group_probes.shape[:2] != self.probes.shape[:2]:
            raise ValueError(
                f"group probes {tuple(self.group_probes.shape)} must be [steps, d_sae + 1, groups] like the "
                f"concept probes {tuple(self.probes.shape)}"
            )

    def __call__(self, z: Tensor, ctx: Context) -> Tensor:
        step = ctx.step
        if step is None or step >= self.shifts.shape[2]:
            raise ValueError(
                f"SAeUron redirect at {ctx.site!r}: step {step} has no shift (prepared for {self.shifts.shape[2]} steps): "
                "run with the num_inference_steps the statistics were collected at"
            )
        if z.shape[0] % self.tokens:
            raise ValueError(f"{z.shape[0]} tokens are not whole images of {self.tokens} tokens")
        assigned = self._which(z, ctx, step)
        if assigned is None or not bool((assigned[0] >= 0).any()):
            return z
        which, group = assigned
        edited = which >= 0
        images = z.view(-1, self.tokens, z.shape[1])
        out = images.clone()
        shift = self.shifts[which[edited], group[edited], step].to(z)  # [edited images, d_sae]
        out[edited] = (images[edited] + shift[:, None]).clamp_min(0)
        out = out.view_as(z)
        if self.scaling is not None:
            rows = edited.repeat_interleave(self.tokens)
            out[rows] = self.scaling(out[rows], ctx)
        return out

    def _which(self, z: Tensor, ctx: Context, step: int) -> tuple[Tensor, Tensor] | None:
        """Per image: the index into ``removed`` of its assigned concept (-1: kept), and its group."""
        run, images = ctx.run, z.shape[0] // self.tokens
        known = self._assigned
        if known is not None and (known[0] != run or step < known[1] or known[2].shape[0] != images):
            known = None  # a new run (or another batch): assign again
        if known is None and ctx.branch != "uncond":
            mean = z.view(images, self.tokens, -1).float().mean(1)
            assigned = probe_predict(mean, self.probes[step])
            which = torch.full_like(assigned, -1)
            for j, c in enumerate(self.removed):
                which[assigned == c] = j
            groups = (
                torch.zeros_like(assigned)
                if self.group_probes is None
                else probe_predict(mean, self.group_probes[step])
            )
            known = (run, step, which, groups)
        self._assigned = None if known is None else (run, step, known[2], known[3])
        return None if known is None else (known[2], known[3])


def redirect(
    by_concept: Mapping[str, Tensor],
    concepts: tuple[str, ...],
    strength: float,
    tokens: int,
    scaling: Unlearning | None = None,
    l2: float = 1.0,
    groups: Mapping[str, Tensor] | None = None,
) -> Redirect:
    """The :class:`Redirect` removing ``concepts`` (all keys of ``by_concept``: one kind's concepts,
    each ``[n_prompts, steps, d_sae]``, also what the ridge probes, penalty ``l2``, are fitted on):
    images the probe assigns a removed concept are shifted by ``strength`` along the direction from
    that concept's mean to the farthest kept concept's mean (its length averaged over steps is
    ``strength``), then scaled as the paper does (``scaling``, from :func:`select`). With ``groups``
    (per concept, each prompt's group index, e.g. its colour) the direction is taken between the two
    concepts' prompts of the image's group, which a second probe assigns; every group needs prompts
    of every concept.

    >>> lat = {"a": torch.tensor([[[2.0, 0.0]]]), "b": torch.tensor([[[0.0, 1.0]]])}
    >>> [round(v, 3) for v in redirect(lat, ("a",), 2.0, tokens=1).shifts[0, 0, 0].tolist()]  # 2 (b - a) / |b - a|
    [-1.789, 0.894]
    """
    missing = [c for c in concepts if c not in by_concept]
    if missing:
        raise KeyError(f"no latent statistics for {missing}; statistics exist for {sorted(by_concept)}")
    names = tuple(by_concept)
    means = torch.stack([by_concept[c].float().mean(0) for c in names])  # [concepts, steps, d]
    removed = tuple(names.index(c) for c in concepts)
    kept = [i for i in range(len(names)) if i not in removed]
    if not kept:
        raise ValueError("redirecting needs at least one kept concept")
    latents = torch.cat([by_concept[c].float() for c in names])
    labels = torch.cat([torch.full((len(by_concept[c]),), i) for i, c in enumerate(names)])
    group = torch.zeros_like(labels) if groups is None else torch.cat([groups[c].long() for c in names])
    n_groups = int(group.max()) + 1
    if groups is not None and any(
        not bool(((labels == i) & (group == g)).any()) for i in range(len(names)) for g in range(n_groups)
    ):
        raise ValueError(f"every group 0..{n_groups - 1} needs prompts of every concept ({', '.join(names)})")
    shifts = []
    for i in removed:
        far = max(kept, key=lambda k: float((means[k] - means[i]).norm(dim=-1).mean()))
        per_group = []
        for g in range(n_groups):
            d = latents[(labels == far) & (group == g)].mean(0) - latents[(labels == i) & (group == g)].mean(0)
            per_group.append(strength * d / d.norm(dim=-1).mean().clamp_min(1e-12))
        shifts.append(torch.stack(per_group))
    probes = torch.stack([ridge_probe(latents[:, t], labels, len(names), l2) for t in range(latents.shape[1])])
    group_probes = (
        None
        if groups is None
        else torch.stack([ridge_probe(latents[:, t], group, n_groups, l2) for t in range(latents.shape[1])])
    )
    return Redirect(tuple(concepts), probes, removed, torch.stack(shifts), tokens, scaling, group_probes)


def concept_means(latents: Tensor, labels: Tensor, kind: str) -> dict[str, Tensor]:
    """``{concept: latents of its prompts}`` for every concept of ``kind`` (``latents [n, steps, d]``)."""
    return {c: latents[labels == i] for i, c in enumerate(world.FACTORS[kind])}


def select(
    by_concept: Mapping[str, Tensor],
    concepts: tuple[str, ...],
    percentile: float,
    multiplier: float,
    gate: float | None = None,
    tokens: int | None = None,
) -> Unlearning:
    """The per-step edit that removes ``concepts`` (all keys of ``by_concept``: one kind's
    concepts, each ``[n_prompts, steps, d_sae]``), as SAeUron selects and scales features; with
    ``gate`` (and ``tokens`` per image) only in images whose score for a concept reaches ``gate``
    times that concept's mean score over its own prompts."""
    if gate is not None and (tokens is None or tokens < 1):
        raise ValueError("a gate needs the number of tokens per image (tokens=H*W of the site)")
    missing = [c for c in concepts if c not in by_concept]
    if missing:
        raise KeyError(f"no latent statistics for {missing}; statistics exist for {sorted(by_concept)}")
    scores = normalized_difference_by_step(by_concept)
    mean_over_concepts = torch.stack([t.float().mean(0) for t in by_concept.values()]).mean(0)  # [steps, d]
    steps = mean_over_concepts.shape[0]
    features, factors, thresholds, groups, gates = [], [], [], [], []
    for t in range(steps):
        ids_t, fac_t, group_t, gate_t = [], [], [], []
        for i, c in enumerate(concepts):
            ids = above_percentile_by_step(scores[c][t : t + 1], percentile)[0]
            own = by_concept[c][:, t, ids].float()
            ids_t.append(ids)
            fac_t.append(own.mean(0) * multiplier)
            group_t.append(torch.full_like(ids, i))
            gate_t.append(own.sum(1).mean() * (gate or 0.0))
        ids, fac, group = torch.cat(ids_t), torch.cat(fac_t), torch.cat(group_t)
        first = _first_occurrences(ids)  # a feature chosen for two concepts is scaled once
        features.append(ids[first])
        factors.append(fac[first])
        thresholds.append(mean_over_concepts[t, ids[first]])
        groups.append(group[first])
        gates.append(torch.stack(gate_t))
    if gate is None:
        return Unlearning(tuple(concepts), features, factors, thresholds)
    return Unlearning(tuple(concepts), features, factors, thresholds, gates, groups, tokens)


def _first_occurrences(ids: Tensor) -> Tensor:
    seen: set[int] = set()
    keep = []
    for i, f in enumerate(ids.tolist()):
        if f not in seen:
            seen.add(f)
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def edit_hooks(sae: SAE, unlearning: Unlearning | Redirect) -> dict[str, Any]:
    """The hooks of an SAeUron run: the SAE edit at the SAE's site, every step, both CFG branches."""
    return {sae.info.site: SAEEdit(sae, unlearning)}


def negative_prompt(concepts: tuple[str, ...]) -> str:
    """The baseline's negative prompt: the canonical word of each removed concept."""
    from .concepts import kind_of

    return " ".join(world.SYNONYMS[kind_of(c)][c][0] for c in concepts)


def block_ablation(site: str, step_means: Tensor) -> dict[str, Any]:
    """The baseline that ablates the whole block: its output replaced by the per-step mean
    (``step_means [steps, channels]``) on both CFG branches."""
    return {site: [Ablate("mean", value=m, when=When(steps=[t])) for t, m in enumerate(step_means)]}
