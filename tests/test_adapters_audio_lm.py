"""Adapters for stable-audio-tools (its own generate_diffusion_cond) and transformers LMs."""

import pytest
import torch

from interventions import AddVector, Cache, Patch, When, attach
from interventions.testing import assert_no_hooks_left, tensor_sites
from tests import sat_support, tiny_models

STEPS = 4
sat = pytest.mark.skipif(
    not sat_support.sat_available(), reason="stable-audio-tools not installed (.ci/install-audio.sh)"
)


@pytest.fixture(scope="module")
def sat_model():
    sat_support.import_stable_audio_tools()
    return sat_support.build_tiny_sat_model(seed=0)


@sat
def test_sat_cache_records_steps_times_branches_with_right_rows(sat_model):
    cache = Cache()
    with attach(
        sat_model,
        {"@cross_attn": cache, "@blocks": cache, "model.model.transformer.layers.0.cross_attn:input.context": cache},
    ):
        sat_support.generate(sat_model, steps=STEPS, cfg_scale=3.0, seed=0)
    site = "model.model.transformer.layers.0.cross_attn"
    expected = {(s, b) for s in range(STEPS) for b in ("cond", "uncond")}
    assert {(k[1], k[2]) for k in cache.keys() if k[0] == site} == expected
    ctx_site = "model.model.transformer.layers.0.cross_attn:input.context"
    # stable-audio-tools builds the uncond rows with a zero context: the adapter must label them so
    assert torch.count_nonzero(cache.get(ctx_site, 0, "uncond")) == 0
    assert torch.count_nonzero(cache.get(ctx_site, 0, "cond")) > 0
    assert cache.get(site, 0, "cond").shape[0] == 1


@sat
def test_sat_cond_only_hook_and_bit_identical_patching(sat_model):
    site = "model.model.transformer.layers.1"
    base, steered = Cache(), Cache()
    with attach(sat_model, {site: base}):
        ref = sat_support.generate(sat_model, steps=STEPS, cfg_scale=3.0, seed=0)
    vec = torch.full((base.get(site, 0, "cond").shape[-1],), 0.5)
    with attach(sat_model, {site: [AddVector(vec, when=When(branch="cond", steps=0)), steered]}):
        sat_support.generate(sat_model, steps=STEPS, cfg_scale=3.0, seed=0)
    assert torch.equal(steered.get(site, 0, "uncond"), base.get(site, 0, "uncond"))
    assert not torch.equal(steered.get(site, 0, "cond"), base.get(site, 0, "cond"))

    sites = tensor_sites(
        sat_model.model.model, lambda: sat_support.generate(sat_model, steps=STEPS, seed=0), "model.model"
    )
    assert len(sites) > 30
    cache = Cache()
    with attach(sat_model, {s: cache for s in sites}):
        sat_support.generate(sat_model, steps=STEPS, cfg_scale=3.0, seed=0)
    with attach(sat_model, {s: Patch(cache) for s in sites}):
        patched = sat_support.generate(sat_model, steps=STEPS, cfg_scale=3.0, seed=0)
    assert torch.equal(patched, ref)
    assert_no_hooks_left(sat_model)


@sat
def test_sat_guidance_one_is_a_single_cond_branch(sat_model):
    cache = Cache()
    with attach(sat_model, {"model.model.transformer.layers.0": cache}):
        sat_support.generate(sat_model, steps=STEPS, cfg_scale=1.0, seed=0)
    assert {k[2] for k in cache.keys()} == {"cond"}


@pytest.mark.parametrize("build", ["gpt2_lm", "llama_lm"])
def test_lm_groups_cache_patch_and_steer(build):
    model, tok = getattr(tiny_models, build)()
    ids = tok(["the cat sat"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
        cache = Cache()
        with attach(model, {"@blocks": cache, "@mlp": cache}) as session:
            model(ids)
        blocks = [s for s in session.fired if s.endswith(("h.0", "h.1", "layers.0", "layers.1"))]
        assert len(blocks) == 2 and all(cache[s].shape[-1] == 64 for s in blocks)
        every = tensor_sites(model, lambda: model(ids))
        full = Cache()
        with attach(model, {s: full for s in every}):
            model(ids)
        with attach(model, {s: Patch(full) for s in every}):
            assert torch.equal(model(ids).logits, ref)
        with attach(model, {"@mlp": AddVector(torch.ones(64), scale=4.0, tokens=[ids.shape[1] - 1])}):
            steered = model(ids).logits
    last = ids.shape[1] - 1  # causal: steering the last token leaves the earlier ones untouched
    assert torch.equal(steered[:, :last], ref[:, :last]) and not torch.equal(steered[:, last], ref[:, last])
    assert_no_hooks_left(model)


def test_lm_generate_calls_are_steps_for_when_calls():
    model, tok = tiny_models.gpt2_lm()
    ids = tok(["the cat"], return_tensors="pt").input_ids
    cache = Cache(when=When(calls=range(1, 3)))
    with torch.no_grad(), attach(model, {"transformer.h.0.mlp": cache}):
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert sorted(k[1] for k in cache.keys()) == [1, 2]
    assert cache.get("transformer.h.0.mlp", 1).shape[1] == 1  # one new token per call with the KV cache
