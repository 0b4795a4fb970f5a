"""Adapters on tiny diffusers pipelines built from configs with the real classes.

For each pipeline with guidance > 1: caching a site records exactly steps x branches entries
with the right rows (checked against the conditioning the denoiser really received), a
cond-only hook changes only conditional rows, and patching every site from the same run's cache
reproduces the output bit for bit.
"""

from dataclasses import dataclass, field

import pytest
import torch

from interventions import AddVector, Cache, Patch, When, attach
from interventions.testing import assert_no_hooks_left, tensor_sites
from tests import tiny_models

STEPS = 3


@dataclass
class Case:
    build: str
    kwargs: dict
    site: str  # a cross-attention (or block) site
    cond_input: str  # the denoiser input that differs between branches
    branches: tuple = ("uncond", "cond")
    swap: dict = field(default_factory=dict)  # kwargs that swap cond and uncond conditioning


CASES = {
    "sd": Case(
        "sd_pipeline",
        dict(prompt=["a red circle"], negative_prompt=["blue"], guidance_scale=3.0, output_type="pt"),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "unet:input.encoder_hidden_states",
        swap=dict(prompt=["blue"], negative_prompt=["a red circle"]),
    ),
    "stable_audio": Case(
        "stable_audio_pipeline",
        dict(prompt="a tone", negative_prompt="noise", guidance_scale=3.0, audio_end_in_s=2.0),
        "transformer.transformer_blocks.0.attn2",
        "transformer:input.encoder_hidden_states",
        swap=dict(prompt="noise", negative_prompt="a tone"),
    ),
    "sd3": Case(
        "sd3_pipeline",
        dict(prompt="a red circle", negative_prompt="blue", guidance_scale=3.0, output_type="pt"),
        "transformer.transformer_blocks.0:output.1",
        "transformer:input.encoder_hidden_states",
        swap=dict(prompt="blue", negative_prompt="a red circle"),
    ),
    "flux": Case(
        "flux_pipeline",
        dict(
            prompt="a red circle", negative_prompt="blue", true_cfg_scale=3.0, max_sequence_length=16, output_type="pt"
        ),
        "transformer.transformer_blocks.0:output.1",
        "transformer:input.encoder_hidden_states",
        branches=("cond", "uncond"),
        swap=dict(prompt="blue", negative_prompt="a red circle"),
    ),
    "dit": Case(
        "dit_pipeline",
        dict(class_labels=[1, 2], guidance_scale=3.0, output_type="np"),
        "transformer.transformer_blocks.0.attn1",
        "transformer:input.class_labels",
        branches=("cond", "uncond"),
    ),
}


def _run(pipe, case, **extra):
    kwargs = {"generator": torch.Generator().manual_seed(0), **case.kwargs, **extra}
    out = pipe(num_inference_steps=STEPS, **kwargs)
    first = out[0]
    return torch.as_tensor(first) if not isinstance(first, torch.Tensor) else first


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    c = CASES[request.param]
    return request.param, c, getattr(tiny_models, c.build)()


def test_cache_records_steps_times_branches_with_right_rows(case):
    name, c, pipe = case
    cache = Cache()
    with attach(pipe, {c.site: cache, c.cond_input: cache}):
        _run(pipe, c)
    expected = {(s, b) for s in range(STEPS) for b in c.branches}
    assert {(k[1], k[2]) for k in cache.keys() if k[0] == c.site} == expected
    assert {(k[1], k[2]) for k in cache.keys() if k[0] == c.cond_input} == expected

    rows = {b: cache.get(c.cond_input, 0, b) for b in c.branches}
    if name == "dit":  # class labels: cond rows carry the labels, uncond rows the null class
        assert rows["cond"].tolist() == [1, 2] and rows["uncond"].tolist() == [1000, 1000]
        return
    assert not torch.equal(rows["cond"], rows["uncond"])
    swapped = Cache()
    with attach(pipe, {c.cond_input: swapped}):
        _run(pipe, c, **c.swap)
    assert torch.equal(swapped.get(c.cond_input, 0, "uncond"), rows["cond"])
    assert torch.equal(swapped.get(c.cond_input, 0, "cond"), rows["uncond"])


def test_cond_only_hook_changes_only_cond_rows(case):
    name, c, pipe = case
    den_module = "unet" if "unet" in pipe.components else "transformer"
    den = f"{den_module}:output.0"
    base, steered = Cache(), Cache()
    with attach(pipe, {den: base}):
        _run(pipe, c)
    out = base.get(den, 0, "cond")
    features = 1 if out.ndim == 4 or name == "stable_audio" else -1  # BCHW / BCT / tokens
    vec = torch.full((out.shape[features],), 0.5)
    with attach(pipe, {den: [AddVector(vec, when=When(branch="cond", steps=0)), steered]}):
        _run(pipe, c)
    assert torch.equal(steered.get(den, 0, "uncond"), base.get(den, 0, "uncond"))
    assert not torch.equal(steered.get(den, 0, "cond"), base.get(den, 0, "cond"))
    assert_no_hooks_left(pipe.components[den_module])


