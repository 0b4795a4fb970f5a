"""Attribution patching against autograd and against real activation patching on GPT-2, Llama
(per token of the residual stream, per head) and a diffusers UNet (per latent pixel)."""

import pytest
import torch

from interventions import attach
from interventions.attribution import activation_patching, attribution_patching
from interventions.errors import InterventionError
from interventions.heads import head_sites
from tests.tiny_models import gpt2_lm, llama_lm, sd_pipeline

CLEAN = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 12, 13]])
CORRUPT = torch.tensor([[2, 11, 6, 7, 8, 9, 10, 12, 13]])  # token 1 swapped


def metric(out):
    return out.logits[0, -1, 20] - out.logits[0, -1, 21]


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _model(name):
    if name == "gpt2":
        return gpt2_lm()[0], [f"transformer.h.{i}" for i in range(2)]
    return llama_lm()[0], [f"model.layers.{i}" for i in range(2)]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_scores_are_clean_minus_corrupt_times_autograd_gradient(name):
    model, blocks = _model(name)
    got = attribution_patching(model, blocks, CLEAN, CORRUPT, metric, per="element")
    acts = {}

    def grab(x, ctx):
        acts[ctx.site] = x

    with torch.no_grad(), attach(model, {b: grab for b in blocks}):
        model(CLEAN)
    clean = {k: v.clone() for k, v in acts.items()}
    with attach(model, {b: grab for b in blocks}):
        value = metric(model(CORRUPT))
    grads = torch.autograd.grad(value, [acts[b] for b in blocks])
    for b, g in zip(blocks, grads, strict=True):
        assert torch.allclose(got[b], (clean[b] - acts[b].detach()) * g, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # only the sites' gradients were asked for


@pytest.mark.parametrize(("name", "threshold", "away"), [("gpt2", 0.99, 0.99), ("llama", 0.9, 0.95)])
def test_residual_per_token_correlates_with_real_patching(name, threshold, away):
    model, blocks = _model(name)
    est = attribution_patching(model, blocks, CLEAN, CORRUPT, metric)
    real = activation_patching(model, blocks, CLEAN, CORRUPT, metric)
    e, r = torch.stack([est[b] for b in blocks]), torch.stack([real[b] for b in blocks])
    assert e.shape == r.shape == (2, 9)
    # measured: GPT-2 0.994, Llama 0.914 over every (layer, position); away from the swapped token
    # (whose residual patch replaces the whole embedding, far outside the linear regime) 0.999 and 0.954
    assert _corr(e, r) > threshold
    assert _corr(e[:, 2:], r[:, 2:]) > away
    assert torch.equal(e[1, :-1], torch.zeros(8)) and torch.equal(
        r[1, :-1], torch.zeros(8)
    )  # last block: last token only


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_per_head_correlates_with_real_head_patching(name):
    model, _ = _model(name)
    hs = head_sites(model)
    sites, n = [h.site for h in hs], {h.site: h.n_heads for h in hs}
    est = attribution_patching(model, sites, CLEAN, CORRUPT, metric, per="head", n_heads=n)
    real = activation_patching(model, sites, CLEAN, CORRUPT, metric, per="head", n_heads=n)
    e, r = torch.cat([est[s] for s in sites]), torch.cat([real[s] for s in sites])
    assert e.shape == (8,)
    assert _corr(e, r) > 0.99  # measured: GPT-2 0.9996, Llama 0.996
    assert torch.allclose(e.sum(), torch.stack([est.get(s) for s in sites]).sum())
    per_site = attribution_patching(model, sites, CLEAN, CORRUPT, metric, per="site")
    assert torch.allclose(
        torch.stack([per_site[s] for s in sites]), torch.stack([est[s].sum() for s in sites]), atol=1e-6
    )


def test_unet_per_pixel_correlates_with_real_patching():
    unet = sd_pipeline().unet
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    other = text + 0.3 * torch.randn(1, 5, 32, generator=g)
    w = torch.randn(1, 4, 8, 8, generator=g)

    def score(out):
        return (out.sample * w).sum()

    sites = [f"{b}:output.sample" for b in ("down_blocks.0.attentions.0", "mid_block.attentions.0")]
    est = attribution_patching(unet, sites, (x, 500, text), (x, 500, other), score)
    real = activation_patching(unet, sites, (x, 500, text), (x, 500, other), score)
    assert est[sites[0]].shape == real[sites[0]].shape == (8, 8)  # per latent pixel (BCHW: channels summed)
    assert est[sites[1]].shape == (4, 4)
    e = torch.cat([est[s].flatten() for s in sites])
    r = torch.cat([real[s].flatten() for s in sites])
    assert _corr(e, r) > 0.99  # measured 0.9994


def test_errors_name_the_fix():
    model, blocks = _model("gpt2")
    with pytest.raises(InterventionError, match="scalar"):
        attribution_patching(model, blocks, CLEAN, CORRUPT, lambda o: o.logits)
    with pytest.raises(InterventionError, match="n_heads=4 or"):
        attribution_patching(model, [head_sites(model)[0].site], CLEAN, CORRUPT, metric, per="head")
    with pytest.raises(InterventionError, match="does not depend"):
        attribution_patching(model, blocks, CLEAN, CORRUPT, lambda o: torch.tensor(1.0))
