"""Per-head sites, head selection in Patch / Ablate, attention patterns (transformers eager,
diffusers through ProbsProcessor): numbers from real runs against attention recomputed by hand."""

import math

import pytest
import torch

from interventions import Ablate, Cache, Patch, attach
from interventions.errors import InterventionError
from interventions.heads import PatternsUnavailableError, ProbsProcessor, eager_attention, head_sites, pattern_sites
from tests.tiny_models import gpt2_lm, llama_lm, sd_pipeline

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])
CORRUPT = torch.tensor([[11, 6, 7, 8, 9, 10]])


def _lm(name, **kw):
    return (gpt2_lm if name == "gpt2" else llama_lm)(**kw)[0]


def test_head_sites_name_the_output_projection_input():
    gpt2, llama = _lm("gpt2"), _lm("llama")
    assert [(h.site, h.n_heads, h.head_dim) for h in head_sites(gpt2)] == [
        (f"transformer.h.{i}.attn.c_proj:input.0", 4, 16) for i in range(2)
    ]
    assert [(h.site, h.n_heads, h.head_dim) for h in head_sites(llama)] == [
        (f"model.layers.{i}.self_attn.o_proj:input.0", 4, 16) for i in range(2)
    ]
    unet_heads = head_sites(sd_pipeline().unet)
    assert {h.site for h in unet_heads if h.attention.endswith("attn2")} >= {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0:input.0"
    }
    assert all(h.n_heads == 2 for h in unet_heads)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_patch_one_head_moves_only_that_head(name):
    model = _lm(name)
    hs = head_sites(model)[1]
    proj = hs.site.removesuffix(":input.0")
    clean, corrupt, patched = Cache(), Cache(), Cache()
    with torch.no_grad():
        with attach(model, {hs.site: clean}):
            model(IDS)
        with attach(model, {hs.site: corrupt}):
            model(CORRUPT)
        with attach(model, {hs.site: [Patch(clean, heads=[2], n_heads=hs.n_heads), patched], proj: patched}):
            model(CORRUPT)
        z_clean, z_corr, z_new = clean[hs.site], corrupt[hs.site], patched[hs.site]
        sl = slice(2 * hs.head_dim, 3 * hs.head_dim)
        assert torch.equal(z_new[..., sl], z_clean[..., sl])
        rest = torch.ones(z_new.shape[-1], dtype=torch.bool)
        rest[sl] = False
        assert torch.equal(z_new[..., rest], z_corr[..., rest])
        assert not torch.equal(z_clean[..., sl], z_corr[..., sl])  # the patch did something
        # the projection's output is the projection of exactly that mixed input
        module = model.get_submodule(proj)
        expected = module(torch.cat([z_corr[..., : sl.start], z_clean[..., sl], z_corr[..., sl.stop :]], -1))
        assert torch.allclose(patched[proj], expected, atol=1e-6)
        # every head patched is the whole site patched: logits equal
        with attach(model, {hs.site: Patch(clean, heads=range(hs.n_heads), n_heads=hs.n_heads)}):
            all_heads = model(CORRUPT).logits
        with attach(model, {hs.site: Patch(clean)}):
            whole = model(CORRUPT).logits
    assert torch.equal(all_heads, whole)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_ablate_heads_zeroes_them_and_leaves_the_rest(name):
    model = _lm(name)
    hs = head_sites(model)[0]
    before, after = Cache(), Cache()
    with torch.no_grad(), attach(model, {hs.site: [before, Ablate(heads=[0, 3], n_heads=hs.n_heads), after]}):
        model(IDS)
    x, y = before[hs.site].unflatten(-1, (4, -1)), after[hs.site].unflatten(-1, (4, -1))
    assert torch.count_nonzero(y[..., [0, 3], :]) == 0
    assert torch.equal(y[..., [1, 2], :], x[..., [1, 2], :])
    mean, meaned = Ablate("mean", heads=[1], n_heads=hs.n_heads), Cache()
    with torch.no_grad(), attach(model, {hs.site: [mean, meaned]}):
        model(IDS)
    z = meaned[hs.site].unflatten(-1, (4, -1))
    assert torch.allclose(z[0, :, 1], x[0, :, 1].mean(0, keepdim=True).expand_as(z[0, :, 1]), atol=1e-6)


def test_heads_errors_name_the_fix():
    model = _lm("gpt2")
    hs = head_sites(model)[0]
    with pytest.raises(InterventionError, match="n_heads=<the model's head count>"):
        with torch.no_grad(), attach(model, {hs.site: Ablate(heads=[0])}):
            model(IDS)
    with pytest.raises(InterventionError, match=r"out of range for 4 heads"):
        with torch.no_grad(), attach(model, {hs.site: Ablate(heads=[4], n_heads=4)}):
            model(IDS)
    with pytest.raises(InterventionError, match="do not split into n_heads=5"):
        with torch.no_grad(), attach(model, {hs.site: Ablate(heads=[0], n_heads=5)}):
            model(IDS)