def test_patching_every_site_from_same_run_is_bit_identical(case):
    name, c, pipe = case
    den = "unet" if "unet" in pipe.components else "transformer"
    sites = tensor_sites(pipe.components[den], lambda: _run(pipe, c), prefix=den)  # every tensor output
    assert len(sites) > 50
    cache = Cache()
    with attach(pipe, {s: cache for s in sites}):
        reference = _run(pipe, c)
    with attach(pipe, {s: Patch(cache) for s in sites}) as session:
        patched = _run(pipe, c)
    assert min(session.fired.values()) > 0
    assert torch.equal(reference, patched)
    # and the patch really acts: patching from another run's cache changes the output
    other = Cache()
    with attach(pipe, {c.site: other}):
        _run(pipe, c, generator=torch.Generator().manual_seed(1))
    with attach(pipe, {c.site: Patch(other)}):
        assert not torch.equal(_run(pipe, c), reference)


def test_ddpm_unconditional_pipeline_has_steps_but_no_branches():
    pipe = tiny_models.ddpm_pipeline()
    cache = Cache()
    with attach(pipe, {"@self_attn": cache}):
        pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np")
    site = "unet.mid_block.attentions.0"
    assert {(k[1], k[2]) for k in cache.keys() if k[0] == site} == {(s, None) for s in range(STEPS)}
    assert cache.get(site, 0, None).ndim == 4  # BCHW feature map


def test_site_groups_and_step_restart_per_pipeline_call():
    pipe = tiny_models.sd_pipeline()
    cache = Cache(on_repeat="replace")  # the second call's steps 0, 1 replace the first's
    kwargs = dict(prompt=["a"], num_inference_steps=2, guidance_scale=2.0, output_type="pt")
    with attach(pipe, {"@cross_attn": cache}) as session:
        pipe(**kwargs)
        pipe(**kwargs)
    assert all(site.endswith("attn2") for site in session.fired)
    assert len(session.fired) == 4  # down 1, mid 1, up 2 cross-attention
    assert {k[1] for k in cache.keys()} == {0, 1}  # both calls restart at step 0
    assert session.state.run == 2


def test_attaching_to_a_pipeline_reads_no_deprecated_attribute(case):
    # the adapter finds the components from the config without touching plain config values
    # (diffusers warns on ``pipe.requires_safety_checker``)
    import warnings

    _, _, pipe = case
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with attach(pipe, {}) as session:
            pass
    assert session.adapter.components()  # the denoiser and friends, each an nn.Module
    assert all(isinstance(m, torch.nn.Module) for m in session.adapter.components().values())


def test_bare_unet_batched_and_sequential_cfg_agree():
    pipe = tiny_models.sd_pipeline()
    unet = pipe.unet
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    emb_c, emb_u = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    hook = {"down_blocks.0.attentions.0:output.0": AddVector(torch.ones(8), when=When(branch="cond"))}
    t = torch.tensor(500)
    with torch.no_grad():
        with attach(unet, hook, cfg=("uncond", "cond")):
            batched = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_u, emb_c])).sample
        with attach(unet, hook) as s:
            with s.branch("uncond"):
                seq_u = unet(x, t, encoder_hidden_states=emb_u).sample
            with s.branch("cond"):
                seq_c = unet(x, t, encoder_hidden_states=emb_c).sample
        plain_u = unet(x, t, encoder_hidden_states=emb_u).sample
    torch.testing.assert_close(batched, torch.cat([seq_u, seq_c]), atol=1e-5, rtol=1e-5)
    assert torch.equal(seq_u, plain_u)


def test_bare_unet_cache_keys_batched_sequential_and_unlabelled_agree():
    # a Cache on a denoiser takes a batched CFG call whole (rows split by branch in the store)
    # and a one-branch call with that branch's label: both must key the same rows alike
    unet = tiny_models.sd_pipeline().unet
    torch.manual_seed(0)
    x, emb_c, emb_u = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    site, t = "mid_block", torch.tensor(500)
    batched, sequential, unlabelled = Cache(), Cache(), Cache()
    with torch.no_grad():
        with attach(unet, {site: batched}, cfg=("uncond", "cond")):
            unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_u, emb_c]))
        with attach(unet, {site: sequential}) as s:
            for branch, emb in (("uncond", emb_u), ("cond", emb_c)):
                with s.branch(branch):
                    unet(x, t, encoder_hidden_states=emb)
        with attach(unet, {site: unlabelled}):
            unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_u, emb_c]))
    assert sorted(batched.keys()) == sorted(sequential.keys()) == [(site, 0, "cond"), (site, 0, "uncond")]
    for branch in ("uncond", "cond"):
        torch.testing.assert_close(batched.get(site, 0, branch), sequential.get(site, 0, branch), atol=1e-5, rtol=1e-5)
    assert unlabelled.keys() == [(site, 0, None)]
    assert torch.equal(
        unlabelled.get(site, 0), torch.cat([batched.get(site, 0, "uncond"), batched.get(site, 0, "cond")])
    )


