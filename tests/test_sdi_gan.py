"""SDI-GAN recipe: determinism, checkpoints, loss switches, evaluation, Hub round trip, CLI.

Tiny nets and a dozen events: every test runs in about a second.
"""

from __future__ import annotations

import json

import pytest
import torch

from recipes.gan import evaluation as ev
from recipes.gan.data import prepare
from recipes.gan.models import Generator
from recipes.gan.trainer import GanConfig, GanTrainer
from recipes.worlds.calorimeter import generate_dataset
from tests.hub_server import local_hub

TINY = dict(width=2, d_width=2, aux_width=2, feature_dim=8, batch_size=4, epochs=1, lr_g=1e-3, lr_d=1e-3, lr_aux=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    train = generate_dataset(6, 2, torch.Generator().manual_seed(0))
    test = generate_dataset(4, 2, torch.Generator().manual_seed(1))
    return train, test


def trained(world, **kw) -> GanTrainer:
    trainer = GanTrainer(GanConfig(**{**TINY, **kw}), prepare(world[0]))
    trainer.fit(progress=False)
    return trainer


def state(trainer: GanTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for name, m in trainer.modules().items() for k, v in m.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_data_preparation(world):
    d = prepare(world[0])
    assert d.images.shape == (12, 1, 56, 30) and d.conditions.shape == (12, 9)
    assert torch.allclose(torch.expm1(d.images).sum((1, 2, 3)), d.photon_sum, rtol=1e-4)
    assert float(d.sigma.min()) == 0.0 and float(d.sigma.max()) == 1.0
    held_out = prepare(world[1], sigma_range=d.sigma_range)
    assert held_out.sigma_range == d.sigma_range and held_out.sigma.max() <= 1.0


def test_generator_shapes_and_raw_conditions(world):
    g = Generator(width=2)
    g.encoder.fit(world[0]["conditions"])
    x = g(torch.randn(5, 10), world[0]["conditions"][:5])
    assert x.shape == (5, 1, 56, 30) and bool((x >= 0).all())
    images = g.sample(world[0]["conditions"][:3], generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 56, 30)


def test_training_is_deterministic_for_a_seed(world):
    a, b = trained(world, seed=3), trained(world, seed=3)
    assert a.step == 3 and same(state(a), state(b))
    assert a.history[0].keys() >= {"d", "g_gan", "sdi", "intensity", "aux", "aux_real"}
    assert not same(state(a), state(trained(world, seed=4)))


def test_checkpoint_resume_is_exact(world, tmp_path):
    straight = trained(world, seed=5, epochs=2)
    first = GanTrainer(GanConfig(**{**TINY, "seed": 5, "epochs": 2}), prepare(world[0]))
    first.fit(epochs=1, progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.safetensors"
    assert path.read_bytes()[:1] != b"\x80"  # safetensors, not a pickle
    resumed = GanTrainer(GanConfig(**{**TINY, "seed": 99, "epochs": 2}), prepare(world[0]))
    resumed.load_checkpoint(path)
    assert resumed.epoch == 1
    resumed.fit(progress=False)
    assert resumed.step == straight.step and same(state(resumed), state(straight))


def test_moving_average_generator_samples_when_on(world):
    plain = trained(world)
    assert plain.expert.generator_ema is None and plain.sampler is plain.expert.generator
    averaged = trained(world, ema=0.5)
    g, avg = averaged.expert.generator, averaged.sampler
    assert avg is averaged.expert.generator_ema and not any(p.requires_grad for p in avg.parameters())
    assert torch.equal(avg.encoder.mean, g.encoder.mean)
    assert not torch.equal(avg.fc[0].weight, g.fc[0].weight)
    assert same(dict(g.state_dict()), dict(plain.expert.generator.state_dict()))  # the average does not steer


@pytest.mark.parametrize(
    "switch, absent",
    [({"sdi": False}, "sdi"), ({"intensity": False}, "intensity"), ({"aux": False}, "aux")],
)
def test_losses_are_switchable(world, switch, absent):
    trainer = trained(world, **switch)
    assert absent not in trainer.history[0]
    if absent == "aux":
        assert trainer.expert.regressor is None and "aux_real" not in trainer.history[0]


def test_evaluation_metrics_and_plot(world, tmp_path):
    trainer = trained(world)
    metrics, generated = ev.evaluate(trainer.sampler, world[1], repeats=2, seed=0)
    assert generated.shape == world[1]["images"].shape
    assert len(metrics["ws_channel"]) == 5 and metrics["ws_channels"] >= 0
    assert metrics["ws_photon_sum"] >= 0 and metrics["position_error"] >= 0
    # a "generator" that returns the real events is perfect
    perfect = ev.evaluate_images(world[1], world[1]["images"], repeats=2)
    assert perfect["ws_channels"] == 0 and perfect["ws_photon_sum"] == 0 and perfect["position_error"] == 0
    assert perfect["spread_corr"] == pytest.approx(1.0)
    ev.plot_comparison(tmp_path / "c.png", world[1], generated, repeats=2)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_learning_curve_observes_without_changing_training(world):
    plain = trained(world, seed=6, epochs=4)
    watched = GanTrainer(GanConfig(**{**TINY, "seed": 6, "epochs": 4}), prepare(world[0]))
    curve = ev.LearningCurve(world[1], repeats=2, every=2, seed=5)
    watched.fit(progress=False, on_epoch=curve)
    assert same(state(watched), state(plain))
    assert [(p["epoch"], p["step"]) for p in curve.points] == [(2, 6), (4, 12)]
    final, _ = ev.evaluate(plain.sampler, world[1], repeats=2, seed=5)
    assert curve.points[-1]["ws_channels"] == final["ws_channels"]
    assert curve.points[-1]["spread_corr"] == final["spread_corr"] and "routing_nmi" not in curve.points[-1]
    with pytest.raises(ValueError, match="positive number of epochs"):
        ev.LearningCurve(world[1], repeats=2, every=0)


def test_metric_helpers_by_hand():
    real = torch.tensor([[0.0, 0, 0, 0, 0], [2.0, 2, 2, 2, 2]])
    gen = torch.tensor([[1.0, 1, 1, 1, 1], [3.0, 3, 3, 3, 3]])
    assert ev.channel_wasserstein(real, gen) == [1.0] * 5
    a = torch.zeros(1, 4, 4)
    b = torch.zeros(1, 4, 4)
    a[0, 0, 0], b[0, 3, 3] = 1.0, 1.0
    assert ev.position_error(a, b) == pytest.approx(18**0.5)
    corr, _ = ev.spread_correlation(torch.tensor([[0.0, 2], [0, 4], [0, 6]]), torch.tensor([[1.0, 2], [1, 3], [1, 4]]))
    assert corr == pytest.approx(1.0)
    table = ev.routing_table(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 1, 3, 3]), 3)
    assert table["purity"] == 1.0 and table["consistency"] == 1.0 and table["nmi"] == pytest.approx(1.0)
    lumped = ev.routing_table(torch.tensor([0, 0, 0, 0, 0, 0]), torch.tensor([0, 0, 1, 1, 3, 3]), 3)
    assert lumped["purity"] == pytest.approx(1 / 3) and lumped["consistency"] == 1.0 and lumped["nmi"] == 0.0
    assert table["expert_of_regime"] == {"empty": 0, "low": 1, "high": 2}


# --------------------------------------------------------------------------------------------- Hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The offline Hub stand-in of tests/hub_server.py, with a private HF_HOME."""
    with local_hub(monkeypatch, tmp_path) as server:
        yield server


def test_generator_save_push_pull(world, tmp_path, hub):
    from recipes.gan.hub import HubGenerator, load_generator, push_generator, save_generator

    trainer = trained(world)
    metrics, _ = ev.evaluate(trainer.sampler, world[1], repeats=2)
    folder = save_generator(trainer.sampler, tmp_path / "gen", metrics=metrics, recipe="sdi_gan")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "metrics.json"}
    card = (folder / "README.md").read_text()
    assert "5-channel Wasserstein" in card and "library_name: interventions" in card and "sdi-gan" in card
    push_generator(folder, "org/zdc-sdi-gan", tag="v1")
    back = load_generator("org/zdc-sdi-gan", revision="v1", cache_dir=tmp_path / "cache")
    assert isinstance(back, HubGenerator)
    assert same(dict(back.state_dict()), dict(trainer.sampler.state_dict()))
    c = world[1]["conditions"][:4]
    g = torch.Generator
    assert torch.equal(back.sample(c, g().manual_seed(0)), trainer.sampler.sample(c, g().manual_seed(0)))


