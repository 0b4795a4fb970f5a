"""ExpertSim recipe: routing trains only the chosen expert, router updates, temperature schedule,
determinism, checkpoint resume, mixture sampling, Hub round trip. Tiny nets, a dozen events."""

from __future__ import annotations

import pytest
import torch

from recipes.expertsim import ExpertSimTrainer, temperature
from recipes.gan.data import prepare
from recipes.gan.models import MixtureGenerator
from recipes.gan.trainer import GanConfig
from recipes.worlds.calorimeter import generate_dataset

TINY = dict(width=2, d_width=2, aux_width=2, feature_dim=8, batch_size=6, epochs=1, n_experts=3, lr_router=1e-2, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return prepare(generate_dataset(6, 2, torch.Generator().manual_seed(0)))


def trainer(data, **kw) -> ExpertSimTrainer:
    return ExpertSimTrainer(GanConfig(**{**TINY, **kw}), data)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def force_route(router: torch.nn.Module, expert: int, n_experts: int) -> None:
    last = router.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-8.0)
        last.bias[expert] = 8.0  # a gap of 16: Gumbel noise never flips it, gradients stay finite


def test_temperature_schedule():
    assert temperature(0, 10) == pytest.approx(1.2) and temperature(9, 10) == pytest.approx(0.8)
    taus = [temperature(s, 10) for s in range(10)]
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    assert temperature(50, 10) == pytest.approx(0.8) and temperature(0, 1) == pytest.approx(0.8)


def test_each_sample_trains_only_its_expert(data):
    t = trainer(data)
    force_route(t.router, 1, 3)
    before = [params(e) for e in t.experts]
    router_before = params(t.router)
    log = t.train_step(data.subset(torch.arange(6)))
    assert log["share1"] == 1.0 and log["share0"] == 0.0 and log["share2"] == 0.0
    assert same(params(t.experts[0]), before[0]) and same(params(t.experts[2]), before[2])
    changed = params(t.experts[1])
    for part in ("generator", "discriminator", "regressor"):
        keys = [k for k in changed if k.startswith(part) and "encoder" not in k and "scale" not in k]
        assert any(not torch.equal(changed[k], before[1][k]) for k in keys), part
    assert not same(params(t.router), router_before)  # the router loss reached the router


def test_router_loss_parts_by_hand(data):
    """The logged router loss and its parts, recomputed from the same Gumbel draw (diff_source="real":
    the differentiation term then uses the batch's real photon sums, which this test knows)."""
    t = trainer(data, diff_source="real", l_gan=0.3, l_diff=0.2, l_util=0.7, l_alb=1e-3)
    batch = data.subset(torch.arange(6))
    draw = torch.Generator().manual_seed(0)
    draw.set_state(t.noise_rng.get_state())  # the step's first draw is the Gumbel noise
    with torch.no_grad():
        logits = t.router(batch.conditions)
    u = torch.rand(logits.shape, generator=draw).clamp(1e-10, 1.0 - 1e-7)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / 1.2, dim=-1)  # tau starts at 1.2
    index = soft.argmax(-1)
    log = t.train_step(batch)
    assert [log[f"share{i}"] for i in range(3)] == [float((index == i).sum()) / 6 for i in range(3)]
    intensity = batch.photon_sum / t.intensity_unit
    means = [float(intensity[index == i].mean()) for i in range(3) if (index == i).any()]
    diff = -sum(abs(a - b) for k, a in enumerate(means) for b in means[k + 1 :])
    p = soft.mean(0)
    util = float(-(p * p.log()).sum())
    alb = float(torch.exp(1 / soft.sum(0)).mean())
    assert log["router_diff"] == pytest.approx(diff, rel=1e-5, abs=1e-7)
    assert log["router_util"] == pytest.approx(util, rel=1e-5)
    assert log["router_alb"] == pytest.approx(alb, rel=1e-5)
    expected = 0.3 * log["router_gan"] + 0.2 * diff - 0.7 * util + 1e-3 * alb
    assert log["router"] == pytest.approx(expected, rel=1e-5)


def test_deterministic_and_resumable(data, tmp_path):
    a, b = trainer(data, epochs=2), trainer(data, epochs=2)
    a.fit(progress=False)
    b.fit(progress=False)
    sa = {k: v for m in a.modules().values() for k, v in params(m).items()}
    assert same(sa, {k: v for m in b.modules().values() for k, v in params(m).items()})
    c = trainer(data, epochs=2)
    c.fit(epochs=1, progress=False, checkpoint_dir=tmp_path)
    d = trainer(data, epochs=2, seed=7)
    d.load_checkpoint(tmp_path / "checkpoint.safetensors")
    d.fit(progress=False)
    assert same(sa, {k: v for m in d.modules().values() for k, v in params(m).items()})


def test_learning_curve_records_routing(data):
    from recipes.gan.evaluation import LearningCurve, routing_table

    held_out = generate_dataset(4, 2, torch.Generator().manual_seed(1))
    t = trainer(data, epochs=2)
    curve = LearningCurve(held_out, repeats=2, every=1)
    t.fit(progress=False, on_epoch=curve)
    assert [p["epoch"] for p in curve.points] == [1, 2]
    table = routing_table(t.mixture.route(held_out["conditions"]), held_out["regime"], 3)
    assert curve.points[-1]["routing_nmi"] == table["nmi"]


def test_mixture_generator_routes_by_argmax(data):
    t = trainer(data)
    force_route(t.router, 2, 3)
    c = data.conditions[:4]
    z = torch.randn(4, 10)
    with torch.no_grad():
        assert t.mixture.route(c).tolist() == [2, 2, 2, 2]
        assert torch.equal(t.mixture(z, c), t.experts[2].generator(z, c))
    assert t.mixture.sample(c, torch.Generator().manual_seed(0)).shape == (4, 56, 30)


def test_mixture_save_and_load(data, tmp_path):
    from recipes.gan.hub import HubMixtureGenerator, load_generator, save_generator

    t = trainer(data)
    t.fit(progress=False)
    folder = save_generator(t.sampler, tmp_path / "moe", recipe="expertsim")
    back = load_generator(folder)
    assert isinstance(back, HubMixtureGenerator) and isinstance(back, MixtureGenerator) and back.n_experts == 3
    assert same(params(back), params(t.sampler))
    assert "expertsim" in (folder / "README.md").read_text()
