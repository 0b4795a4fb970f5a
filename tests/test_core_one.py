"""Core 1.0: the engine's quiet failures, each pinned by a test that failed before the fix.

Every pipeline component run in the denoising loop is stepped; other components are keyed by
their own calls; a module run twice per forward is addressed by its invocation; selectors that
cannot apply are refused; re-entered sessions re-attach; compiled code is named; plain functions
are hooks.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from interventions import (
    Ablate,
    AddVector,
    Cache,
    Grads,
    InterventionError,
    Lambda,
    Patch,
    SiteNeverFiredWarning,
    When,
    attach,
)
from interventions.errors import HookError, SelectorError, ShapeMismatchError
from interventions.sites import SiteError, SiteNotFoundError

from .tiny_models import controlnet_pipeline, gpt2_lm, run_wan22, sd_pipeline, wan22_pipeline


def _sd_call(pipe, prompt="a red circle", **kw):
    args = dict(num_inference_steps=3, guidance_scale=3.0, output_type="pt", generator=torch.Generator().manual_seed(0))
    return pipe([prompt], **(args | kw)).images


# -- 1. every denoiser of a pipeline is stepped ----------------------------------------------------
def test_controlnet_is_stepped_with_its_cfg_rows_and_selectors_fire_there():
    pipe = controlnet_pipeline()
    control = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cache, seen = Cache(), []
    probe = Lambda(lambda x, ctx: seen.append((ctx.step, ctx.branch, x.shape[0])), when=When(steps=[1], branch="cond"))
    with attach(pipe, {"controlnet.mid_block": [cache, probe], "unet.mid_block": cache}):
        _sd_call(pipe, image=control)
    keys = {k for k in cache.keys() if k[0] == "controlnet.mid_block"}
    assert keys == {("controlnet.mid_block", s, b) for s in range(3) for b in ("uncond", "cond")}
    assert seen == [(1, "cond", 1)]  # one cond row of the batched [uncond, cond] call
    # one step per scheduler step, read from the ControlNet's own timestep (each branch's rows once)
    with attach(pipe, {"controlnet.conv_in": Lambda(lambda x, ctx: seen.append(("cn", ctx.step, ctx.timestep)))}):
        _sd_call(pipe, image=control)
    assert [s[1] for s in seen[1:]] == [0, 0, 1, 1, 2, 2] and seen[1][2] > seen[3][2] > seen[5][2]


def test_wan22_second_transformer_is_stepped_and_both_branches_kept():
    pipe = wan22_pipeline()
    cache = Cache()
    sites = {"transformer.blocks.0": cache, "transformer_2.blocks.0": cache}
    with attach(pipe, sites):
        run_wan22(pipe)
    steps = {site: sorted({(k[1], k[2]) for k in cache.keys() if k[0] == site}) for site in sites}
    assert steps["transformer.blocks.0"] == [(s, b) for s in range(3) for b in ("cond", "uncond")]
    assert steps["transformer_2.blocks.0"] == [(3, "cond"), (3, "uncond")]  # below the boundary
    cond, uncond = cache.get("transformer_2.blocks.0", 3, "cond"), cache.get("transformer_2.blocks.0", 3, "uncond")
    assert not torch.equal(cond, uncond)


# -- 2. other components: one key per call, counted per pipeline call ------------------------------
def test_text_encoder_calls_and_vae_decode_have_their_own_keys():
    pipe = sd_pipeline()
    site = "text_encoder.encoder.layers.0"
    cache = Cache(on_repeat="append")
    with attach(pipe, {site: cache, "vae.decoder.mid_block": cache}):
        _sd_call(pipe, negative_prompt=["blue"])
        _sd_call(pipe, negative_prompt=["blue"])  # a second pipeline call appends under the same keys
    assert sorted(k for k in cache.keys() if k[0] == site) == [(site, 0, None), (site, 1, None)]
    prompt, negative = cache.get(site, 0), cache.get(site, 1)
    assert prompt.shape[0] == 2 and not torch.equal(prompt[:1], negative[:1])
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length)
    direct = Cache()
    with torch.no_grad(), attach(pipe.text_encoder, {"encoder.layers.0": direct}):
        pipe.text_encoder(torch.tensor(ids.input_ids))
    assert torch.equal(prompt[:1], direct["encoder.layers.0"])  # call 0 is the prompt
    assert cache.get("vae.decoder.mid_block").shape[0] == 2  # one decode per pipeline call


# -- 3. a module run more than once in one forward ---------------------------------------------------
class Shared(nn.Module):
    """One activation module used twice (as ALBERT shares a layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(self.act(self.a(x))))


