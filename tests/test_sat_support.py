"""The stable-audio-tools test fixture (tests/sat_support.py) imports, builds and generates offline,
and pins down the facts the stable-audio adapter relies on (CFG layout, call counts, t range)."""

import importlib.util
import sys

import pytest
import torch

from tests.sat_support import (
    SAT_INSTALL_HINT,
    build_tiny_sat_model,
    generate,
    import_stable_audio_tools,
    sat_available,
)

pytestmark = pytest.mark.skipif(not sat_available(), reason=SAT_INSTALL_HINT)

STUBBED = ("torchvision", "cleanfid", "clip", "skimage")


@pytest.fixture(scope="module")
def model():
    return build_tiny_sat_model(seed=0)


def test_import_leaves_no_stubs_and_transformers_imports():
    import torch._dynamo.config as dynamo_config

    missing_before = {n for n in STUBBED if importlib.util.find_spec(n) is None}
    suppress_before = dynamo_config.suppress_errors
    sat = import_stable_audio_tools()
    assert sat.k_diffusion.sampling.sample_dpmpp_3m_sde
    assert not any(m.split(".")[0] in missing_before for m in sys.modules)
    for name in missing_before:
        assert importlib.util.find_spec(name) is None
    import transformers

    assert transformers.T5Config(d_model=8).d_model == 8
    # stable_audio_tools.models.utils sets suppress_errors=True at import; the import helper restores it
    assert dynamo_config.suppress_errors == suppress_before


def test_build_is_tiny_deterministic_and_has_expected_sites(model):
    sat = import_stable_audio_tools()
    assert isinstance(model, sat.ConditionedDiffusionModelWrapper)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 300_000
    names = dict(model.named_modules())
    for i in range(2):
        assert isinstance(names[f"model.model.transformer.layers.{i}"], sat.TransformerBlock)
        assert isinstance(names[f"model.model.transformer.layers.{i}.self_attn"], sat.Attention)
        assert isinstance(names[f"model.model.transformer.layers.{i}.cross_attn"], sat.Attention)
    again = build_tiny_sat_model(seed=0).state_dict()
    other = build_tiny_sat_model(seed=1).state_dict()
    sd = model.state_dict()
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    assert not all(torch.equal(sd[k], other[k]) for k in sd)


def test_generate_shape_and_determinism(model):
    rng = torch.get_rng_state()
    a = generate(model, steps=4, seed=0, batch_size=2)
    assert a.shape == (2, 4, 16) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, generate(model, steps=4, seed=0, batch_size=2))
    assert not torch.allclose(a, generate(model, steps=4, seed=1, batch_size=2))
    assert torch.equal(torch.get_rng_state(), rng)  # caller's RNG untouched


def test_cfg_layout_call_count_and_timestep(model):
    """CFG doubles the batch inside DiffusionTransformer.forward as [cond, uncond]; the uncond
    rows get an all-zero cross-attention context; context reaches cross_attn as a kwarg; the
    denoiser (model.model) gets t = atan(sigma) * 2 / pi in (0, 1), shape (B,), once per step."""
    seen_t, contexts = [], []
    dit = model.model
    cross_attn = dict(model.named_modules())["model.model.transformer.layers.0.cross_attn"]
    h1 = dit.register_forward_pre_hook(lambda m, args: seen_t.append(args[1].clone()))
    h2 = cross_attn.register_forward_pre_hook(
        lambda m, args, kwargs: contexts.append(kwargs["context"].clone()), with_kwargs=True
    )
    try:
        generate(model, steps=3, cfg_scale=3.0, batch_size=2, prompt=["kick drum loop", "piano"])
    finally:
        h1.remove()
        h2.remove()
    assert len(seen_t) == len(contexts) == 3
    for t in seen_t:
        assert t.shape == (2,) and t.dtype == torch.float32 and 0 < t[0] < 1
    assert seen_t[0][0] == pytest.approx(torch.tensor(100.0).atan().item() * 2 / torch.pi)
    ctx = contexts[0]
    assert ctx.shape[0] == 4  # [cond0, cond1, uncond0, uncond1]
    assert ctx[:2].abs().sum() > 0 and not torch.equal(ctx[0], ctx[1])
    assert torch.count_nonzero(ctx[2:]) == 0
