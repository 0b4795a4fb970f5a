"""Edge cases of the session core: gradients under batched CFG, memoised vectors and autograd,
branch-aware SAE edits, input indices, hook results of the wrong dtype/device, layout overrides."""

import pytest
import torch
from torch import nn

from interventions import (
    AddVector,
    Cache,
    Grads,
    InterventionError,
    Lambda,
    Patch,
    SAEEdit,
    ShapeMismatchError,
    SiteError,
    When,
    attach,
)
from interventions.testing import assert_no_hooks_left
from tests import tiny_models

CFG = ("uncond", "cond")
T = torch.tensor(5.0)


class Den(nn.Module):
    """A bare denoiser: ``forward(x, t)``, batch rows [uncond, cond] under ``cfg=CFG``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class LinearAE(nn.Module):
    def __init__(self, d: int = 4, k: int = 8) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.enc = nn.Linear(d, k)
        self.dec = nn.Linear(k, d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.enc(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


# -- 1. Grads under batched CFG ----------------------------------------------------------------
def _grad_at(model: Den, site: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d(sum(w * model(x)))/d(site tensor) by torch.autograd.grad on a retained tensor."""
    held = {}
    module = model.get_submodule(site.split(":")[0])
    if site.endswith(":input"):
        handle = module.register_forward_pre_hook(lambda m, a: held.setdefault("t", a[0].requires_grad_(True)))
        x = x.clone()
    else:
        handle = module.register_forward_hook(lambda m, a, o: held.setdefault("t", o))
    try:
        loss = (model(x, T) * w).sum()
    finally:
        handle.remove()
    (ref,) = torch.autograd.grad(loss, held["t"])
    return ref


@pytest.mark.parametrize("site", ["a", "b:input", "a:input"])  # the last does not require grad
@pytest.mark.parametrize("before", [False, True])  # alone, or after a cond-only edit on the site
def test_grads_under_batched_cfg_equal_each_branch_rows(site, before):
    model, x, w = Den(), torch.randn(4, 4), torch.randn(4, 4)
    grads = Grads()
    hooks = ([AddVector(torch.zeros(4), when=When(branch="cond"))] if before else []) + [grads]
    with attach(model, {site: hooks}, cfg=CFG):
        (model(x, T) * w).sum().backward()
    ref = _grad_at(model, site, x, w)
    key = site if ":" not in site else site + ".0"
    assert sorted(k[2] for k in grads.store.keys()) == ["cond", "uncond"]
    torch.testing.assert_close(grads.get(key, 0, "uncond"), ref[:2])
    torch.testing.assert_close(grads.get(key, 0, "cond"), ref[2:])


# -- 2. AddVector's memo and autograd ----------------------------------------------------------
def test_add_vector_trains_after_a_no_grad_call():
    model, x = Den(), torch.randn(3, 4)
    v = torch.zeros(4, requires_grad=True)
    with attach(model, {"a": AddVector(v, scale=3.0)}):
        with torch.no_grad():
            model(x, T)
        model(x, T).sum().backward()
    vr = torch.zeros(4, requires_grad=True)
    with attach(model, {"a": Lambda(lambda h, c: h + 3.0 * vr)}):
        (ref,) = torch.autograd.grad(model(x, T).sum(), vr)
    assert v.grad is not None
    torch.testing.assert_close(v.grad, ref)


def test_add_vector_unit_survives_two_backward_passes():
    model, x = Den(), torch.randn(3, 4)
    v = torch.randn(4, requires_grad=True)
    with attach(model, {"a": AddVector(v, unit=True)}):
        for _ in range(2):
            model(x, T).sum().backward()
    vr = v.detach().clone().requires_grad_(True)
    with attach(model, {"a": Lambda(lambda h, c: h + vr / vr.norm())}):
        (ref,) = torch.autograd.grad(model(x, T).sum(), vr)
    torch.testing.assert_close(v.grad, 2 * ref)


def test_add_vector_memo_kept_when_nothing_is_trained():
    # the common case stays one preparation per activation shape: frozen vectors, or no_grad
    model, x = nn.Identity(), torch.randn(2, 4)
    for v, grad in ((torch.ones(4), True), (torch.ones(4, requires_grad=True), False)):
        hook = AddVector(v, unit=True)
        with attach(model, {"": hook}), torch.set_grad_enabled(grad):
            model(x)
            first = hook._memo.value[0]
            model(x)
        assert hook._memo.value[0] is first and not first.requires_grad


