"""Sessions on plain modules: removal, identities, composition, errors (property-tested)."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from interventions import (
    Ablate,
    AddVector,
    Cache,
    CompiledModelError,
    Grads,
    HookError,
    Lambda,
    Patch,
    SAEEdit,
    ShapeMismatchError,
    SiteNeverFiredError,
    SiteNeverFiredWarning,
    When,
    attach,
)
from interventions.testing import (
    activations,
    assert_identity,
    assert_no_hooks_left,
    hook_snapshot,
    hook_stacks,
    module_paths,
    module_trees,
)

WIDTH = 8
fast = settings(max_examples=40, deadline=None)


def _all_sites(model):
    return module_paths(model)


@fast
@given(module_trees(width=WIDTH), hook_stacks(WIDTH), st.data())
def test_exit_removes_every_hook_and_restores_output(model, hooks, data):
    x = data.draw(activations((3, WIDTH)))
    before = hook_snapshot(model)
    with torch.no_grad():
        expected = model(x)
        site = data.draw(st.sampled_from(_all_sites(model)))
        with attach(model, {site: hooks}, on_unfired="ignore"):
            model(x)
        assert_no_hooks_left(model, before)
        assert torch.equal(model(x), expected)


@fast
@given(module_trees(width=WIDTH), st.data())
def test_removal_on_exception_in_body_and_in_hook(model, data):
    x = data.draw(activations((2, WIDTH)))
    site = data.draw(st.sampled_from(_all_sites(model)))
    expected = model(x)

    with pytest.raises(RuntimeError, match="boom"):
        with attach(model, {site: Cache()}):
            raise RuntimeError("boom")
    assert_no_hooks_left(model)

    def explode(x, ctx):
        raise ValueError("hook failed")

    with pytest.raises(HookError, match=f"Lambda at site '{site}'.*ValueError: hook failed"):
        with attach(model, {site: Lambda(explode)}):
            model(x)
    assert_no_hooks_left(model)
    assert torch.equal(model(x), expected)


def test_keyboard_interrupt_removes_hooks(tiny_mlp):
    def interrupt(x, ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with attach(tiny_mlp, {"layers.0": Lambda(interrupt), "head": Cache()}):
            tiny_mlp(torch.ones(1, 4))
    assert_no_hooks_left(tiny_mlp)


def test_remove_is_idempotent_and_handle_works(tiny_mlp):
    session = attach(tiny_mlp, {"layers.*": Cache()})
    tiny_mlp(torch.ones(1, 4))
    session.remove()
    session.remove()
    assert_no_hooks_left(tiny_mlp)


@fast
@given(module_trees(width=WIDTH), st.data())
def test_patch_from_same_run_cache_is_identity(model, data):
    x = data.draw(activations((2, WIDTH)))
    sites = _all_sites(model)
    cache = Cache()
    with torch.no_grad(), attach(model, {s: cache for s in sites}):
        model(x)
    assert_identity(model, {s: Patch(cache) for s in sites}, x)


@fast
@given(module_trees(width=WIDTH), activations((WIDTH,)), st.data())
def test_add_zero_is_identity_and_add_then_subtract_rounds_back(model, v, data):
    x = data.draw(activations((2, WIDTH)))
    site = data.draw(st.sampled_from(_all_sites(model)))
    assert_identity(model, {site: AddVector(v, scale=0.0)}, x)
    with torch.no_grad():
        expected = model(x)
        with attach(model, {site: [AddVector(v), AddVector(-v)]}):
            got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@fast
@given(activations((3, 5, WIDTH)), activations((WIDTH,)), st.floats(-3, 3, width=32))
def test_norm_restore_keeps_every_token_norm(x, v, scale):
    model = nn.Identity()
    with attach(model, {"": AddVector(v, scale=scale, restore_norm=True)}):
        y = model(x)
    nonzero = x.norm(dim=-1) > 1e-3
    torch.testing.assert_close(y.norm(dim=-1)[nonzero], x.norm(dim=-1)[nonzero], atol=1e-4, rtol=1e-4)


def test_add_vector_sees_every_change_to_its_parameters_between_calls():
    # the prepared vector is memoised: changing a field, swapping the vector or editing it in
    # place must each show up in the very next call
    model, x = nn.Identity(), torch.zeros(2, 4)
    hook = AddVector(torch.ones(4))
    with attach(model, {"": hook}):
        assert torch.equal(model(x), torch.ones(2, 4))
        hook.scale = 2.0
        assert torch.equal(model(x), torch.full((2, 4), 2.0))
        hook.vector = torch.arange(4.0)
        assert torch.equal(model(x), 2 * torch.arange(4.0).expand(2, 4))
        hook.vector.mul_(-1)
        assert torch.equal(model(x), -2 * torch.arange(4.0).expand(2, 4))
        hook.unit = True
        torch.testing.assert_close(model(x).norm(dim=-1), torch.full((2,), 2.0))
        hook.tokens = [1]
        y = model(torch.zeros(1, 3, 4))  # batch, tokens, features
        assert y[0, [0, 2]].abs().sum() == 0 and abs(float(y[0, 1].norm()) - 2.0) < 1e-5


class LinearAE(nn.Module):
    def __init__(self, d, k, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(d, k)
        self.dec = nn.Linear(k, d)

    def encode(self, x):
        return torch.relu(self.enc(x))

    def decode(self, z):
        return self.dec(z)


@fast
@given(module_trees(width=WIDTH), st.integers(1, 32), st.integers(0, 1000), st.data())
def test_sae_edit_without_edit_is_identity(model, k, seed, data):
    x = data.draw(activations((2, WIDTH)))
    site = data.draw(st.sampled_from(_all_sites(model)))
    sae = LinearAE(WIDTH, k, seed)
    assert_identity(model, {site: SAEEdit(sae)}, x)
    assert_identity(model, {site: SAEEdit(sae, edit=lambda z, ctx: z)}, x)


def test_sae_edit_changes_output_when_features_are_edited(tiny_mlp):
    sae = LinearAE(8, 16, 0)
    x = torch.randn(2, 4)
    with torch.no_grad():
        base = tiny_mlp(x)
        with attach(tiny_mlp, {"layers.0": SAEEdit(sae, edit=lambda z, ctx: z * 0)}):
            edited = tiny_mlp(x)
    assert (edited - base).abs().max() > 1e-3


@fast
@given(module_trees(width=WIDTH), st.data())
def test_grads_equal_autograd(model, data):
    x = data.draw(activations((2, WIDTH)))
    site = data.draw(st.sampled_from(_all_sites(model)))
    grads = Grads()
    cache = Cache(clone=False)
    with attach(model, {site: [grads]}):
        loss = model(x).square().sum()
        loss.backward()
    # reference: the same quantity by torch.autograd.grad on a retained activation
    holder = {}

    def keep(mod, inp, out):
        holder["a"] = out

    handle = dict(model.named_modules())[site].register_forward_hook(keep)
    loss = model(x).square().sum()
    handle.remove()
    (ref,) = torch.autograd.grad(loss, holder["a"], allow_unused=True) if holder["a"].requires_grad else (None,)
    if ref is not None:
        torch.testing.assert_close(grads[site], ref)
    del cache


def test_grads_on_an_input_site(tiny_mlp):
    x = torch.randn(2, 4)
    grads = Grads()
    with attach(tiny_mlp, {"embed:input": grads}):
        tiny_mlp(x).sum().backward()
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(tiny_mlp(xr).sum(), xr)
    torch.testing.assert_close(grads["embed:input.0"], ref)


def test_grads_under_no_grad_is_a_clear_error(tiny_mlp):
    with pytest.raises(Exception, match="gradients are disabled"):
        with torch.no_grad(), attach(tiny_mlp, {"layers.0": Grads()}):
            tiny_mlp(torch.ones(1, 4))
    assert_no_hooks_left(tiny_mlp)


def test_hooks_on_one_site_compose_in_order(tiny_mlp):
    seen = []
    hooks = [Lambda(lambda x, c: seen.append("a") or x + 1), Lambda(lambda x, c: seen.append("b") or x * 2)]
    x = torch.randn(1, 4)
    with torch.no_grad():
        ref = tiny_mlp.embed(x)
        with (
            attach(tiny_mlp, {"embed": hooks}),
            attach(tiny_mlp.embed, {"": Lambda(lambda y, c: seen.append("c") or None)}),
        ):
            cache = Cache()
            with attach(tiny_mlp, {"embed": cache}):
                tiny_mlp(x)
    assert seen == ["a", "b", "c"]
    torch.testing.assert_close(cache["embed"], (ref + 1) * 2)


def test_input_sites_positional_and_keyword(tiny_mlp):
    attn = tiny_mlp.layers[0].attn
    x = torch.randn(2, 8)
    with attach(attn, {":input.scale": Lambda(lambda s, c: s * 0)}, on_unfired="ignore"):
        pass  # scale is a float default: never a tensor here; the site is validated lazily
    with attach(attn, {":input.0": Patch(torch.zeros(2, 8))}):
        out, passthrough = attn(x)
    assert torch.equal(passthrough, torch.zeros(2, 8))
    with attach(attn, {":input.x": Patch(torch.zeros(2, 8))}):
        out_kw, passthrough_kw = attn(x=x)
    assert torch.equal(passthrough_kw, torch.zeros(2, 8))


def test_output_tuple_element_and_object_field():
    from transformers.modeling_outputs import BaseModelOutput

    class M(nn.Module):
        def forward(self, x):
            return BaseModelOutput(last_hidden_state=x * 2)

    m = M()
    with attach(m, {":output.last_hidden_state": AddVector(torch.ones(3))}):
        out = m(torch.zeros(1, 3))
    assert torch.equal(out.last_hidden_state, torch.ones(1, 3))
    with attach(m, {":output.0": AddVector(torch.ones(3))}):
        out = m(torch.zeros(1, 3))
    assert torch.equal(out[0], torch.ones(1, 3))


def test_shape_mismatch_names_site_and_both_shapes(tiny_mlp):
    with pytest.raises(ShapeMismatchError, match=r"AddVector at site 'layers.0'.*\(5,\).*\(2, 8\)"):
        with attach(tiny_mlp, {"layers.0": AddVector(torch.ones(5))}):
            tiny_mlp(torch.ones(2, 4))
    with pytest.raises(ShapeMismatchError, match=r"Patch at site 'layers.1'.*\(3, 8\).*\(2, 8\)"):
        with attach(tiny_mlp, {"layers.1": Patch(torch.ones(3, 8))}):
            tiny_mlp(torch.ones(2, 4))
    assert_no_hooks_left(tiny_mlp)


def test_dtype_and_device_mismatch_are_named(tiny_mlp):
    with pytest.raises(ShapeMismatchError, match=r"site 'layers.0'.*dtype torch.float64.*torch.float32"):
        with attach(tiny_mlp, {"layers.0": AddVector(torch.ones(8, dtype=torch.float64))}):
            tiny_mlp(torch.ones(2, 4))
    with pytest.raises(ShapeMismatchError, match=r"site 'layers.0'.*on meta.*on cpu"):
        with attach(tiny_mlp, {"layers.0": Patch(torch.ones(2, 8, device="meta"))}):
            tiny_mlp(torch.ones(2, 4))


def test_hook_returning_wrong_shape_is_named(tiny_mlp):
    with pytest.raises(ShapeMismatchError, match=r"Lambda at site 'head' returned \(2, 2\)"):
        with attach(tiny_mlp, {"head": Lambda(lambda x, c: x[:, :2])}):
            tiny_mlp(torch.ones(2, 4))


def test_site_that_never_fires_is_reported(tiny_mlp):
    tiny_mlp.unused = nn.Linear(2, 2)
    with pytest.warns(SiteNeverFiredWarning, match="never fired.*'unused'"):
        with attach(tiny_mlp, {"unused": Cache(), "head": Cache()}):
            tiny_mlp(torch.ones(1, 4))
    with pytest.raises(SiteNeverFiredError, match="'unused'"):
        with attach(tiny_mlp, {"unused": Cache()}, on_unfired="error"):
            tiny_mlp(torch.ones(1, 4))
    assert_no_hooks_left(tiny_mlp)


def test_compiled_model_is_refused_not_silently_ignored(tiny_mlp):
    compiled = torch.compile(tiny_mlp, backend="eager")
    with pytest.raises(CompiledModelError, match="already compiled with torch.compile"):
        attach(compiled, {"_orig_mod.head": Cache()})
    tiny_mlp.layers[0].compile(backend="eager")
    with pytest.raises(CompiledModelError, match=r"under \['layers.0'\]"):
        attach(tiny_mlp, {"head": Cache(), "layers.0.attn": Cache()})
    assert_no_hooks_left(tiny_mlp)
    cache = Cache()  # a site outside the compiled submodule is fine
    with attach(tiny_mlp, {"head": cache}):
        tiny_mlp(torch.ones(1, 4))
    assert cache["head"].shape == (1, 3)


def test_sessions_nest_and_inner_exit_keeps_outer(tiny_mlp):
    outer, inner = Cache(), Cache()
    with attach(tiny_mlp, {"head": outer}):
        with attach(tiny_mlp, {"head": inner}):
            tiny_mlp(torch.ones(1, 4))
        tiny_mlp(torch.ones(1, 4))
    assert len(outer) == 2 and len(inner) == 1
    assert_no_hooks_left(tiny_mlp)


def test_calls_are_counted_and_when_calls_selects(tiny_mlp):
    cache = Cache(when=When(calls=[1, 2]))
    with attach(tiny_mlp, {"head": cache}):
        for _ in range(4):
            tiny_mlp(torch.ones(1, 4))
    assert sorted(k[1] for k in cache.keys()) == [1, 2]


@fast
@given(activations((4, WIDTH)), activations((WIDTH,)))
def test_branch_hook_same_batched_and_sequential(x, v):
    """A cond-only hook touches only cond rows, and batching the branches changes nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))
    hook = {"1": AddVector(v, when=When(branch="cond"))}
    with torch.no_grad():
        base = model(x)
        with attach(model, hook, cfg=("uncond", "cond")):
            batched = model(x)
        with attach(model, hook) as s:
            with s.branch("uncond"):
                seq_u = model(x[:2])
            with s.branch("cond"):
                seq_c = model(x[2:])
    assert torch.equal(batched[:2], base[:2])
    assert torch.equal(batched, torch.cat([seq_u, seq_c]))


