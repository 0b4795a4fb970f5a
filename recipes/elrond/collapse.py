"""Mode collapse of the few-step student, and ELROND's remedy for it.

For one prompt and one noise seed: ``n`` samples of the teacher (DDIM 10, guidance 3), of the
2-step student from the same noise, and of the student with random steering (one of the top PCA
directions of the teacher's concept-token gradients per sample, random sign, strength
``~ U[low, high]``, :func:`recipes.elrond.steer.random_steering`). Diversity is measured three
ways: the entropy of the evaluators' classes per factor (bits, at most 2), the mean pairwise
distance of the pixels and of the evaluators' features (the three penultimate layers, 3 x 64);
prompt agreement is the fraction of samples whose every prompted factor is right.

>>> import torch
>>> round(mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])), 4)
3.5355
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from interventions.subspace import pca

from .experiment import _slug, entropy_bits, gradients, predict_factors, prompt_agreement
from .gradients import Setting, concept_position, embed, sample
from .steer import add_at_token, random_steering
from .student import student_sample

__all__ = ["mean_pairwise_distance", "evaluator_features", "describe", "student_diversity", "student_experiment"]


def mean_pairwise_distance(rows: Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows, divided by sqrt(dimension)."""
    flat = rows.flatten(1).float()
    return float(torch.pdist(flat).mean() / math.sqrt(flat.shape[1]))


def evaluator_features(evaluators: dict[str, Any], images: Tensor) -> Tensor:
    """The evaluators' penultimate activations (what their last layer classifies), concatenated."""
    with torch.no_grad():
        return torch.cat([m.net[:-1](images.clamp(-1, 1).float()) for m in evaluators.values()], dim=1)


def describe(evaluators: dict[str, Any], images: Tensor, prompt: str) -> dict[str, Any]:
    """Entropy per factor, pixel and feature pairwise distance, and prompt agreement of a sample set."""
    pred = predict_factors(evaluators, images)
    return {
        "entropy_bits": {f: round(entropy_bits(v), 4) for f, v in pred.items()},
        "pixel_distance": round(mean_pairwise_distance(images.clamp(-1, 1)), 4),
        "feature_distance": round(mean_pairwise_distance(evaluator_features(evaluators, images)), 4),
        "agreement": round(prompt_agreement(pred, prompt), 4),
    }


def student_diversity(
    pipe: Any,
    student: Any,
    evaluators: dict[str, Any],
    prompt: str,
    directions: Tensor,
    low: float,
    high: float,
    n: int,
    seed: int,
    setting: Setting,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Teacher, student and randomly steered student on the same ``n`` noises of ``seed``: their
    :func:`describe` and the images (``{"teacher", "student", "student_steered"}``)."""
    position = concept_position(pipe.tokenizer, prompt)
    cond, uncond = embed(pipe, prompt, n)
    noise = torch.randn((n, 3, *_hw(pipe)), generator=torch.Generator().manual_seed(seed))
    picked, strengths = random_steering(n, directions, low, high, torch.Generator().manual_seed(seed))
    images = {
        "teacher": sample(pipe, cond, uncond, setting, seed),
        "student": student_sample(student, cond, noise),
        "student_steered": student_sample(student, add_at_token(cond, position, picked, strengths), noise),
    }
    return {k: describe(evaluators, v, prompt) for k, v in images.items()}, images


def student_experiment(
    pipe: Any,
    student: Any,
    evaluators: dict[str, Any],
    prompts: list[str],
    grad_seed: int,
    n: int,
    steer_seeds: list[int],
    strength: float,
    n_steer: int,
    folder: Any,
    setting: Setting,
    top: int = 4,
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """For each prompt: the teacher's concept-token gradients (``n`` pairs, ``grad_seed``; a
    DiskStore under ``folder``), their top ``top`` PCA directions, and :func:`student_diversity`
    on every held-out seed at strengths ``U[strength / 2, strength]``. Returns the result and the
    images of the first seed per prompt (for the figure)."""
    from pathlib import Path

    result: dict[str, Any] = {
        "grad_seed": grad_seed,
        "n": n,
        "n_steer": n_steer,
        "strength": [strength / 2, strength],
        "top": top,
        "prompts": {},
    }
    shown = {}
    for prompt in prompts:
        grads = gradients(pipe, prompt, n, grad_seed, Path(folder) / _slug(prompt) / f"seed{grad_seed}", setting)
        pcs, ratios = pca(grads)
        dirs = pcs[: max(1, min(top, len(pcs)))]
        entry: dict[str, Any] = {"pca_explained": [round(float(r), 4) for r in ratios], "seeds": {}}
        for s in steer_seeds:
            entry["seeds"][s], images = student_diversity(
                pipe, student, evaluators, prompt, dirs, strength / 2, strength, n_steer, s, setting
            )
            shown.setdefault(prompt, images)
            row = entry["seeds"][s]
            print(
                f"{prompt!r} seed {s}: feature distance teacher {row['teacher']['feature_distance']} student "
                f"{row['student']['feature_distance']} steered {row['student_steered']['feature_distance']}; "
                f"agreement {row['student']['agreement']} -> {row['student_steered']['agreement']}",
                flush=True,
            )
        result["prompts"][prompt] = entry
    return result, shown


def _hw(pipe: Any) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)