def test_add_vector_sees_in_place_edits_of_mask_and_tokens():
    model, x = nn.Identity(), torch.zeros(1, 3, 2)  # batch, tokens, features
    mask = torch.tensor([[True], [False], [False]])
    hook = AddVector(torch.ones(2), mask=mask)
    with attach(model, {"": hook}):
        assert model(x)[0, :, 0].tolist() == [1, 0, 0]
        mask[1] = True
        assert model(x)[0, :, 0].tolist() == [1, 1, 0]
    tokens = torch.tensor([0])
    hook = AddVector(torch.ones(2), tokens=tokens)
    with attach(model, {"": hook}):
        assert model(x)[0, :, 0].tolist() == [1, 0, 0]
        tokens[0] = 2
        assert model(x)[0, :, 0].tolist() == [0, 0, 1]
    listed = [0]
    hook = AddVector(torch.ones(2), tokens=listed)
    with attach(model, {"": hook}):
        assert model(x)[0, :, 0].tolist() == [1, 0, 0]
        listed.append(1)
        assert model(x)[0, :, 0].tolist() == [1, 1, 0]


def test_add_vector_prepared_plain_case_sees_what_its_fields_cannot_show():
    # once prepared, a plain AddVector (no mask, tokens or norm restoring) checks only the
    # activation's shape, dtype and layout and the vector's version: a vector that starts
    # requiring grad in place, another dtype or another feature width must each be seen
    # (the last two refused as at the first call, not added with a promoted dtype or broadcast)
    model = nn.Identity()
    v = torch.ones(4)
    hook = AddVector(v, scale=0.5)  # the prepared vector is a new tensor, not v
    with attach(model, {"": hook}):
        assert torch.equal(model(torch.zeros(2, 4)), torch.full((2, 4), 0.5))
        v.requires_grad_(True)  # no new version, no attribute set
        model(torch.zeros(2, 4)).sum().backward()
        assert v.grad is not None and torch.equal(v.grad, torch.full((4,), 1.0))
        v.requires_grad_(False)
        with pytest.raises(ShapeMismatchError, match="dtype torch.float32 differs"):
            model(torch.zeros(2, 4, dtype=torch.float64))
        with pytest.raises(ShapeMismatchError, match=r"\(4,\)"):
            model(torch.zeros(2, 5))
        assert torch.equal(model(torch.zeros(3, 4)), torch.full((3, 4), 0.5))  # another batch size: prepared again


# -- 3. SAEEdit gets each branch's rows --------------------------------------------------------
def test_sae_edit_sees_the_branch_and_matches_sequential_cfg():
    model, sae, x = Den(), LinearAE(), torch.randn(4, 4)
    seen = []

    def cond_only(z, ctx):
        seen.append(ctx.branch)
        return z * 0 if ctx.branch == "cond" else z

    hook = {"a": SAEEdit(sae, edit=cond_only)}
    with torch.no_grad():
        base = model(x, T)
        with attach(model, hook, cfg=CFG):
            batched = model(x, T)
        with attach(model, hook) as s:
            with s.branch("uncond"):
                seq_u = model(x[:2], T)
            with s.branch("cond"):
                seq_c = model(x[2:], T)
    assert seen[:2] == ["uncond", "cond"]
    torch.testing.assert_close(batched[:2], base[:2])
    assert (batched[2:] - base[2:]).abs().max() > 1e-3
    torch.testing.assert_close(batched, torch.cat([seq_u, seq_c]))


def test_sae_edit_is_rowwise_only_without_an_edit():
    assert SAEEdit(LinearAE()).rowwise
    assert not SAEEdit(LinearAE(), edit=lambda z, ctx: z).rowwise