def test_layout_override_for_feature_axis():
    conv = nn.Conv1d(3, 3, 1)
    with attach(conv, {"": AddVector(torch.tensor([1.0, 0.0, 0.0]))}, layouts={"": "BCT"}):
        with torch.no_grad():
            y = conv(torch.zeros(1, 3, 5))
    with torch.no_grad():
        ref = conv(torch.zeros(1, 3, 5))
    assert torch.allclose(y[:, 0] - ref[:, 0], torch.ones(1, 5))
    assert torch.equal(y[:, 1:], ref[:, 1:])


def test_ablate_modes(tiny_mlp):
    x = torch.randn(3, 4)
    v = torch.randn(8)
    c = Cache()
    with torch.no_grad(), attach(tiny_mlp, {"layers.0": [Ablate("project_positive", direction=v), c]}):
        tiny_mlp(x)
    unit = v / v.norm()
    assert (c["layers.0"] @ unit).max() <= 1e-5  # no positive component left
    with torch.no_grad(), attach(tiny_mlp, {"layers.0": [Ablate("zero", tokens=[0]), Cache()]}) as s:
        tiny_mlp(x)
    got = s.entries[0].hooks[1][0]["layers.0"]
    assert torch.equal(got, torch.zeros_like(got))
    with torch.no_grad(), attach(tiny_mlp, {"layers.0": [Ablate("mean"), c2 := Cache()]}):
        tiny_mlp(x)
    assert torch.allclose(c2["layers.0"], c2["layers.0"].mean(0, keepdim=True).expand(3, 8))


