"""UnlearnCanvas' metrics on the shapes world, judged by the world's evaluator CNNs.

For removed concepts ``C`` of kind ``k`` (ground truth from the prompts, never parsed from text):

- UA, unlearning accuracy: of the images whose prompt names a concept in ``C``, the share the
  ``k`` evaluator does NOT call by the prompt's concept;
- IRA, in-domain retain accuracy: of the other prompts, the share whose ``k`` is still right;
- CRA, cross-domain retain accuracy: of all prompts, the share whose other factors (shape and
  colour when styles are removed) are all still right;
- ``distance``: the mean over evaluator hidden features of the 1-D Wasserstein distance
  (``scipy.stats.wasserstein_distance``) between kept images (the IRA prompts) with and without
  the edit; :func:`feature_distance` of two unedited seeds gives its noise floor.
"""

from __future__ import annotations

import torch
from scipy.stats import wasserstein_distance

from recipes.worlds import shapes as world
from recipes.worlds.shapes_eval import predict

from .concepts import PromptSet

__all__ = ["unlearning_metrics", "features", "feature_distance"]


def unlearning_metrics(
    evaluators: dict, images: torch.Tensor, prompts: PromptSet, kind: str, concepts: tuple[str, ...]
) -> dict[str, float]:
    """UA / IRA / CRA of ``images`` (in ``[-1, 1]``, one per prompt), as fractions."""
    pred = predict(evaluators, images)
    truth = prompts.labels
    ids = torch.tensor([world.FACTORS[kind].index(c) for c in concepts])
    target = torch.isin(truth[kind], ids)
    others = [f for f in world.FACTORS if f != kind]
    kept_other = torch.stack([pred[f] == truth[f] for f in others]).all(0)
    return {
        "UA": float((pred[kind][target] != truth[kind][target]).float().mean()),
        "IRA": float((pred[kind][~target] == truth[kind][~target]).float().mean()),
        "CRA": float(kept_other.float().mean()),
        "n_target": int(target.sum()),
        "n_kept": int((~target).sum()),
    }


def features(evaluators: dict, images: torch.Tensor) -> torch.Tensor:
    """Every evaluator's hidden layer (before its last linear), concatenated: ``[n, 3 * 64]``."""
    with torch.no_grad():
        return torch.cat([m.net[:-1](images.float()) for m in evaluators.values()], dim=1)


def feature_distance(evaluators: dict, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-feature 1-D Wasserstein distance between two image sets' evaluator features."""
    fa, fb = features(evaluators, a).numpy(), features(evaluators, b).numpy()
    return float(sum(wasserstein_distance(fa[:, j], fb[:, j]) for j in range(fa.shape[1])) / fa.shape[1])