def test_when_t_interval_selects_by_timestep_value():
    pipe = tiny_models.sd_pipeline()
    cache = Cache(when=When(t=(0, 500)))
    with attach(pipe, {"unet.mid_block": cache}):
        pipe(prompt=["a"], num_inference_steps=4, guidance_scale=1.0, output_type="pt")
    timesteps = pipe.scheduler.timesteps.tolist()
    expected = {i for i, t in enumerate(timesteps) if t <= 500}
    assert {k[1] for k in cache.keys()} == expected
    assert {k[2] for k in cache.keys()} == {"cond"}  # guidance 1: one branch, labelled cond


def _denoiser_calls(pipe, case):
    """The denoiser's (args, kwargs) of the first step's call(s) in a real pipeline run."""
    den = pipe.components["unet"] if "unet" in pipe.components else pipe.components["transformer"]
    calls = []
    handle = den.register_forward_pre_hook(lambda m, a, kw: calls.append((a, dict(kw))), with_kwargs=True)
    try:
        _run(pipe, case)
    finally:
        handle.remove()
    return den, calls


def _rows(value, rows, batch):
    return value[rows] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch else value


def _cat(a, b, batch):
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == batch else a


@pytest.mark.parametrize("name", ["sd", "sd3", "dit", "flux", "stable_audio"])
def test_batched_and_sequential_cfg_agree_for_a_cond_only_hook(name):
    """The same cond-only hook gives the same denoiser output whether the two branches run as one
    batched call (rows labelled by the layout) or as two calls (labelled with session.branch)."""
    c = CASES[name]
    pipe = getattr(tiny_models, c.build)()
    den, calls = _denoiser_calls(pipe, c)
    site = {"sd": "down_blocks.0.attentions.0:output.0", "sd3": "transformer_blocks.0:output.1"}.get(
        name, "transformer_blocks.0"
    )
    site = {"flux": "transformer_blocks.0:output.1", "stable_audio": "transformer_blocks.0.attn2"}.get(name, site)
    if name == "flux":  # natively sequential: cond call, then uncond call; build the batch from them
        (a_c, kw_c), (a_u, kw_u) = calls[0], calls[1]
        batch = kw_c["hidden_states"].shape[0]
        order = ("cond", "uncond")
        batched_kw = {k: _cat(kw_c[k], kw_u[k], batch) for k in kw_c}
        batched_args = a_c
        per_branch = {"cond": (a_c, kw_c), "uncond": (a_u, kw_u)}
    else:
        args, kw = calls[0]
        x = args[0] if args else kw.get("hidden_states", kw.get("sample"))
        batch, half = x.shape[0], x.shape[0] // 2
        order = c.branches
        batched_args, batched_kw = args, kw
        per_branch = {
            b: (tuple(_rows(v, rows, batch) for v in args), {k: _rows(v, rows, batch) for k, v in kw.items()})
            for b, rows in zip(order, (slice(0, half), slice(half, batch)), strict=True)
        }
    probe = Cache()
    with torch.no_grad(), attach(den, {site: probe}, cfg=order):
        den(*batched_args, **batched_kw)
    width = probe.get(site, 0, "cond").shape[1 if probe.get(site, 0, "cond").ndim == 4 else -1]
    hook = {
        site: AddVector(torch.linspace(-1, 1, width), when=When(branch="cond"))
    }  # not constant: LayerNorm would erase that
    with torch.no_grad():
        with attach(den, hook, cfg=order):
            batched = den(*batched_args, **batched_kw)[0]
        with attach(den, hook) as s:
            outs = {}
            for b in order:
                with s.branch(b):
                    a, k = per_branch[b]
                    outs[b] = den(*a, **k)[0]
        plain_uncond = den(*per_branch["uncond"][0], **per_branch["uncond"][1])[0]
    sequential = torch.cat([outs[b] for b in order])
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-4)
    assert torch.equal(outs["uncond"], plain_uncond)  # the uncond pass is untouched
    assert not torch.allclose(outs["cond"], den(*per_branch["cond"][0], **per_branch["cond"][1])[0])