def _causal_softmax(q, k):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = scores.shape[-1]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_gpt2_patterns_equal_eager_softmax_feed_the_attention_and_elsewhere_are_refused():
    model = _lm("gpt2")
    with pytest.raises(PatternsUnavailableError, match=r"eager_attention\(model\)"):
        pattern_sites(model)
    model.set_attn_implementation("eager")  # the eager path returns them after use: not offered either
    with pytest.raises(PatternsUnavailableError, match="returns them after use"):
        pattern_sites(model)
    with torch.no_grad():
        eager_logits = model(IDS).logits
    cache = Cache()
    with eager_attention(model) as sites:
        assert sites == pattern_sites(model) == ["transformer.h.0.attn.probs", "transformer.h.1.attn.probs"]
        with torch.no_grad(), attach(model, {**{s: cache for s in sites}, "transformer.h.1.attn.c_attn": cache}):
            logits = model(IDS).logits
        with torch.no_grad(), attach(model, {s: Patch(cache) for s in sites}):
            assert torch.equal(model(IDS).logits, logits)  # patched from the same run: the identity
        with torch.no_grad(), attach(model, {sites[1]: Patch(torch.full((1, 4, 6, 6), 1 / 6))}):
            assert (model(IDS).logits - logits).abs().max() > 1e-2  # the patterns feed the attention
    assert model.config._attn_implementation == "eager" and not hasattr(model.transformer.h[0].attn, "probs")
    assert torch.allclose(logits, eager_logits, atol=1e-5)
    q, k, _ = cache["transformer.h.1.attn.c_attn"].split(64, dim=-1)
    q, k = (t.unflatten(-1, (4, 16)).transpose(1, 2) for t in (q, k))
    pattern = cache[sites[1]]
    assert pattern.shape == (1, 4, 6, 6)
    assert torch.allclose(pattern, _causal_softmax(q, k), atol=1e-6)


def test_llama_patterns_equal_eager_softmax_with_rotary():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    model = _lm("llama")
    attn = "model.layers.0.self_attn"
    cache = Cache()
    with eager_attention(model) as sites:
        assert sites[0] == f"{attn}.probs"
        hooks = {sites[0]: cache, f"{attn}.q_proj": cache, f"{attn}.k_proj": cache, "model.rotary_emb:output.0": cache}
        hooks["model.rotary_emb:output.1"] = cache
        with torch.no_grad(), attach(model, hooks):
            model(IDS)
    q = cache[f"{attn}.q_proj"].unflatten(-1, (4, 16)).transpose(1, 2)
    k = cache[f"{attn}.k_proj"].unflatten(-1, (2, 16)).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cache["model.rotary_emb:output.0"], cache["model.rotary_emb:output.1"])
    expected = _causal_softmax(q, repeat_kv(k, 2))
    assert torch.allclose(cache[sites[0]], expected, atol=1e-6)
    assert torch.allclose(cache[sites[0]].sum(-1), torch.ones(1, 4, 6), atol=1e-6)


def _unet_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor(500), torch.randn(2, 5, 32, generator=g)


def test_unet_cross_attention_maps_under_eager_attention():
    unet = sd_pipeline().unet
    sample, t, text = _unet_inputs()
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    before = dict(unet.attn_processors)
    with pytest.raises(PatternsUnavailableError, match="eager_attention"):
        pattern_sites(unet)
    with torch.no_grad():
        reference = unet(sample, t, text).sample
    with eager_attention(unet, only=["attn2"]) as sites:
        assert f"{attn}.processor.probs" in sites
        assert isinstance(unet.get_submodule(attn).processor, ProbsProcessor)
        cache = Cache()
        with (
            torch.no_grad(),
            attach(unet, {f"{attn}.processor.probs": cache, f"{attn}.to_q": cache, f"{attn}.to_k": cache}),
        ):
            out = unet(sample, t, text).sample
    assert torch.allclose(out, reference, atol=1e-5)  # the eager processor computes the same attention
    assert unet.attn_processors == before  # the very same processor objects are back
    assert "processor" not in unet.get_submodule(attn)._modules
    probs = cache[f"{attn}.processor.probs"]
    assert probs.shape == (2, 2, 64, 5)  # (batch, heads, 8x8 pixels, 5 text tokens)
    q = cache[f"{attn}.to_q"].unflatten(-1, (2, -1)).transpose(1, 2)
    k = cache[f"{attn}.to_k"].unflatten(-1, (2, -1)).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-6)


def test_unet_pattern_patch_selects_heads_and_changes_the_output():
    unet = sd_pipeline().unet
    sample, t, text = _unet_inputs()
    attn = "mid_block.attentions.0.transformer_blocks.0.attn2"
    site = f"{attn}.processor.probs"
    with eager_attention(unet) as sites:
        assert len(sites) == len(pattern_sites(unet)) == 8  # attn1 and attn2 of 4 transformer blocks
        uniform = torch.full((1, 2, 16, 5), 1 / 5)
        seen, after = Cache(), Cache()
        with torch.no_grad():
            with attach(unet, {site: seen}):
                base = unet(sample, t, text).sample
            with attach(unet, {site: [Patch(uniform, heads=[1]), after]}):
                edited = unet(sample, t, text).sample
    original, patched = seen[site], after[site]
    assert torch.equal(patched[:, 1], uniform[:, 1].expand(2, -1, -1))
    assert torch.equal(patched[:, 0], original[:, 0])
    assert not torch.allclose(base, edited)


