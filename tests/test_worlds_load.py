"""recipes.worlds.load: shipped folders, and the same loader through a pre-filled Hub cache."""

import shutil

import pytest

from recipes.worlds import load
from recipes.worlds.registry import CHECKPOINTS


def test_simulator_worlds_load():
    assert load("calorimeter").world.PROTON_SHAPE == (56, 30)
    assert hasattr(load("gaussian_mixture").world, "GaussianMixtureDenoiser")
    with pytest.raises(KeyError, match="unknown world 'shape'.*shapes"):
        load("shape")


def _prefill_cache(cache, repo_id, folder):
    """A Hub cache laid out as huggingface_hub writes it (snapshots/<commit>/..., refs/main)."""
    commit = "0" * 40
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot, ignore=shutil.ignore_patterns("*.png", "*.log"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.skipif(not (CHECKPOINTS / "shapes" / "unet").exists(), reason="shapes checkpoint not shipped")
def test_shapes_loads_from_shipped_folder_and_from_offline_hub_cache(tmp_path):
    shipped = load("shapes")
    _prefill_cache(tmp_path, "interventions/shapes-world", CHECKPOINTS / "shapes")
    pulled = load("shapes", "interventions/shapes-world", cache_dir=tmp_path, local_files_only=True)
    a = dict(shipped.model.unet.named_parameters())
    b = dict(pulled.model.unet.named_parameters())
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert set(pulled.evaluators) == {"shape", "colour", "style"}
