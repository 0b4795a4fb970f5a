"""Step counting, non-denoiser diffusers models, three-block CFG batches and branch names.

A step is one denoiser evaluation of the solver: Heun evaluates twice at each intermediate
timestep, and each evaluation must be its own step (else caches overwrite each other and
``When(steps=...)`` / ``Patch`` address the wrong evaluation), while ordinary schedulers keep one
step per timestep and sequential CFG passes stay one step. A VAE is no denoiser: each of its calls
is recorded on its own. InstructPix2Pix and PAG batch three row blocks, labelled as such. A
misspelt ``When(branch=...)`` raises instead of silently matching nothing.
"""

import warnings

import pytest
import torch

from interventions import Cache, InterventionError, Lambda, Patch, When, attach
from interventions.adapters import DiffusersModelAdapter, DiffusersModuleAdapter, DiffusersPipelineAdapter, detect
from interventions.context import ALL_ROWS, BRANCHES, RunState
from interventions.testing import assert_no_hooks_left, tensor_sites
from tests import tiny_models

STEPS = 4
SD_KW = dict(prompt=["a red circle"], negative_prompt=["blue"], guidance_scale=3.0, output_type="pt")


@pytest.fixture(scope="module")
def sd():
    return tiny_models.sd_pipeline()


def _with_scheduler(pipe, name):
    import diffusers

    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, name).from_config(original.config)
    return original


def _run(pipe, seed=0, **kw):
    return pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), **{**SD_KW, **kw})[0]


def _seen(cache, site):
    return {(k[1], k[2]) for k in cache.keys() if k[0] == site}


# -- 1. one step per denoiser evaluation -----------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler",
    [
        "DDIMScheduler",
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
    ],
)
def test_steps_are_the_schedulers_evaluations(sd, scheduler):
    """Every evaluation is its own step with both branches, its timestep the scheduler's entry."""
    original = _with_scheduler(sd, scheduler)
    try:
        cache, seen = Cache(), []
        record = Lambda(lambda x, ctx: seen.append((ctx.step, ctx.timestep, ctx.branch)))
        with attach(sd, {"unet:output.0": [cache, record]}):
            _run(sd)
        timesteps = sd.scheduler.timesteps.tolist()
    finally:
        sd.scheduler = original
    evaluations = len(timesteps)
    if scheduler in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler"):
        assert evaluations == 2 * STEPS - 1  # second-order: two evaluations per step but the first
    else:
        assert evaluations == STEPS
    assert _seen(cache, "unet:output.0") == {(s, b) for s in range(evaluations) for b in ("uncond", "cond")}
    per_step = {s: t for s, t, _ in seen}
    assert [per_step[s] for s in range(evaluations)] == pytest.approx(timesteps)


def test_heun_caches_are_distinct_and_patch_all_reproduces_the_run(sd):
    original = _with_scheduler(sd, "HeunDiscreteScheduler")
    try:
        sites = tensor_sites(sd.unet, lambda: _run(sd), prefix="unet")
        assert len(sites) > 50
        cache = Cache()
        with attach(sd, {s: cache for s in sites}):
            reference = _run(sd)
        evaluations = len(sd.scheduler.timesteps)
        assert evaluations == 7 and sd.scheduler.timesteps.tolist()[1] == sd.scheduler.timesteps.tolist()[2]
        outputs = [cache.get("unet.conv_out", s, "cond") for s in range(evaluations)]
        assert all(not torch.equal(a, b) for a, b in zip(outputs, outputs[1:], strict=False))  # none overwritten
        with attach(sd, {s: Patch(cache) for s in sites}) as session:
            patched = _run(sd)
        assert min(session.fired.values()) > 0
        assert torch.equal(reference, patched)
        # and each step's patch lands on its own evaluation: patching only step 2 (Heun's second
        # evaluation at the repeated timestep) from another run changes the result
        other = Cache()
        with attach(sd, {"unet.conv_out": other}):
            _run(sd, seed=1)
        with attach(sd, {"unet.conv_out": Patch(other, when=When(steps=2))}):
            assert not torch.equal(_run(sd), reference)
    finally:
        sd.scheduler = original


def test_a_step_restricted_hook_acts_on_one_heun_evaluation(sd):
    original = _with_scheduler(sd, "HeunDiscreteScheduler")
    try:
        hits = []
        hook = Lambda(lambda x, ctx: hits.append((ctx.step, ctx.timestep)), when=When(steps=2, branch="cond"))
        with attach(sd, {"unet.mid_block": hook}):
            _run(sd)
        assert hits == [(2, sd.scheduler.timesteps[2].item())]
    finally:
        sd.scheduler = original


def test_sequential_cfg_passes_stay_one_step():
    """Flux true CFG: two denoiser calls per step at one timestep, one scheduler update."""
    pipe = tiny_models.flux_pipeline()
    cache = Cache()
    kwargs = dict(prompt="a", negative_prompt="b", true_cfg_scale=3.0, max_sequence_length=16, output_type="pt")
    with attach(pipe, {"transformer:output.0": cache}) as session:
        pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), **kwargs)
    assert _seen(cache, "transformer:output.0") == {(s, b) for s in range(3) for b in ("cond", "uncond")}
    assert session.fired["transformer:output.0"] == 6