def test_patch_masks_and_interpolation():
    model = nn.Identity()
    x = torch.zeros(2, 4, 3)
    src = torch.ones(2, 4, 3)
    with attach(model, {"": Patch(src, tokens=[1, 3])}):
        y = model(x)
    assert y[:, [1, 3]].eq(1).all() and y[:, [0, 2]].eq(0).all()
    with attach(model, {"": Patch(src, channels=[2])}):
        y = model(x)
    assert y[..., 2].eq(1).all() and y[..., :2].eq(0).all()
    with attach(model, {"": Patch(src, alpha=0.25)}):
        y = model(x)
    assert torch.allclose(y, torch.full_like(x, 0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attach(model, {"": Patch(lambda a, c: a + 5)}):
            assert model(x).eq(5).all()


def test_cache_without_detach_keeps_the_graph_for_a_loss_computed_afterwards():
    # a classifier head on a denoiser's features trains the encoder through what the cache holds
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    kept, detached = Cache(detach=False), Cache()
    with attach(model, {"1": [kept, detached]}):
        model(x)
    feature = kept.get("1", step=0)
    assert feature.requires_grad and not detached.get("1", step=0).requires_grad
    (grad_w,) = torch.autograd.grad(feature.square().sum(), model[0].weight)
    h = model[0](x)
    (expected,) = torch.autograd.grad(torch.tanh(h).square().sum(), model[0].weight)
    assert torch.allclose(grad_w, expected)
    assert torch.equal(feature, detached.get("1", step=0))


def test_cache_without_detach_refuses_a_disk_store(tmp_path):
    # a DiskStore writes plain tensors: the graph the user asked to keep would be dropped without a word
    from interventions import DiskStore

    with pytest.raises(ValueError, match="MemoryStore"):
        Cache(store=DiskStore(tmp_path / "acts"), detach=False)
