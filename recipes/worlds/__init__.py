"""Synthetic worlds with known ground truth, tiny model builders and shipped checkpoints.

``load("shapes")`` / ``load("tones")`` return the world with its shipped model and evaluators;
``load("calorimeter")`` and ``load("gaussian_mixture")`` the simulators.
"""

from .registry import WORLDS, World, load

__all__ = ["WORLDS", "World", "load"]
