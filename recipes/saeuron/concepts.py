"""Concepts of the shapes world and the prompt sets SAeUron works with.

A *kind* is one of the world's factors (``style``, ``shape``, ``colour``); a *concept* is one of its
values (``stripes``, ``circle``). Prompts come as :class:`PromptSet` s that carry the ground-truth
factor indices of every prompt, so that evaluation never parses text. Three sets matter:

- ``canonical``: every factor combination once, first template, first synonym of each word (feature
  selection and the main evaluation);
- ``paraphrase``: the same combinations in the other two templates (alternately) with the second
  synonym of every word (``"a spotted crimson box"``; never seen while selecting features);
- ``training``: every combination in every template with random synonyms (the SAE's unlabelled data).

Unknown kinds and concepts are refused here, with the names that exist, before any model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import torch

from recipes.worlds import shapes as world

__all__ = ["PromptSet", "canonical", "paraphrase", "training", "check_kind", "check_concepts", "kind_of"]


@dataclass(frozen=True)
class PromptSet:
    """Prompts with their ground-truth factor indices (``labels[kind][i]`` for prompt ``i``)."""

    prompts: tuple[str, ...]
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)


def _combinations() -> list[tuple[int, int, int]]:
    return list(product(range(len(world.SHAPES)), range(len(world.COLOURS)), range(len(world.STYLES))))


def _labels(combos: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    t = torch.tensor(combos)
    return {"shape": t[:, 0], "colour": t[:, 1], "style": t[:, 2]}


def canonical() -> PromptSet:
    """Every factor combination in the first template with canonical words (64 prompts)."""
    combos = _combinations()
    return PromptSet(tuple(world.make_prompt(*c) for c in combos), _labels(combos))


def paraphrase() -> PromptSet:
    """Every combination once with every second synonym, in templates 1 and 2 alternately (64 prompts)."""
    combos = _combinations()
    prompts = [world.make_prompt(*c, template=1 + i % 2, synonyms=(1, 1, 1)) for i, c in enumerate(combos)]
    return PromptSet(tuple(prompts), _labels(combos))


def training(repeats: int = 3, seed: int = 0) -> PromptSet:
    """Every combination ``repeats`` times, each in a random template with random synonyms."""
    gen = torch.Generator().manual_seed(seed)
    combos = _combinations() * repeats
    labels = _labels(combos)
    prompts = world.make_prompts(labels["shape"], labels["colour"], labels["style"], gen, paraphrase=True)
    return PromptSet(tuple(prompts), labels)


def kind_of(concept: str) -> str:
    """The factor a concept belongs to (``"stripes"`` -> ``"style"``)."""
    for kind, values in world.FACTORS.items():
        if concept in values:
            return kind
    names = ", ".join(f"{k}: {'/'.join(v)}" for k, v in world.FACTORS.items())
    raise KeyError(f"unknown concept {concept!r}; the shapes world has {names}")


def check_kind(kind: str) -> str:
    """``kind`` itself if the world has that factor."""
    if kind not in world.FACTORS:
        raise KeyError(f"the shapes world has no factor {kind!r}; factors: {', '.join(world.FACTORS)}")
    return kind


def check_concepts(concepts: list[str] | tuple[str, ...], kind: str | None = None) -> str:
    """Refuse unknown concepts, a kind the world lacks, or a mix of kinds; returns the kind."""
    if kind is not None:
        check_kind(kind)
    if not concepts:
        raise ValueError("name at least one concept to unlearn")
    kinds = {kind_of(c) for c in concepts}
    if len(kinds) > 1 or (kind is not None and kinds != {kind}):
        raise ValueError(
            f"concepts {list(concepts)} are not all of kind {kind or sorted(kinds)[0]!r}: unlearn one kind at a time"
        )
    if len(set(concepts)) == len(world.FACTORS[kinds.pop()]):
        raise ValueError("unlearning every concept of a kind leaves nothing to compare against")
    return kind_of(concepts[0])