def test_bare_denoiser_by_hand_counts_steps_by_timestep(sd):
    """No pipeline, no scheduler to watch: two passes at one timestep are one step."""
    unet = sd.unet
    x, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 32)
    cache = Cache()
    with torch.no_grad(), attach(unet, {"mid_block": cache}) as s:
        for t in (900, 600):
            for branch in ("uncond", "cond"):
                with s.branch(branch):
                    unet(x, torch.tensor(t), encoder_hidden_states=emb)
    assert _seen(cache, "mid_block") == {(s, b) for s in (0, 1) for b in ("uncond", "cond")}


def test_run_state_new_step_on_new_timestep_or_after_a_scheduler_update():
    state = RunState()
    steps = []
    for t, stepped in [(999, False), (999, False), (666, True), (666, True), (666, False), (333, False)]:
        if stepped:
            state.scheduler_stepped()
        state.enter_denoiser("", t, ALL_ROWS)
        steps.append(state.step)
        state.exit_denoiser()
    assert steps == [0, 0, 1, 2, 2, 3]
    state.scheduler_stepped()
    state.new_run()  # a new run forgets a pending update
    state.enter_denoiser("", 333, ALL_ROWS)
    assert state.step == 0


# -- 2. a diffusers model that is not a denoiser -------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tiny_models._vae(4).eval()


def test_vae_is_not_a_denoiser_but_a_unet_is(vae, sd):
    assert isinstance(detect(vae), DiffusersModuleAdapter)
    assert type(detect(sd.unet)) is DiffusersModelAdapter
    assert type(detect(vae, cfg=("uncond", "cond"))) is DiffusersModelAdapter  # declared a denoiser


def test_each_vae_decode_call_is_recorded_on_its_own(vae):
    site = "decoder.conv_out"
    cache, steps = Cache(), []
    record = Lambda(lambda x, ctx: steps.append(ctx.step))
    zs = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    with torch.no_grad(), attach(vae, {site: [cache, record]}) as session:
        outs = [vae.decode(z).sample for z in zs]
    assert session.fired[site] == 3
    assert sorted(cache.keys()) == [(site, i, None) for i in range(3)]
    assert steps == [None, None, None]
    for i, out in enumerate(outs):  # conv_out is the decoder's last layer: its cache is the output
        assert torch.equal(cache.get(site, i, None), out)
    assert_no_hooks_left(vae)
    assert not {"forward", "encode", "decode"} & set(vars(vae))  # the call counters are gone


def test_vae_forward_is_one_call_and_when_calls_selects_a_decode(vae):
    enc, dec = "encoder.conv_out", "decoder.conv_out"
    cache = Cache()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad(), attach(vae, {enc: cache, dec: cache}):
        vae(x)  # forward runs encode then decode: one call
        z = vae.encode(x).latent_dist.mode()
        vae.decode(z)
    assert sorted(cache.keys()) == [(dec, 0, None), (dec, 2, None), (enc, 0, None), (enc, 1, None)]
    second = Cache(when=When(calls=1))
    with torch.no_grad(), attach(vae, {dec: second}):
        for _ in range(3):
            vae.decode(z)
    assert second.keys() == [(dec, 1, None)]


# -- 3. three-block CFG batches ------------------------------------------------------------------


