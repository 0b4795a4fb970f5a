"""Stopping the forward early (baukit's stop=True, nnsight's .stop()) and editing gradients at a
site, on GPT-2, Llama and a diffusers UNet built from config."""

from __future__ import annotations

import pytest
import torch

from interventions import Cache, EditGrad, Grads, InterventionError, StopForward, attach
from interventions.testing import assert_no_hooks_left

from .tiny_models import gpt2_lm, llama_lm, sd_pipeline


def _lm(kind):
    model, _ = gpt2_lm() if kind == "gpt2" else llama_lm()
    blocks = "transformer.h" if kind == "gpt2" else "model.layers"
    return model, blocks, torch.tensor([[1, 2, 3, 4]])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_stop_ends_the_forward_after_the_last_site_and_keeps_what_it_cached(kind):
    model, blocks, ids = _lm(kind)
    full = Cache()
    with torch.no_grad(), attach(model, {f"{blocks}.0": full}):
        model(ids)
    later, result = [], None
    probe = model.get_submodule(f"{blocks}.1").register_forward_hook(lambda *a: later.append(1))
    early = Cache()
    try:
        with torch.no_grad(), attach(model, {f"{blocks}.0": early}, stop=True):
            result = model(ids)
    finally:
        probe.remove()
    assert later == [] and result is None  # layer 1 never ran; no partial output was returned
    assert torch.equal(early[f"{blocks}.0"], full[f"{blocks}.0"])
    assert_no_hooks_left(model)
    session = attach(model, {f"{blocks}.0": Cache()}, stop=True)  # outside a with block: catch it
    with pytest.raises(StopForward), torch.no_grad():
        model(ids)
    session.remove()
    assert_no_hooks_left(model)


def test_stop_on_a_unet_waits_for_every_site():
    unet = sd_pipeline().unet
    x, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    ran = []
    probe = unet.up_blocks[1].register_forward_hook(lambda *a: ran.append(1))
    cache = Cache()
    with torch.no_grad(), attach(unet, {"down_blocks.0:output.0": cache, "mid_block": cache}, stop=True):
        unet(x, torch.tensor(10), encoder_hidden_states=emb)
    probe.remove()
    assert ran == [] and {k[0] for k in cache.keys()} == {"down_blocks.0:output.0", "mid_block"}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_scaled_and_projected_gradients(kind):
    model, blocks, ids = _lm(kind)
    below, site = f"{blocks}.0", f"{blocks}.1"
    plain, edited = Grads(), Grads()
    with attach(model, {below: plain}):
        model(ids).logits.square().sum().backward()
    with attach(model, {below: edited, site: EditGrad(scale=0.5)}):
        model(ids).logits.square().sum().backward()
    assert torch.allclose(edited[below], 0.5 * plain[below], rtol=1e-5, atol=1e-7)
    v = torch.randn(model.config.hidden_size)
    seen = Grads()
    with attach(model, {site: [EditGrad(project_out=v), seen]}):
        model(ids).logits.square().sum().backward()
    along = (seen[site] @ (v / v.norm())).abs().max()
    assert along < 1e-5 * seen[site].abs().max() and seen[site].abs().max() > 0


def test_gradient_edit_on_a_unet_under_batched_cfg_edits_one_branch():
    unet = sd_pipeline().unet.requires_grad_(True)
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32)

    def grads(hooks):
        g = Grads()
        with attach(unet, {"mid_block": [*hooks, g]}, cfg=("uncond", "cond")):
            unet(x, torch.tensor(10), encoder_hidden_states=emb).sample.square().sum().backward()
        return g

    from interventions import When

    plain, edited = grads([]), grads([EditGrad(scale=0.0, when=When(branch="cond"))])
    assert torch.equal(edited.get("mid_block", 0, "cond"), torch.zeros_like(plain.get("mid_block", 0, "cond")))
    assert torch.allclose(edited.get("mid_block", 0, "uncond"), plain.get("mid_block", 0, "uncond"))


def test_gradient_edit_without_a_gradient_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(InterventionError, match="no gradient flows"), attach(model, {"0": EditGrad(scale=0.0)}):
        model.requires_grad_(False)(torch.ones(1, 2))
    with pytest.raises(ValueError, match="needs scale"):
        EditGrad()