# -- 4. input indices --------------------------------------------------------------------------
class Two(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


def test_negative_input_index_is_refused_at_attach():
    model = Two()
    with pytest.raises(SiteError, match=r"':input.-1': a negative input index.*':input.1' or ':input.b'"):
        attach(model, {":input.-1": Lambda(lambda x, c: x + 1)})
    assert_no_hooks_left(model)
    with attach(model, {":input.1": Lambda(lambda x, c: x + 1), ":output.-1": Lambda(lambda x, c: x * 2)}):
        a, b = model(torch.zeros(1), torch.zeros(2))  # negative output indices stay fine
    assert a.tolist() == [0.0] and b.tolist() == [2.0, 2.0]


# -- 5. hook results of another dtype or device ------------------------------------------------
@pytest.mark.parametrize("cfg", [None, CFG])
def test_hook_result_of_another_dtype_or_device_is_named(cfg):
    model, x = Den(), torch.randn(4, 4)
    when = When(branch="cond") if cfg else None
    with pytest.raises(ShapeMismatchError, match=r"Lambda at site 'a' returned dtype torch.float64.*torch.float32"):
        with attach(model, {"a": Lambda(lambda h, c: h.double(), when=when)}, cfg=cfg):
            model(x, T)
    with pytest.raises(ShapeMismatchError, match=r"Lambda at site 'a' returned a tensor on meta.*on cpu"):
        with attach(model, {"a": Lambda(lambda h, c: h.to("meta"), when=when)}, cfg=cfg):
            model(x, T)
    assert_no_hooks_left(model)


class Half:
    """A custom row-independent hook: runs once on the whole CFG batch."""

    when = None
    rowwise = True

    def __call__(self, x: torch.Tensor, ctx: object) -> torch.Tensor:
        return x.half()


def test_rowwise_hook_result_of_another_dtype_is_named():
    model = Den()
    with pytest.raises(ShapeMismatchError, match=r"Half at site 'a' returned dtype torch.float16"):
        with attach(model, {"a": Half()}, cfg=CFG):
            model(torch.randn(4, 4), T)


# -- 6. layout overrides -----------------------------------------------------------------------
def test_unknown_layout_is_refused_at_attach():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"site '0': unknown layout 'BNX'; use one of \('BNC', 'BCHW', 'BCT', 'BC'\)"):
        attach(model, {"0": Cache()}, layouts={"0": "BNX"})
    assert_no_hooks_left(model)
    with attach(model, {"0": Cache()}, layouts={"0": None}):  # None: features on the last axis
        model(torch.ones(1, 4))


def test_a_session_without_sites_touches_nothing():
    # nothing to hook means nothing to track: no wrapper on the pipeline or its scheduler, no
    # hook on the denoiser (an empty session costs only its detection)
    from tests.tiny_models import sd_pipeline

    pipe = sd_pipeline()
    objects = (pipe, pipe.scheduler, pipe.vae)
    before = [dict(vars(o)) for o in objects]
    with attach(pipe, {}) as session:
        assert [dict(vars(o)) for o in objects] == before
        assert not pipe.unet._forward_pre_hooks and not pipe.unet._forward_hooks
    assert session.fired == {}
    assert_no_hooks_left(pipe.unet)


# -- 5. Cache(clone=False) and a model that changes the recorded tensor in place ---------------
def test_uncopied_cache_entry_changed_in_place_is_refused_not_read():
    # an inplace ReLU after the cached Linear turns the recorded output into its ReLU: without a
    # copy the cache would return the later value as the site's output
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = torch.randn(8, 4) * 10
    copied, uncopied = Cache(), Cache(clone=False)
    with attach(model, {"0": [copied, uncopied]}):
        out = model(x)
    assert float(copied["0"].min()) < 0 and torch.equal(copied["0"].clamp_min(0), out)  # the true output
    with pytest.raises(InterventionError, match=r"clone=False.*version went from 0 to 1.*Cache\(clone=True\)"):
        uncopied["0"]
    with pytest.raises(InterventionError, match="in place"):
        uncopied.get("0", step=0)
    with pytest.raises(InterventionError, match="in place"):
        with attach(model, {"0": Patch(uncopied)}):
            model(x)
    # nothing changes it in place: an uncopied entry reads as recorded, the very tensor
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    kept = Cache(clone=False)
    with attach(plain, {"0": kept}):
        plain(x)
    assert torch.equal(kept["0"], plain[0](x)) and kept.entries("0")


