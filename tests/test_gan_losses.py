"""Every loss of the calorimeter GAN recipes against a value computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from recipes.gan import losses as L


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_discriminator_loss():
    # softplus(-0) = ln 2, softplus(-ln 3) = ln(4/3): real part (ln 2 + ln 4/3) / 2, fake part the same
    real, fake = t(0.0, math.log(3)), t(0.0, -math.log(3))
    assert L.discriminator_loss(real, fake).item() == pytest.approx(math.log(8 / 3))


def test_generator_loss_non_saturating():
    logits = t([0.0], [math.log(3)])
    assert L.generator_loss(logits).item() == pytest.approx(math.log(8 / 3) / 2)
    assert torch.allclose(L.generator_loss(logits, reduction="none"), t(math.log(2), math.log(4 / 3)))
    # non-saturating: the gradient at a confidently rejected fake stays large (-sigmoid(-l) -> -1)
    x = torch.tensor([[-10.0]], requires_grad=True)
    L.generator_loss(x).backward()
    assert x.grad.item() == pytest.approx(-1.0, abs=1e-4)


def test_sdi_loss():
    h1, h2 = t([1.0, 3.0], [0.0, 0.0]), t([0.0, 0.0], [0.0, 2.0])  # mean |h1 - h2| = 2, 1
    z1, z2 = t([1.0, 1.0], [0.0, 0.0]), t([0.0, 0.0], [0.0, 1.0])  # mean |z1 - z2| = 1, 0.5 -> div = 2, 2
    sigma = t(1.0, 0.5)
    # mean(sigma) * mean(0.1 * sigma / div) = 0.75 * mean(0.05, 0.025) = 0.028125
    assert L.sdi_loss(h1, h2, z1, z2, sigma, strength=0.1, eps=0.0).item() == pytest.approx(0.028125)
    # the default eps only nudges it
    assert L.sdi_loss(h1, h2, z1, z2, sigma, strength=0.1).item() == pytest.approx(0.028125, rel=1e-4)
    # no real spread -> no diversity pressure
    assert L.sdi_loss(h1, h2, z1, z2, t(0.0, 0.0)).item() == 0.0


def test_sdi_loss_rewards_diversity():
    z1, z2 = torch.zeros(1, 4), torch.ones(1, 4)
    h = torch.zeros(1, 8)
    far = torch.full((1, 8), 2.0)
    near = torch.full((1, 8), 0.5)
    sigma = torch.ones(1)
    assert L.sdi_loss(h, far, z1, z2, sigma) < L.sdi_loss(h, near, z1, z2, sigma)


def test_intensity_loss():
    images = torch.log1p(t([[1.0, 2.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 10.0]]))  # photon sums 6 and 10
    # (|6 - 4| + |10 - 13|) / 2 / 5 = 0.5
    assert L.intensity_loss(images, t(4.0, 13.0), scale=5.0).item() == pytest.approx(0.5)
    assert L.intensity_loss(images.unsqueeze(1), t(6.0, 10.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_position_loss():
    assert L.position_loss(t([1.0, 2.0], [3.0, 4.0]), t([1.0, 0.0], [0.0, 4.0])).item() == pytest.approx(13 / 4)


def test_minmax_scale():
    assert torch.allclose(L.minmax_scale(t(2.0, 4.0, 6.0)), t(0.0, 0.5, 1.0))
    assert torch.equal(L.minmax_scale(t(3.0, 3.0)), t(0.0, 0.0))
    assert torch.allclose(L.minmax_scale(t(0.0, 5.0, 20.0), 0.0, 10.0), t(0.0, 0.5, 1.0))


def test_gumbel_softmax_straight_through():
    logits = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    soft, gates, index = L.gumbel_softmax_st(logits, tau=1.0, noise=False)
    assert torch.allclose(soft, torch.tensor([[0.25, 0.75]]))
    assert torch.equal(gates.detach(), torch.tensor([[0.0, 1.0]])) and index.tolist() == [1]
    # backward through the hard gates is the soft gates' gradient
    w = torch.tensor([[2.0, -1.0]])
    (g_hard,) = torch.autograd.grad((gates * w).sum(), logits, retain_graph=True)
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    assert torch.allclose(g_hard, g_soft) and g_hard.abs().sum() > 0
    # temperature: softmax([0, 2 ln 3]) = [1/10, 9/10]
    soft, _, _ = L.gumbel_softmax_st(logits, tau=0.5, noise=False)
    assert torch.allclose(soft, torch.tensor([[0.1, 0.9]]))


def test_gumbel_noise_is_seeded_and_hard():
    logits = torch.zeros(64, 3)
    a = L.gumbel_softmax_st(logits, 1.0, generator=torch.Generator().manual_seed(0))
    b = L.gumbel_softmax_st(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert torch.equal(a[1].sum(1), torch.ones(64)) and set(a[2].tolist()) == {0, 1, 2}


def onehot(index, n):
    return torch.nn.functional.one_hot(torch.tensor(index), n).double()


def test_expert_means_and_differentiation():
    gates = onehot([0, 1, 0], 2)
    assert torch.allclose(L.expert_means(gates, t(1.0, 2.0, 3.0)), t(2.0, 2.0))
    # means 1, 4, 7: -(|1-4| + |1-7| + |4-7|) = -12
    gates = onehot([0, 1, 2, 2], 3)
    assert L.differentiation_loss(gates, t(1.0, 4.0, 6.0, 8.0)).item() == pytest.approx(-12.0)
    # an expert without samples does not count: means 1, 5 -> -4
    assert L.differentiation_loss(onehot([0, 1], 3), t(1.0, 5.0)).item() == pytest.approx(-4.0)
    assert L.differentiation_loss(onehot([2, 2], 3), t(1.0, 5.0)).item() == 0.0


def test_differentiation_gradient_moves_bright_samples_to_the_bright_expert():
    soft = torch.tensor([[0.6, 0.4], [0.4, 0.6]], requires_grad=True)
    hard = onehot([0, 1], 2).float()
    gates = hard + soft - soft.detach()
    L.differentiation_loss(gates, torch.tensor([1.0, 9.0])).backward()
    # moving the bright sample to the dim expert (or the dim one to the bright expert) would raise
    # the loss: m_0 = 1, m_1 = 9, dL/dg_10 = (9 - m_0) / 1 = 8, dL/dg_01 = -(1 - m_1) / 1 = 8
    assert torch.allclose(soft.grad, torch.tensor([[0.0, 8.0], [8.0, 0.0]]))


def test_utilisation_entropy():
    assert L.utilisation_entropy(t([1.0, 0.0], [0.0, 1.0])).item() == pytest.approx(math.log(2))
    assert L.utilisation_entropy(t([1.0, 0.0], [1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-8)


def test_load_balancing_loss():
    assert L.load_balancing_loss(t([0.5, 0.5], [0.5, 0.5]), eps=0.0).item() == pytest.approx(math.e)
    # sums 1.5 and 0.5: (e^(2/3) + e^2) / 2
    value = L.load_balancing_loss(t([0.75, 0.25], [0.75, 0.25]), eps=0.0).item()
    assert value == pytest.approx((math.exp(2 / 3) + math.exp(2)) / 2)


def test_router_gan_loss():
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8]], requires_grad=True)
    index = torch.tensor([0, 1])
    gates = onehot([0, 1], 2).float() + soft - soft.detach()
    losses = torch.tensor([2.0, 4.0], requires_grad=True)
    value = L.router_gan_loss(gates, index, losses)
    assert value.item() == pytest.approx(3.0)
    value.backward()
    assert losses.grad is None  # the experts' losses are not trained by the router
    assert torch.allclose(soft.grad, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # loss_b / B on the chosen gate


def test_router_loss_combines_the_terms():
    soft = t([0.5, 0.5], [0.5, 0.5])
    gates = onehot([0, 1], 2)
    index = torch.tensor([0, 1])
    loss, parts = L.router_loss(
        soft, gates, index, t(2.0, 4.0), t(1.0, 3.0), l_gan=0.1, l_diff=0.2, l_util=0.3, l_alb=0.4
    )
    assert parts["gan"] == pytest.approx(3.0) and parts["diff"] == pytest.approx(-2.0)
    assert parts["util"] == pytest.approx(math.log(2)) and parts["alb"] == pytest.approx(math.e, rel=1e-5)
    expected = 0.1 * 3.0 + 0.2 * -2.0 - 0.3 * math.log(2) + 0.4 * math.e
    assert loss.item() == pytest.approx(expected, rel=1e-5)
