"""``interventions.testing``'s leak assertions compare the hook objects and instance wrappers
themselves, on modules and on whole pipelines."""

import pytest
import torch

from interventions import Cache, attach
from interventions.adapters.base import wrap_attribute
from interventions.testing import assert_no_hooks_left, hook_snapshot
from tests import tiny_models


def _noop(module, args, output):
    return None


def _other_noop(module, args, output):
    return None


@pytest.fixture(scope="module")
def pipe():
    return tiny_models.sd_pipeline(seed=0)


def _run(pipe):
    pipe(
        ["a red circle"],
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )


def test_a_hook_swapped_for_another_of_the_same_kind_is_a_leak(tiny_mlp):
    kept = tiny_mlp.head.register_forward_hook(_noop)
    before = hook_snapshot(tiny_mlp)
    kept.remove()
    swapped = tiny_mlp.head.register_forward_hook(_other_noop)  # same count, another hook
    with pytest.raises(AssertionError, match=r"head: hook added _forward_hooks\[\d+\] = _other_noop, hook gone"):
        assert_no_hooks_left(tiny_mlp, before)
    swapped.remove()
    with pytest.raises(AssertionError, match=r"head: hook gone _forward_hooks\[\d+\] = _noop"):
        assert_no_hooks_left(tiny_mlp, before)
    assert_no_hooks_left(tiny_mlp)


def test_kwargs_and_always_called_entries_count_as_hooks(tiny_mlp):
    handle = tiny_mlp.layers[0].attn.register_forward_hook(_noop, with_kwargs=True, always_call=True)
    with pytest.raises(AssertionError) as err:
        assert_no_hooks_left(tiny_mlp)
    for kind in ("_forward_hooks[", "_forward_hooks_with_kwargs[", "_forward_hooks_always_called["):
        assert f"hook added {kind}{handle.id}] = " in str(err.value)
    handle.remove()
    assert_no_hooks_left(tiny_mlp)


def test_an_instance_wrapper_on_a_module_is_a_leak(tiny_mlp):
    undo = wrap_attribute(tiny_mlp.layers[1], "forward", lambda original: original)
    with pytest.raises(AssertionError, match=r"layers.1: wrapper added forward"):
        assert_no_hooks_left(tiny_mlp)
    undo()
    assert_no_hooks_left(tiny_mlp)


def test_a_fresh_pipeline_has_nothing_and_every_component_is_covered(pipe):
    snap = hook_snapshot(pipe)
    assert {"", "scheduler", "tokenizer", "unet", "unet.mid_block", "vae.decoder", "text_encoder"} <= set(snap)
    assert not any(entry.hooks or entry.wrappers for entry in snap.values())
    assert_no_hooks_left(pipe)


def test_a_wrapper_left_on_the_scheduler_or_pipeline_is_a_leak(pipe):
    before = hook_snapshot(pipe)
    undo_step = wrap_attribute(pipe.scheduler, "step", lambda original: original)
    with pytest.raises(AssertionError, match=r"scheduler: wrapper added step = "):
        assert_no_hooks_left(pipe, before)
    undo_step()
    undo_encode = wrap_attribute(pipe, "encode_prompt", lambda original: original)
    with pytest.raises(AssertionError, match=r"<root>: wrapper added encode_prompt"):
        assert_no_hooks_left(pipe)
    undo_encode()
    assert_no_hooks_left(pipe, before)


def test_a_replaced_wrapper_is_a_leak_though_the_attribute_is_still_wrapped(pipe):
    first = wrap_attribute(pipe.scheduler, "step", lambda original: original)
    before = hook_snapshot(pipe)
    first()
    second = wrap_attribute(pipe.scheduler, "step", lambda original: original)
    try:
        with pytest.raises(AssertionError, match=r"scheduler: wrapper added step.*wrapper gone step"):
            assert_no_hooks_left(pipe, before)
    finally:
        second()
    assert_no_hooks_left(pipe)


def test_a_pipeline_session_is_seen_while_attached_and_gone_after(pipe):
    session = attach(pipe, {"unet.mid_block": Cache()})
    try:
        _run(pipe)
        during = hook_snapshot(pipe)
        assert during["unet.mid_block"].hooks
        assert any(name == "step" for name, _ in during["scheduler"].wrappers)
        with pytest.raises(AssertionError, match="unet.mid_block: hook added"):
            assert_no_hooks_left(pipe)
    finally:
        session.remove()
    assert_no_hooks_left(pipe)