def _pix2pix(sd):
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": 8})  # latents + image latents
    parts = {k: v for k, v in sd.components.items() if k != "unet"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the safety-checker notice
        return tiny_models._finish(StableDiffusionInstructPix2PixPipeline(**parts, unet=unet))


@pytest.fixture(scope="module")
def pix2pix(sd):
    return _pix2pix(sd)


def _edit(pipe, **kw):
    kwargs = dict(prompt=["a red circle"], image=torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    kwargs |= dict(guidance_scale=3.0, image_guidance_scale=1.5, output_type="pt", num_inference_steps=2)
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs | kw)[0]


def test_instruct_pix2pix_labels_its_three_blocks(pix2pix):
    """Rows ``[text + image, image only, neither]``: read back from what the UNet received."""
    latents, text = "unet:input.0", "unet:input.encoder_hidden_states"
    cache = Cache()
    with attach(pix2pix, {latents: cache, text: cache, "unet.mid_block": cache}):
        _edit(pix2pix)  # one prompt: a batch of 3 rows, which two halves cannot split
    order = ("cond", "image_cond", "uncond")
    assert _seen(cache, "unet.mid_block") == {(s, b) for s in range(2) for b in order}
    x = {b: cache.get(latents, 0, b) for b in order}
    e = {b: cache.get(text, 0, b) for b in order}
    assert torch.equal(x["cond"][:, 4:], x["image_cond"][:, 4:]) and x["cond"][:, 4:].abs().sum() > 0
    assert not x["uncond"][:, 4:].any()  # no image
    assert torch.equal(e["image_cond"], e["uncond"]) and not torch.equal(e["cond"], e["uncond"])  # no text


def test_instruct_pix2pix_cond_only_hook_changes_only_cond_rows(pix2pix):
    site = "unet:output.0"
    base, steered = Cache(), Cache()
    with attach(pix2pix, {site: base}):
        _edit(pix2pix)
    hook = Lambda(lambda x, ctx: x + 1.0, when=When(branch="cond", steps=0))
    with attach(pix2pix, {site: [hook, steered]}):
        _edit(pix2pix)
    assert not torch.equal(steered.get(site, 0, "cond"), base.get(site, 0, "cond"))
    for b in ("image_cond", "uncond"):
        assert torch.equal(steered.get(site, 0, b), base.get(site, 0, b))


@pytest.mark.parametrize(("guidance", "order"), [(3.0, ("uncond", "cond", "perturbed")), (1.0, ("cond", "perturbed"))])
def test_pag_pipeline_labels_the_perturbed_block(sd, guidance, order):
    from diffusers import StableDiffusionPAGPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pag = tiny_models._finish(StableDiffusionPAGPipeline(**sd.components, pag_applied_layers=["mid"]))
    text = "unet:input.encoder_hidden_states"
    cache = Cache()
    with attach(pag, {text: cache, "unet:output.0": cache}):
        pag(prompt=["a"], negative_prompt=["b"], num_inference_steps=2, guidance_scale=guidance, pag_scale=2.0,
            generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    assert _seen(cache, "unet:output.0") == {(s, b) for s in range(2) for b in order}
    e = {b: cache.get(text, 0, b) for b in order}
    assert torch.equal(e["cond"], e["perturbed"])  # same prompt, perturbed attention
    assert not torch.equal(cache.get("unet:output.0", 0, "cond"), cache.get("unet:output.0", 0, "perturbed"))
    if "uncond" in e:
        assert not torch.equal(e["uncond"], e["cond"])


def test_a_batch_the_layout_cannot_split_stays_unlabelled_with_a_warning(sd):
    """A pipeline batching a layout we do not know: hooks that ignore branches keep working."""
    adapter = DiffusersPipelineAdapter(sd)
    sd._guidance_scale = 3.0  # what the pipeline's __call__ sets: do_classifier_free_guidance
    assert adapter.calls.segments(sd.unet, {}, 4) == (("uncond", slice(0, 2)), ("cond", slice(2, 4)))
    with pytest.warns(UserWarning, match=r"StableDiffusionPipeline: a denoiser batch of 3 rows .*When\(branch"):
        assert adapter.calls.segments(sd.unet, {}, 3) == ALL_ROWS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adapter.calls.segments(sd.unet, {}, 3) == ALL_ROWS  # warned once per session


# -- 4. branch names -----------------------------------------------------------------------------


def test_a_misspelt_branch_raises_and_names_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"When\(branch=...\) got branch 'cnd' \(did you mean 'cond'\?\).*'all', 'cond'"
    ):
        When(branch="cnd")
    with pytest.raises(ValueError, match="Valid branches"):
        When(steps=0, branch="conditional")
    for name in ("all", *BRANCHES):
        assert When(branch=name).branch == name


def test_branch_labels_use_the_same_names():
    from interventions import attach

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"attach\(cfg=...\) got branch 'neg'.*Valid branches: 'cond'"):
        attach(model, {"0": Cache()}, cfg=("neg", "pos"))
    with attach(model, {"0": Cache()}) as session:
        with pytest.raises(ValueError, match=r"session.branch\(...\) got branch 'uncnd' \(did you mean 'uncond'"):
            with session.branch("uncnd"):
                pass
        model(torch.ones(1, 2))


def test_a_session_entered_again_tracks_a_scheduler_swapped_in_since(sd):
    """Heun evaluates twice at a timestep: only its own scheduler.step tells the two apart, so a
    session entered again must watch the scheduler the pipeline holds now, not the first one."""
    cache = Cache(on_repeat="replace")
    session = attach(sd, {"unet:output.0": cache})
    with session:
        _run(sd)
    original = _with_scheduler(sd, "HeunDiscreteScheduler")
    try:
        with session:
            _run(sd)
        evaluations = len(sd.scheduler.timesteps)
    finally:
        sd.scheduler = original
    assert evaluations == 2 * STEPS - 1
    assert _seen(cache, "unet:output.0") >= {(s, b) for s in range(evaluations) for b in ("uncond", "cond")}
    assert_no_hooks_left(sd)


def test_a_session_entered_again_after_its_denoiser_was_replaced_is_refused(sd):
    session = attach(sd, {"text_encoder": Cache()}, on_unfired="ignore")
    with session:
        pass
    original, sd.unet = sd.unet, tiny_models.sd_pipeline().unet
    try:
        with pytest.raises(InterventionError, match="denoiser 'unet' holds a different module"), session:
            pass
    finally:
        sd.unet = original
    assert_no_hooks_left(sd)
