"""interventions.membership: the denoising loss at fixed timesteps and noise, per-sample gradient norms."""

from __future__ import annotations

import pytest
import torch

from interventions.membership import denoising_loss, mean_denoising_loss, per_sample_grad_norms, prediction_target
from recipes.worlds.gaussian_mixture import random_mixture

torch.set_num_threads(1)


def _mixture_denoisers():
    mix = random_mixture(3, 4, torch.Generator().manual_seed(0))
    return mix, {p: mix.denoiser(prediction_type=p) for p in ("epsilon", "sample", "v_prediction")}


def test_losses_of_the_three_prediction_types_agree_through_the_schedule():
    """For one exact denoiser, the x0 error e fixes the others: eps error = -sqrt(abar / (1 - abar)) e
    and v error = -e / sqrt(1 - abar); a wrong target formula breaks these ratios."""
    mix, dens = _mixture_denoisers()
    x0 = mix.sample(32, torch.Generator().manual_seed(1))
    steps = [10, 300, 800]
    abar = dens["epsilon"].alphas_cumprod.float()
    losses = {
        p: denoising_loss(d, x0, steps, abar, p, generator=torch.Generator().manual_seed(2)) for p, d in dens.items()
    }
    a = abar[steps]
    torch.testing.assert_close(losses["epsilon"], losses["sample"] * a / (1 - a), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(losses["v_prediction"], losses["sample"] / (1 - a), rtol=1e-3, atol=1e-6)
    assert float(losses["sample"][:, 0].mean()) < float(losses["sample"][:, 2].mean())  # less noise, easier x0


def test_fixed_noise_makes_the_loss_deterministic_and_shared_noise_broadcasts():
    mix, dens = _mixture_denoisers()
    x0 = mix.sample(8, torch.Generator().manual_seed(1))
    abar = dens["epsilon"].alphas_cumprod.float()
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    shared = denoising_loss(dens["epsilon"], x0, [50, 500], abar, noise=noise)
    stacked = denoising_loss(dens["epsilon"], x0, [50, 500], abar, noise=torch.stack([noise, noise]))
    assert torch.equal(shared, stacked)
    a = denoising_loss(dens["epsilon"], x0, [50], abar, generator=torch.Generator().manual_seed(9))
    b = denoising_loss(dens["epsilon"], x0, [50], abar, generator=torch.Generator().manual_seed(9))
    c = denoising_loss(dens["epsilon"], x0, [50], abar, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs_say_what_was_wrong():
    mix, dens = _mixture_denoisers()
    x0 = mix.sample(4, torch.Generator().manual_seed(1))
    abar = dens["epsilon"].alphas_cumprod.float()
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        denoising_loss(dens["epsilon"], x0, [1000], abar)
    with pytest.raises(ValueError, match="noise has shape"):
        denoising_loss(dens["epsilon"], x0, [1, 2], abar, noise=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        denoising_loss(dens["epsilon"], x0, [1], abar, "flow")
    with pytest.raises(ValueError, match="at least one timestep"):
        denoising_loss(dens["epsilon"], x0, [], abar)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        prediction_target(x0, x0, abar[0], "eps")


def test_mean_loss_averages_the_views_and_makes_a_sample_s_loss_repeatable():
    """Two independent sets of draws agree on which samples are hard far better with 8 views than
    with one (measured with these seeds: correlation 0.06 with one view, 0.30 with 8)."""
    mix, dens = _mixture_denoisers()
    x0 = mix.sample(400, torch.Generator().manual_seed(1))
    abar = dens["epsilon"].alphas_cumprod.float()
    noise = torch.randn(3, 2, 400, 4, generator=torch.Generator().manual_seed(4))
    mean = mean_denoising_loss(dens["epsilon"], x0, [50, 300], abar, noise=noise)
    each = torch.stack([denoising_loss(dens["epsilon"], x0, [50, 300], abar, noise=n) for n in noise])
    torch.testing.assert_close(mean, each.mean(0))
    one = mean_denoising_loss(dens["epsilon"], x0, [300], abar, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        one, denoising_loss(dens["epsilon"], x0, [300], abar, generator=torch.Generator().manual_seed(5))
    )

    def repeatability(views):
        a, b = (
            mean_denoising_loss(
                dens["epsilon"], x0, [300], abar, views=views, generator=torch.Generator().manual_seed(s)
            )
            for s in (6, 7)
        )
        return float(torch.corrcoef(torch.cat([a, b], 1).T)[0, 1])

    r1, r8 = repeatability(1), repeatability(8)
    assert r1 < 0.15 and r8 > 0.2, (r1, r8)
    with pytest.raises(ValueError, match="views is the number of noise draws"):
        mean_denoising_loss(dens["epsilon"], x0, [300], abar, views=0)
    with pytest.raises(ValueError, match=r"expected \(views, len\(timesteps\), \*x0.shape\)"):
        mean_denoising_loss(dens["epsilon"], x0, [50, 300], abar, noise=torch.zeros(2, 400, 4))


def test_grad_norms_equal_per_sample_autograd_and_leave_parameters_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))

    def losses():
        return (model(x) - target).pow(2).mean(1)

    norms = per_sample_grad_norms(model, "1", losses)
    expected = []
    for i in range(6):
        h = torch.tanh(model[0](x[i : i + 1])).detach().requires_grad_(True)
        (g,) = torch.autograd.grad((model[2](h) - target[i : i + 1]).pow(2).mean(), h)
        expected.append(g.norm())
    torch.testing.assert_close(norms, torch.stack(expected))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_grad_norms_refuse_a_site_that_fires_twice():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match="fired 2 times"):
        per_sample_grad_norms(model, "0", lambda: (model(x) + model(x))[:, 0])
    assert all(p.requires_grad for p in model.parameters())