def test_invocations_are_keyed_patched_and_differentiated_apart():
    torch.manual_seed(0)
    model, clean_x, corrupt_x = Shared(), torch.randn(2, 4), torch.randn(2, 4)
    cache = Cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second use no longer "replaces" the first
        with torch.no_grad(), attach(model, {"act": cache}):
            clean = model(clean_x)
    assert sorted(cache.keys()) == [("act", 0, None), ("act", 0, None, 1)]
    assert torch.equal(cache.get("act", invocation=1), clean)
    with torch.no_grad(), attach(model, {"act": Patch(cache)}):
        assert torch.equal(model(corrupt_x), clean)  # both invocations restored
    with torch.no_grad(), attach(model, {"act": Patch(cache, when=When(invocations=0))}):
        only_first = model(corrupt_x)
    assert torch.equal(only_first, torch.tanh(model.b(cache.get("act"))))
    grads = Grads()
    x = clean_x.clone()
    with attach(model, {"act": grads}):
        model(x).square().sum().backward()
    h1 = torch.tanh(model.a(x))
    h1.retain_grad()
    h2 = torch.tanh(model.b(h1))
    g1, g2 = torch.autograd.grad(h2.square().sum(), [h1, h2])
    assert torch.allclose(grads.get("act"), g1) and torch.allclose(grads.get("act", invocation=1), g2)


# -- 4. selectors that cannot apply --------------------------------------------------------------
def test_step_selector_on_a_language_model_is_refused_at_attach():
    model, _ = gpt2_lm()
    with pytest.raises(SelectorError, match="no denoising steps.*When\\(calls="):
        attach(model, {"transformer.h.0": AddVector(torch.ones(64), when=When(steps=0))})
    with pytest.raises(SelectorError):
        attach(model, {"transformer.h.0": AddVector(torch.ones(64), when=When(t=(0, 500)))})


def test_branch_selector_on_unlabelled_rows_is_refused_when_it_meets_them():
    unet = sd_pipeline().unet
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32)
    hook = AddVector(torch.ones(16), when=When(branch="cond"))
    with pytest.raises(SelectorError, match="cfg=\\('uncond', 'cond'\\)"), attach(unet, {"mid_block": hook}):
        unet(x, torch.tensor(10), encoder_hidden_states=emb)
    with attach(unet, {"mid_block": [hook, Cache()]}, cfg=("uncond", "cond")) as s:  # the fix it names
        unet(x, torch.tensor(10), encoder_hidden_states=emb)
    assert s.entries[0].applied == [True, True]


def test_a_when_that_never_matches_is_reported():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.warns(SiteNeverFiredWarning, match="never applied"), attach(model, {"0": Cache(when=When(calls=5))}):
        model(torch.ones(1, 2))


# -- 5. a session entered again re-attaches -----------------------------------------------------
def test_reentered_session_attaches_again():
    model = nn.Sequential(nn.Linear(2, 2))
    cache = Cache(on_repeat="append")
    session = attach(model, {"0": cache})
    with session:
        model(torch.ones(1, 2))
    with session:
        model(torch.ones(1, 2))
        assert session.fired == {"0": 1}
    assert cache.get("0", 0).shape[0] == 2 and not model[0]._forward_hooks


def test_reentering_a_session_whose_module_was_replaced_is_refused():
    # a LoRA-style wrapper calls the old module inside: hooks kept on it would still fire, on the
    # output without the wrapper's change
    model = nn.Sequential(nn.Linear(2, 2))
    session = attach(model, {"0": Cache(on_repeat="append")})
    with session:
        model(torch.ones(1, 2))

    class Wrapped(nn.Module):
        def __init__(self, base: nn.Module) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + 1

    model[0] = Wrapped(model[0])
    with pytest.raises(InterventionError, match="different module.*attach\\(model, hooks\\)"), session:
        pass
    assert not model[0]._forward_hooks and not model[0].base._forward_hooks


def test_a_wrong_result_on_a_later_fire_names_the_site():
    # the first fire takes the general path, later ones the fused one-hook path: both check
    model = nn.Sequential(nn.Linear(2, 2))
    calls = []

    def shrinks_later(x: torch.Tensor, ctx: object) -> torch.Tensor:
        calls.append(1)
        return x if len(calls) == 1 else x[:, :1]

    def fails_later(x: torch.Tensor, ctx: object) -> None:
        if len(calls) > 2:
            raise RuntimeError("boom")
        calls.append(1)

    with (
        pytest.raises(ShapeMismatchError, match="site '0'.*\\(1, 1\\).*\\(1, 2\\)"),
        attach(model, {"0": shrinks_later}),
    ):
        model(torch.ones(1, 2))
        model(torch.ones(1, 2))
    calls.clear()
    with pytest.raises(HookError, match="fails_later at site '0'.*boom"), attach(model, {"0": fails_later}):
        for _ in range(4):
            model(torch.ones(1, 2))
    assert not model[0]._forward_hooks


# -- 6. torch.compile ------------------------------------------------------------------------------
def test_unfired_sites_under_compiled_code_name_compilation():
    import torch._dynamo

    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    run = torch.compile(lambda x: model(x), backend="eager")
    run(torch.ones(1, 2))  # compiled before the hooks exist
    try:
        with pytest.warns(SiteNeverFiredWarning, match="torch.compile"), attach(model, {"0": Cache()}):
            run(torch.ones(1, 2))
    finally:
        torch._dynamo.reset()