def test_cli_runs_end_to_end(tmp_path, capsys, monkeypatch):
    from interventions import cli

    monkeypatch.setitem(cli.RECIPES, "sdi_gan", ("recipes.sdi_gan:main", "SDI-GAN"))

    argv = ["--conditions", "6", "--repeats", "2", "--test-conditions", "4", "--test-repeats", "2"]
    argv += ["--epochs", "1", "--batch-size", "4", "--width", "2", "--out", str(tmp_path / "run")]
    assert cli.main(["run", "sdi_gan", *argv]) == 0
    assert "ws_channels" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recipe"] == "sdi_gan" and metrics["steps"] == 3
    assert (tmp_path / "run" / "generator" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("width", [2, 8])
def test_sampling_path_computes_the_training_function(world, width):
    g = Generator(width=width)
    g.encoder.fit(world[0]["conditions"])
    z, c = torch.randn(12, 10), world[0]["conditions"]
    with torch.no_grad():
        sampled = g(z, c)
    trained_path = g(z, c)
    assert trained_path.requires_grad and not sampled.requires_grad
    assert torch.allclose(sampled, trained_path.detach(), atol=1e-5)


def test_subpixel_weights_refuse_other_transposed_convs():
    from recipes.gan.models import subpixel_conv_weights

    with pytest.raises(ValueError, match="kernel_size=4, stride=2, padding=1.*got kernel \\(3, 3\\)"):
        subpixel_conv_weights(torch.nn.ConvTranspose2d(2, 1, 3, stride=2, padding=1))