def test_eager_attention_restores_processors_on_error_and_refuses_custom_ones():
    from diffusers.models.attention_processor import AttnProcessor

    class Custom(AttnProcessor):
        pass

    unet = sd_pipeline().unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), eager_attention(unet):
        raise RuntimeError("boom")
    assert unet.attn_processors == before
    unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1").set_processor(Custom())
    with pytest.raises(InterventionError, match=r"other than diffusers. plain one.*only=\["):
        with eager_attention(unet):
            pass
    with eager_attention(unet, only=["attn2"]):
        pass


def test_pipeline_cross_attention_maps_per_cfg_branch():
    pipe = sd_pipeline()
    cache = Cache()
    with eager_attention(pipe.unet, only=["attn2"], prefix="unet.") as sites:
        with attach(pipe, dict.fromkeys(sites, cache)):
            pipe(["a red circle"], num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    site = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.probs"
    assert site in sites and len(sites) == 4
    cond, uncond = cache.get(site, step=1, branch="cond"), cache.get(site, step=1, branch="uncond")
    assert cond.shape == uncond.shape == (1, 2, 16, 16)  # (row, heads, 4x4 pixels, 16 text tokens)
    assert torch.allclose(cond.sum(-1), torch.ones(1, 2, 16), atol=1e-5)
    assert not torch.allclose(cond, uncond)  # "a red circle" against the empty prompt
    assert len(cache.keys()) == 4 * 2 * 2  # sites x steps x branches


def test_unet_head_ablation_at_the_output_projection():
    unet = sd_pipeline().unet
    sample, t, text = _unet_inputs()
    hs = next(h for h in head_sites(unet) if h.attention == "mid_block.attentions.0.transformer_blocks.0.attn2")
    proj = hs.site.removesuffix(":input.0")
    seen, after = Cache(), Cache()
    with torch.no_grad():
        with attach(unet, {hs.site: seen}):
            base = unet(sample, t, text).sample
        with attach(unet, {hs.site: Ablate(heads=[0], n_heads=hs.n_heads), proj: after}):
            ablated = unet(sample, t, text).sample
        z = seen[hs.site].clone()
        z[..., : hs.head_dim] = 0
        assert torch.allclose(after[proj], unet.get_submodule(proj)(z), atol=1e-6)
    assert not torch.allclose(base, ablated)


def test_dit_self_attention_patterns():
    from tests.tiny_models import dit_pipeline

    dit = dit_pipeline().transformer
    g = torch.Generator().manual_seed(0)
    size = dit.config.sample_size
    x, t, y = (
        torch.randn(2, dit.config.in_channels, size, size, generator=g),
        torch.tensor([10, 10]),
        torch.tensor([1, 2]),
    )
    attn = "transformer_blocks.1.attn1"
    assert head_sites(dit)[1].site == f"{attn}.to_out.0:input.0"
    with torch.no_grad():
        reference = dit(x, timestep=t, class_labels=y).sample
        with eager_attention(dit) as sites:
            cache = Cache()
            with attach(dit, {sites[1]: cache, f"{attn}.to_q": cache, f"{attn}.to_k": cache}):
                out = dit(x, timestep=t, class_labels=y).sample
    assert torch.allclose(out, reference, atol=1e-5)
    q = cache[f"{attn}.to_q"].unflatten(-1, (2, -1)).transpose(1, 2)
    k = cache[f"{attn}.to_k"].unflatten(-1, (2, -1)).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    assert torch.allclose(cache[sites[1]], expected, atol=1e-6)


def test_patterns_refused_by_name_where_no_processor_forms_them():
    from tests.tiny_models import flux_pipeline, sd3_pipeline

    sd3 = sd3_pipeline().transformer  # joint (MMDiT) attention: JointAttnProcessor2_0
    with pytest.raises(PatternsUnavailableError, match=r"JointAttnProcessor2_0.*per-head values are: head_sites"):
        pattern_sites(sd3)
    with pytest.raises(InterventionError, match="JointAttnProcessor2_0"):
        with eager_attention(sd3):
            pass
    flux = flux_pipeline().transformer  # FluxAttention: no diffusers Attention at all
    with pytest.raises(PatternsUnavailableError, match=r"FluxAttention"):
        pattern_sites(flux)
    with pytest.raises(InterventionError, match=r"FluxAttention, not supported"):
        with eager_attention(flux):
            pass
    assert head_sites(flux)[0].site == "transformer_blocks.0.attn.to_out.0:input.0"  # per-head values still work