# -- 7. small things that failed quietly or loudly for the wrong reason ----------------------------
def test_plain_functions_are_hooks_and_bad_site_keys_are_intervention_errors():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad(), attach(model, {"1": lambda x, ctx: torch.zeros_like(x)}):
        out = model(torch.ones(1, 2))
    assert torch.equal(out, model[2].bias[None])
    with pytest.raises(SiteError, match="a site is a string"):
        attach(model, {0: Cache()})  # type: ignore[dict-item]
    with pytest.raises(SiteNotFoundError, match="'0', '1', '2'") as info:
        attach(model, {"3": Cache()})
    assert isinstance(info.value, InterventionError)


@pytest.mark.parametrize("spec", [slice(-2, None), slice(0, -1), slice(0, 4, 0), range(-1, 3), -1, [0, -1]], ids=repr)
def test_selectors_refuse_indices_without_a_fixed_meaning(spec):
    with pytest.raises(ValueError, match="from 0|positive step"):
        When(calls=spec)


def test_call_index_restarts_with_each_generate():
    model, _ = gpt2_lm()
    seen = []
    probe = Lambda(lambda x, ctx: seen.append(ctx.call), when=When(calls=0))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), attach(model, {"transformer.h.0": probe}):
        for _ in range(2):
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert seen == [0, 0]  # the first forward of each generation


def test_a_second_thread_is_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    errors: list[BaseException] = []
    with attach(model, {"0": Cache()}, on_unfired="ignore"):
        model(torch.ones(1, 2))

        def other() -> None:
            try:
                model(torch.ones(1, 2))
            except BaseException as exc:  # noqa: BLE001 - the test reads it
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])


# -- 8. projections named for what they do --------------------------------------------------------
def test_project_out_and_project_positive():
    v = torch.tensor([0.6, 0.8])
    h = torch.tensor([[3.0, 4.0], [-3.0, -4.0], [4.0, -3.0]])
    model = nn.Sequential(nn.Identity())
    outs = {}
    for mode in ("project_out", "project_positive"):
        with torch.no_grad(), attach(model, {"0": Ablate(mode, direction=v)}):
            outs[mode] = model(h)
    assert torch.allclose(outs["project_out"] @ v, torch.zeros(3), atol=1e-6)
    assert torch.allclose(outs["project_positive"] @ v, torch.tensor([0.0, -5.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="project_out.*project_positive"):
        Ablate("project", direction=v)


def test_denoiser_run_by_hand_before_any_pipeline_call_is_unlabelled_not_an_error():
    """The pipeline's CFG flag exists only once its __call__ ran; before, the rows carry no branch."""
    pipe = sd_pipeline()
    cache = Cache()
    with torch.no_grad(), attach(pipe, {"unet.mid_block": cache}):
        pipe.unet(torch.randn(2, 4, 8, 8), torch.tensor(10), encoder_hidden_states=torch.randn(2, 7, 32))
    assert list(cache.keys()) == [("unet.mid_block", 0, None)]


def test_class_labels_name_branches_only_where_the_model_has_a_null_class():
    # DiT's label embedding reserves class 1000 for "no class": its rows are cond / uncond. A
    # UNet2DModel with class embeddings has no such class, so a guessed null class would label
    # every row "cond" and a When(branch="uncond") would quietly never apply.
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, num_class_embeds=3,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
    )  # fmt: skip
    x, t, labels = torch.randn(4, 3, 8, 8), torch.tensor(10), torch.tensor([0, 1, 2, 2])
    plain = Cache()
    with attach(unet, {"mid_block": plain}):
        unet(x, t, class_labels=labels)
    assert list(plain.keys()) == [("mid_block", 0, None)]  # a step, no branch
    with pytest.raises(SelectorError, match="cfg="), attach(unet, {"mid_block": Cache(when=When(branch="uncond"))}):
        unet(x, t, class_labels=labels)
    cache = Cache()
    with attach(unet, {"mid_block": cache}, cfg=("uncond", "cond")):  # the layout, declared
        unet(x, t, class_labels=labels)
    assert sorted(cache.keys()) == [("mid_block", 0, "cond"), ("mid_block", 0, "uncond")]
    assert torch.equal(cache.get("mid_block", 0, "uncond"), plain.get("mid_block", 0)[:2])


def test_a_pipeline_component_set_between_sessions_is_the_one_hooked_and_tracked():
    # the pipeline adapter remembers which components are modules, schedulers and denoisers; a
    # component set since (a new UNet, another scheduler class) must be what the next session uses
    import copy

    from diffusers import EulerDiscreteScheduler

    pipe = sd_pipeline()
    attach(pipe, {"unet.mid_block": Cache()}, on_unfired="ignore").remove()
    old_unet = pipe.unet
    pipe.unet = copy.deepcopy(old_unet)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    cache = Cache()
    with attach(pipe, {"unet.mid_block": cache}) as session:
        assert session.entries[0].module is pipe.unet.mid_block
        assert "step" in vars(pipe.scheduler)  # its steps are the ones counted
        pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np")
    assert [k[1] for k in cache.keys()] == [0, 0, 1, 1] and not old_unet.mid_block._forward_hooks