class InPlaceDen(Den):
    """``Den`` whose hidden state is rectified in place after ``a``."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu_(self.a(x)))


def test_uncopied_cache_of_a_batched_cfg_call_is_refused_per_branch():
    # the batched CFG call is stored whole (each branch's rows read lazily): both branches'
    # entries come from the one tensor the model then changed, and both are refused
    model, x = InPlaceDen(), torch.randn(4, 4) * 10
    uncopied, copied = Cache(clone=False), Cache()
    with attach(model, {"a": [uncopied, copied]}, cfg=CFG):
        model(x, T)
    assert float(copied.get("a", 0, "cond").min()) < 0
    for branch in CFG:
        with pytest.raises(InterventionError, match=f"'a', 0, '{branch}'.*in place"):
            uncopied.get("a", 0, branch)


# -- found by probing the session's lifecycle (session 13) ---------------------------------------
def test_a_copy_made_inside_a_session_is_refused_loudly():
    """copy.deepcopy copies a module's hooks and an object's instance wrappers: the copy would
    record into the original session, or run the original's weights through a wrapper."""
    import copy

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with attach(model, {"1": Cache()}, on_unfired="ignore"):
        clone = copy.deepcopy(model)
    with pytest.raises(InterventionError, match="copy of the module at site '1'"):
        clone(torch.randn(1, 2))
    pipe = tiny_models.sd_pipeline()
    with (
        attach(pipe, {"vae.decoder": Cache()}, on_unfired="ignore"),
        pytest.raises(InterventionError, match="cannot copy"),
    ):
        copy.deepcopy(pipe.vae)  # its decode is wrapped to count calls
    assert_no_hooks_left(pipe)
    copy.deepcopy(pipe.vae)  # outside the session: a plain copy


def test_a_denoiser_call_interrupted_by_keyboardinterrupt_does_not_nest_later_runs():
    pipe = tiny_models.sd_pipeline()
    steps, interrupt = [], [True]

    def record(x, ctx):
        steps.append(ctx.step)
        if interrupt[0] and ctx.step == 1:
            raise KeyboardInterrupt

    session = attach(pipe, {"unet.mid_block": record})
    kw = dict(num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    with pytest.raises(KeyboardInterrupt):
        pipe("a red circle", **kw)
    interrupt[0], steps[:] = False, []
    pipe("a red circle", **kw)  # torch ran no exit hook for the interrupted call: the run starts clean
    session.remove()
    assert steps == [0, 1, 2]


def test_an_inner_stop_session_lets_the_outer_sessions_stop_through():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    outer_cache, inner_cache, after = Cache(), Cache(), []
    with attach(model, {"0": outer_cache}, stop=True):
        with attach(model, {"2": inner_cache}, stop=True):
            model(torch.randn(1, 2))  # the outer session's site fires first and ends the forward
        after.append("inner block went on")  # the outer session's stop ends the outer block: never runs
    assert after == [] and len(outer_cache.keys()) == 1 and len(inner_cache.keys()) == 0


def test_a_session_entered_inside_its_own_block_is_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    with attach(model, {"0": Cache(on_repeat="replace")}) as session:
        with pytest.raises(InterventionError, match="already inside its `with` block"):
            with session:
                pass
        model(torch.randn(1, 2))
    assert session.fired == {"0": 1}  # the hooks stayed for the rest of the block
    with session:  # after its block: entered again
        model(torch.randn(1, 2))
    assert session.fired == {"0": 1}


def test_a_scheduler_replaced_during_a_session_is_refused_at_the_next_call():
    """The session wrapped the old scheduler's step and set_timesteps: the new one's steps would
    go uncounted (DDIM swapped for Heun counted 0, 1, 1, 2, 2)."""
    from diffusers import HeunDiscreteScheduler

    pipe = tiny_models.sd_pipeline()
    kw = dict(num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    with attach(pipe, {"unet.mid_block": Cache(on_repeat="replace")}):
        pipe("a red circle", **kw)
        pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
        with pytest.raises(InterventionError, match=r"pipe.scheduler was replaced \(DDIMScheduler -> Heun"):
            pipe("a red circle", **kw)
    assert_no_hooks_left(pipe)
    steps = []
    with attach(pipe, {"unet.mid_block": lambda x, ctx: steps.append(ctx.step)}):  # attached after: counted
        pipe("a red circle", **kw)
    assert steps == [0, 1, 2]  # Heun: 2 steps are 3 denoiser evaluations, each its own step index


def test_a_denoiser_run_by_hand_after_a_pipeline_call_is_unlabelled():
    """The pipeline's CFG flag still holds the last call's value after it: two rows of a later call
    made by hand are no [uncond, cond] batch, and labelling them so would be silently wrong."""
    pipe = tiny_models.sd_pipeline()
    cache = Cache()
    with torch.no_grad(), attach(pipe, {"unet.mid_block": cache}) as session:
        pipe(["a red circle"], num_inference_steps=1, guidance_scale=3.0, output_type="latent")
        assert sorted(k[2] for k in cache.keys()) == ["cond", "uncond"]
        session.new_run()
        cache.store.clear()
        pipe.unet(torch.randn(2, 4, 8, 8), torch.tensor(10), encoder_hidden_states=torch.randn(2, 7, 32))
    assert list(cache.keys()) == [("unet.mid_block", 0, None)]
