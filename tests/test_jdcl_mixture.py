"""JDCL on the Gaussian-mixture world at tiny scale: the MLP joint model's features come from the
core's hooks, class-balanced replay fills its quotas, the forgetting formula, the Hub folder
round-trips bit-identically, and a seeded 2-task run where naive fine-tuning forgets task 1 and
JDCL keeps it (its saved model scores what the run recorded)."""

import json

import pytest
import torch
from torch.nn import functional as F

from interventions import Cache, attach
from interventions.cli import main as cli_main
from recipes.jdcl.continual import balanced_replay
from recipes.jdcl.mixture import MixtureConfig, mixture_tasks, run_mixture
from recipes.jdcl.mlp import JointMLP
from recipes.jdcl.sequence import forgetting
from recipes.joint_diffusion.hub import load_joint, save_joint
from recipes.joint_diffusion.train import accuracy

torch.set_num_threads(1)


def test_features_are_the_block_outputs_and_cross_entropy_skips_the_output_layer():
    torch.manual_seed(0)
    model = JointMLP(dim=3, num_classes=4, width=16, depth=2).eval()
    x = torch.randn(5, 3)
    cache = Cache()
    with attach(model.trunk, {"blocks.0": cache, "blocks.1": cache}):
        model.trunk(x, torch.zeros(5, dtype=torch.long))
    expected = torch.cat([cache.get("blocks.0"), cache.get("blocks.1")], dim=1)
    assert torch.equal(model.features(x).detach(), expected)
    F.cross_entropy(model.classify(x), torch.tensor([0, 1, 2, 3, 0])).backward()
    assert model.trunk.blocks[0].fc1.weight.grad.abs().sum() > 0
    assert model.trunk.out.weight.grad is None  # stop=True: the output layer never ran
    with pytest.raises(ValueError, match="even width"):
        JointMLP(dim=3, num_classes=4, width=15)


def test_balanced_replay_keeps_at_most_the_quota_with_the_generators_own_labels():
    torch.manual_seed(0)
    model = JointMLP(dim=2, num_classes=3, width=8, depth=1).eval()
    g = torch.Generator().manual_seed(0)
    x, y, info = balanced_replay(model, [0, 1, 2], per_class=5, steps=2, batch_size=16, max_draws=64, generator=g)
    assert torch.equal(model.classify(x).argmax(-1), y)
    counts = torch.bincount(y, minlength=3).tolist()
    assert counts == [info["kept"][str(c)] for c in range(3)] and max(counts) <= 5
    assert info["drawn"] <= 64 and (min(counts) == 5 or info["drawn"] == 64)
    with pytest.raises(ValueError, match="per_class >= 1"):
        balanced_replay(model, [0], per_class=0)


def test_forgetting_is_the_mean_drop_from_the_best_earlier_accuracy():
    matrix = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.6, 0.2, 0.7]]
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.2)) / 2)
    assert forgetting([[1.0, 0.0]]) is None


def test_mlp_hub_folder_round_trips_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = JointMLP(dim=3, num_classes=4, width=16, depth=2).eval()
    model.head[0].weight.data += 0.5  # not the initialisation: the weights really come from the file
    folder = save_joint(model, tmp_path / "m", metrics={"average": 0.875}, recipe="jdcl")
    back = load_joint(folder)
    assert isinstance(back, JointMLP) and not back.training
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x, t = torch.randn(5, 3), torch.full((5,), 40)
    assert torch.equal(model.classify(x), back.classify(x)) and torch.equal(model.denoise(x, t), back.denoise(x, t))
    card = (folder / "README.md").read_text()
    assert "2411.08224" in card and "0.875" in card and "Gaussian-mixture" in card and "JointMLP" in card
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "dim": 3,
        "num_classes": 4,
        "width": 16,
        "depth": 2,
        "hidden": 64,
        "dropout": 0.1,
        "train_timesteps": 1000,
    }
    (folder / "config.json").write_text(json.dumps({**config, "widths": [8]}))
    with pytest.raises(Exception, match="unknown arguments.*JointMLP takes"):
        load_joint(folder)
    (folder / "config.json").write_text(json.dumps({**config, "width": 32}))
    with pytest.raises(Exception, match="config"):
        load_joint(folder)


def test_tasks_split_the_classes_and_are_seeded():
    config = MixtureConfig(tasks=3, n_train=20, n_test=10)
    tasks = mixture_tasks(config, seed=1)
    assert [t.classes for t in tasks] == [[0, 1], [2, 3], [4, 5]]
    assert all(set(t.train_y.tolist()) <= set(t.classes) for t in tasks) and tasks[0].train_x.shape == (20, 8)
    assert torch.equal(mixture_tasks(config, seed=1)[2].test_x, tasks[2].test_x)


def test_tiny_run_naive_forgets_task_1_and_jdcl_keeps_it(tmp_path):
    config = MixtureConfig(
        seeds=(0,), tasks=2, n_train=256, n_test=200, width=32, depth=2, steps=100, global_steps=100,
        per_class=64, sample_steps=10,
    )  # fmt: skip
    run = run_mixture(config, out=tmp_path, progress=False)["runs"][0]
    methods = run["methods"]
    assert methods["naive"]["matrix"][0][0] > 0.95  # task 1 learnt ...
    assert methods["naive"]["matrix"][1][0] < 0.3  # ... and forgotten by fine-tuning (4 classes)
    assert methods["jdcl"]["matrix"][1][0] > 0.9 and methods["jdcl"]["forgetting"] < 0.05
    assert methods["joint"]["average"] > 0.95
    assert run["replay"][0]["new"]["kept"] == {"2": 64, "3": 64}
    saved = load_joint(tmp_path / "jdcl_mixture_model_seed0")  # the JDCL global model, as its record says
    tasks = mixture_tasks(config, seed=0)
    assert [accuracy(saved, t.test_x, t.test_y) for t in tasks] == methods["jdcl"]["matrix"][-1]
    metrics = json.loads((tmp_path / "jdcl_mixture_model_seed0" / "metrics.json").read_text())
    assert metrics["average"] == methods["jdcl"]["average"]


def test_cli_refuses_a_single_task(capsys):
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "jdcl", "--world", "mixture", "--tasks", "1"])
    assert error.value.code == 2 and "--tasks must be >= 2" in capsys.readouterr().err
