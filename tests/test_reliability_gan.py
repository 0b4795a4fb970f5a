"""Untrusted GAN folders and checkpoints (issue 14, items 6, 7, 8, 10): configs that ask for more
than the weights hold, files outside the folder, planted symlinks, and a checkpoint that fails
part-way leaving the trainer unchanged."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_cards import ArtifactError
from recipes.gan.data import prepare
from recipes.gan.hub import load_generator, save_generator
from recipes.gan.models import Generator, MixtureGenerator
from recipes.gan.trainer import GanConfig, GanTrainer, load_tensors
from recipes.worlds.calorimeter import generate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(width=2, d_width=2, aux_width=2, feature_dim=8, batch_size=4, epochs=1)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_generator(MixtureGenerator(n_experts=2, width=2), tmp_path / "gen", recipe="expertsim")


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_experts": 100_000}, r"'n_experts' is 100000 but model.safetensors holds 2"),
        ({"width": 10**6}, r"does not fit model.safetensors: .* tensors differ"),
        ({"width": 3}, r"does not fit model.safetensors: .*'router.mlp|experts.0"),
        ({"width": "2"}, r"'width' must be a positive integer, got '2'"),
        ({"shape": [10**9, 30]}, r"'shape' must be \[height, width\]"),
        ({"extra": [1, 2]}, r"unknown arguments \['extra'\]"),
    ],
)
def test_a_generator_config_is_checked_against_its_weights_before_building(saved, changes, message):
    _edit_config(saved, **changes)
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=rf"gen/config.json.*{message}|{message}"):
        load_generator(saved)
    assert time.perf_counter() - start < 5  # refused from the header: nothing of the asked size was built


def test_a_generator_config_with_nan_is_refused_by_name(saved):
    (saved / "config.json").write_text('{"n_experts": 2, "noise_dim": NaN, "width": 2, "shape": [56, 30]}')
    with pytest.raises(ArtifactError, match=r"config.json: noise_dim is nan; only finite numbers"):
        load_generator(saved)


def test_a_generator_config_symlinked_outside_is_refused(saved, tmp_path):
    outside = tmp_path / "elsewhere.json"
    (saved / "config.json").rename(outside)
    (saved / "config.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match=r"symlinks that lead outside it \(config.json -> .*elsewhere.json\)"):
        load_generator(saved)


def test_save_generator_replaces_planted_symlinks_instead_of_writing_through(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    targets = {}
    for name in ("config.json", "model.safetensors", "README.md", "metrics.json"):
        targets[name] = tmp_path / f"precious-{name}"
        targets[name].write_text("keep me")
        (folder / name).symlink_to(targets[name])
    save_generator(Generator(width=2), folder, metrics={"ws_channels": 1.0})
    assert all(t.read_text() == "keep me" for t in targets.values())
    assert not any((folder / name).is_symlink() for name in targets)
    assert sorted(p.name for p in folder.iterdir()) == sorted(targets)  # no temporary folder left
    assert load_generator(folder).width == 2


def test_gan_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "ckpt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArtifactError, match=r"ckpt.safetensors"):
        load_tensors(bad)
    save_file({"x": torch.ones(1)}, str(bad), metadata={"interventions.metadata": "[" * 10_000})
    with pytest.raises(ArtifactError, match=r"ckpt.safetensors: its metadata: nested deeper"):
        load_tensors(bad)


def _trainer(seed):
    data = prepare(generate_dataset(6, 2, torch.Generator().manual_seed(0)))
    return GanTrainer(GanConfig(**TINY, seed=seed), data)


def _everything(trainer):
    weights = {f"{n}.{k}": v.clone() for n, m in trainer.modules().items() for k, v in m.state_dict().items()}
    optim = {n: repr(o.state_dict()) for n, o in trainer.optimisers().items()}
    return weights, optim, trainer.data_rng.get_state(), trainer.noise_rng.get_state(), trainer.step


@pytest.mark.parametrize("damage", ["rng", "optimiser"])
def test_a_checkpoint_failing_part_way_changes_nothing(tmp_path, damage):
    source = _trainer(seed=1)
    source.fit(progress=False)
    path = tmp_path / "ckpt.safetensors"
    source.save_checkpoint(path)
    tensors, meta = load_tensors(path)
    if damage == "rng":  # the models and optimisers load, then the RNG state is refused
        tensors["rng.noise"] = torch.zeros(3, dtype=torch.uint8)
    else:  # the models load, then an optimiser's parameter groups do not fit
        meta["optimisers"]["expert.d"]["param_groups"] = []
    save_file(tensors, str(path), metadata={"format": "pt", "interventions.metadata": json.dumps(meta)})

    target = _trainer(seed=2)
    before = _everything(target)
    with pytest.raises(ValueError, match=r"ckpt.safetensors' cannot be restored .* the trainer is unchanged"):
        target.load_checkpoint(path)
    after = _everything(target)
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])
    assert before[4] == after[4] == 0
    assert not all(torch.equal(before[0][k], load_file(str(path))[f"model.{k}"]) for k in before[0])


def test_save_checkpoint_replaces_a_planted_symlink(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.safetensors").symlink_to(precious)
    trainer = _trainer(seed=1)
    trainer.save_checkpoint(tmp_path / "run" / "ckpt.safetensors")
    assert precious.read_text() == "keep me" and not (tmp_path / "run" / "ckpt.safetensors").is_symlink()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt.safetensors"]
    _trainer(seed=2).load_checkpoint(tmp_path / "run" / "ckpt.safetensors")
