"""The examples in the docstrings run and print what they say (they are the API's first documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "interventions",
    "interventions.attribution",
    "interventions.context",
    "interventions.distributed.harvesting",
    "interventions.distributed.ranks",
    "interventions.distributed.train",
    "interventions.heads",
    "interventions.hooks",
    "interventions.inversion",
    "interventions.membership",
    "interventions.patching",
    "interventions.metric_runs",
    "interventions.resolution",
    "interventions.sae",
    "interventions.sae_train",
    "interventions.scores",
    "interventions.session",
    "interventions.steering",
    "interventions.store",
    "interventions.subspace",
    "interventions.trainable",
    "interventions.testing",
    "hub_cards",
    "hub_cards.cards",
    "hub_cards.models",
    "recipes.continual_lora.adapters",
    "recipes.continual_lora.hub",
    "recipes.continual_lora.identifiers",
    "recipes.continual_lora.metrics",
    "recipes.continual_lora.report",
    "recipes.continual_lora.tasks",
    "recipes.continual_lora.workers",
    "recipes.seed_workers",
    "recipes.dataset_inference.catalogue",
    "recipes.dataset_inference.features",
    "recipes.dataset_inference.gmm_world",
    "recipes.dataset_inference.inference",
    "recipes.dataset_inference.sets",
    "recipes.dataset_inference.stats",
    "recipes.elrond.cli",
    "recipes.elrond.collapse",
    "recipes.elrond.complexity",
    "recipes.elrond.distance",
    "recipes.elrond.distill",
    "recipes.elrond.experiment",
    "recipes.elrond.gradients",
    "recipes.elrond.steer",
    "recipes.elrond.strength",
    "recipes.elrond.student",
    "recipes.gan.evaluation",
    "recipes.gan.hub",
    "recipes.gan.models",
    "recipes.gan.trainer",
    "recipes.jdcl.continual",
    "recipes.jdcl.mixture",
    "recipes.jdcl.mlp",
    "recipes.jdcl.report",
    "recipes.jdcl.run",
    "recipes.jdcl.sequence",
    "recipes.jdcl.shapes",
    "recipes.joint_diffusion.hub",
    "recipes.joint_diffusion.model",
    "recipes.joint_diffusion.train",
    "recipes.mediffusion.counterfactual",
    "recipes.mediffusion.data",
    "recipes.mediffusion.run",
    "recipes.saeuron.baselines",
    "recipes.saeuron.unlearn",
    "recipes.taba",
    "recipes.taba.experiment",
    "recipes.taba.metrics",
    "recipes.taba.plots",
    "recipes.worlds.registry",
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"


def test_every_module_with_examples_is_listed():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with_examples = set()
    for package in ("interventions", "hub_cards", "recipes"):
        for path in (root / package).rglob("*.py"):
            if ">>> " in path.read_text():
                parts = path.relative_to(root).with_suffix("").parts
                with_examples.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert with_examples <= set(MODULES), f"add to MODULES: {sorted(with_examples - set(MODULES))}"
