"""Partial DDIM inversion (``ddim_invert(..., stop_at=t)``) and sampling from that level
(``ddim_sample(..., start_at=t)``) on an exact Gaussian denoiser: the round trip returns the sample,
the intermediate sits at the level asked for, and bad levels are refused."""

import pytest
import torch
from diffusers import DDPMScheduler

from interventions.inversion import InversionError, ddim_invert, ddim_sample

torch.set_num_threads(1)
ABAR = DDPMScheduler().alphas_cumprod
VAR = 0.25  # data ~ N(0, 0.5^2 I)


def eps(x, t):
    return (1 - ABAR[t]).sqrt() * x / (VAR * ABAR[t] + 1 - ABAR[t])


def test_partial_inversion_stops_at_the_level_and_sampling_from_it_returns_the_sample():
    x0 = VAR**0.5 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    x_t = ddim_invert(eps, x0, DDPMScheduler(), 50, progress=False, stop_at=300)
    # at level t the data's marginal has variance abar_t * 0.25 + 1 - abar_t
    assert x_t.var().item() == pytest.approx(float(ABAR[300] * VAR + 1 - ABAR[300]), rel=0.05)
    back = ddim_sample(eps, x_t, DDPMScheduler(), 50, progress=False, start_at=300)
    assert ((back - x0).norm() / x0.norm()).item() < 0.05  # 0.038 at 50 steps
    full = ddim_invert(eps, x0, DDPMScheduler(), 50, progress=False)
    assert ddim_invert(eps, x0, DDPMScheduler(), 50, progress=False, stop_at=980).equal(full)  # the last level


def test_partial_inversion_refuses_levels_off_the_schedule():
    x0 = torch.zeros(2, 2)
    with pytest.raises(InversionError, match="stop_at=305 is not one of"):
        ddim_invert(eps, x0, DDPMScheduler(), 50, progress=False, stop_at=305)
    with pytest.raises(InversionError, match="start_at=7 is not one of"):
        ddim_sample(eps, x0, DDPMScheduler(), 50, progress=False, start_at=7)
    with pytest.raises(InversionError, match="within the 20 forward_steps"):
        ddim_invert(eps, x0, DDPMScheduler(), 50, forward_steps=20, progress=False, stop_at=300)
