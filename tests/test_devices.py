"""Every training loop runs where it is told: one step of each with torch's default device set to
``meta``, so that a tensor created without a device (on the CPU by accident, in the loop) meets
the loop's real tensors and fails loudly; the same steps on CUDA when a GPU is present."""

from __future__ import annotations

import json

import pytest
import torch

from interventions.sae_train import TrainConfig, train_sae
from recipes.expertsim import ExpertSimTrainer
from recipes.gan.data import prepare
from recipes.gan.trainer import GanConfig, GanTrainer
from recipes.worlds import shapes_eval
from recipes.worlds.calorimeter import generate_dataset
from recipes.worlds.train import main as train_world

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture
def meta_default():
    """Torch's default device is ``meta`` inside the test: an implicitly placed tensor cannot mix."""
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def test_meta_default_catches_a_tensor_created_without_a_device(meta_default):
    real = torch.ones(3, device="cpu")
    with pytest.raises((RuntimeError, NotImplementedError)):
        real + torch.zeros(3)  # the bug the tests below would catch in a loop


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu", "jumprelu"])
def test_sae_training_step(kind, device, meta_default):
    x = torch.randn(600, 8, device="cpu")
    cfg = TrainConfig(steps=3, batch_size=64, eval_tokens=100, dead_tokens=0, device=device, progress=False)
    sae, report = train_sae(x, 16, kind, 2, config=cfg)  # dead_tokens=0: AuxK runs from step 2
    assert report.device.startswith(device) and report.steps == 3
    assert sae.W_enc.device.type == device and torch.isfinite(torch.tensor(report.losses, device="cpu")).all()


@pytest.fixture(scope="module")
def gan_data():
    return prepare(generate_dataset(8, 2, torch.Generator(device="cpu").manual_seed(0)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("trainer", [GanTrainer, ExpertSimTrainer])
def test_gan_training_step(trainer, device, gan_data, meta_default):
    cfg = GanConfig(epochs=1, batch_size=16, width=2, d_width=2, aux_width=2, feature_dim=8, n_experts=2)
    t = trainer(cfg, gan_data, device=device)
    history = t.fit(progress=False)
    assert t.step == 1 and len(history) == 1 and all(v == v for v in history[0].values())  # no NaN
    assert {p.device.type for m in t.modules().values() for p in m.parameters()} == {device}


@pytest.mark.parametrize("trainer", [GanTrainer, ExpertSimTrainer])
def test_gan_training_step_in_bf16(trainer, gan_data, meta_default):
    cfg = GanConfig(epochs=1, batch_size=16, width=2, d_width=2, aux_width=2, feature_dim=8, n_experts=2)
    t = trainer(cfg, gan_data, device="cpu", dtype=torch.bfloat16)
    history = t.fit(progress=False)
    assert t.step == 1 and all(v == v and abs(v) < float("inf") for v in history[0].values())
    assert {p.dtype for m in t.modules().values() for p in m.parameters()} == {torch.float32}


@pytest.mark.parametrize("device", DEVICES)
def test_gan_seed_gives_the_same_first_step_on_every_device(device, gan_data):
    cfg = GanConfig(epochs=1, batch_size=16, width=2, d_width=2, aux_width=2, feature_dim=8)
    logs = [GanTrainer(cfg, gan_data, device=d).fit(progress=False)[0] for d in ("cpu", device)]
    assert logs[0]["d"] == pytest.approx(logs[1]["d"], rel=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_evaluators_training_step(device, meta_default):
    models = shapes_eval.train_evaluators(steps=1, batch_size=4, progress=False, device=device)
    assert {p.device.type for m in models.values() for p in m.parameters()} == {"cpu"}  # returned on the CPU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("world", ["shapes", "tones"])
def test_world_training_step(world, device, tmp_path, meta_default):
    args = [world, "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "out"), "--state"]
    args += [str(tmp_path / "state"), "--eval-every", "0", "--threads", "1", "--device", device]
    train_world([*args, "--skip-evaluators"] if world == "shapes" else args)
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["device"] == device and record["dtype"] == "float32" and record["steps"] == 1


def test_a_steering_vector_left_on_the_old_device_fails_naming_the_site():
    # AddVector's prepared vector is kept while the activation's shape and dtype hold; a model moved
    # to another device afterwards must not run with it quietly
    from torch import nn

    from interventions import AddVector, attach
    from interventions.errors import HookError

    model = nn.Sequential(nn.Linear(4, 4))
    with attach(model, {"0": AddVector(torch.ones(4))}):
        model(torch.ones(1, 4))
        model.to("meta")
        with pytest.raises(HookError, match="AddVector at site '0'.*device"):
            model(torch.ones(1, 4, device="meta"))
