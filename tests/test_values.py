"""A field name in a site works whichever form the model returned: an output object, or the
plain tuple a pipeline gets with ``return_dict=False``; where the field's position in the tuple is
not certain the site is refused, naming the index to use."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from interventions import AddVector, Cache, InterventionError, attach
from tests import tiny_models

KW = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt")


def _images(pipe, hooks=None):
    generator = torch.Generator().manual_seed(0)
    if hooks is None:
        return pipe(["a red circle"], generator=generator, **KW).images
    with attach(pipe, hooks):
        return pipe(["a red circle"], generator=generator, **KW).images


def test_a_field_name_works_on_the_tuple_a_pipeline_gets():
    # StableDiffusionPipeline calls the UNet with return_dict=False: it returns (sample,)
    pipe = tiny_models.sd_pipeline()
    by_name, by_index = Cache(), Cache()
    _images(pipe, {"unet:output.sample": by_name, "unet:output.0": by_index})
    assert len(by_name.keys()) == 4  # 2 steps x 2 branches
    for key in by_name.keys():
        index_key = ("unet:output.0", *key[1:])
        assert torch.equal(by_name.get(*key), by_index.get(*index_key))
    assert by_name.get("unet:output.sample", 0, "cond").shape == (1, 4, 8, 8)

    # and a hook's result goes back to the same element
    plain = _images(pipe)
    shift = torch.full((4,), 0.5)
    named = _images(pipe, {"unet:output.sample": AddVector(shift)})
    indexed = _images(pipe, {"unet:output.0": AddVector(shift)})
    assert torch.equal(named, indexed)
    assert not torch.allclose(named, plain)


def test_a_field_name_works_on_both_forms_of_a_bare_unet():
    unet = tiny_models.sd_pipeline().unet
    args = (torch.zeros(1, 4, 8, 8), 10, torch.zeros(1, 77, 32))
    with torch.no_grad(), attach(unet, {":output.sample": AddVector(torch.ones(4))}):
        as_object = unet(*args).sample
        as_tuple = unet(*args, return_dict=False)[0]
    with torch.no_grad():
        reference = unet(*args).sample
    assert torch.equal(as_object, as_tuple)
    assert torch.allclose(as_object, reference + 1.0)


def test_a_field_whose_position_is_unknown_is_refused_naming_the_index():
    # transformers leaves the fields that are None out of its tuples: GPT-2's (logits, cache)
    # has 'logits' at 0 although it is the second field of its output class
    model, _ = tiny_models.gpt2_lm()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InterventionError) as err:
        with torch.no_grad(), attach(model, {":output.logits": Cache()}):
            model(ids, return_dict=False)
    message = str(err.value)
    assert "':output.logits'" in message
    assert "GPT2LMHeadModel returned a plain tuple (0: Tensor(1, 3, 158), 1: DynamicCache)" in message
    assert "4 of them were left out" in message
    fix = re.search(r"e\.g\. '([^']+)'", message).group(1)
    assert fix == ":output.0"
    cache = Cache()
    with torch.no_grad(), attach(model, {":output.0": cache}):
        logits = model(ids, return_dict=False)[0]
    assert torch.equal(cache[":output.0"], logits)


def test_a_plain_module_returning_a_tuple_has_no_fields():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, x - 1

    pair = Pair()
    with pytest.raises(InterventionError, match=r"declares no output class.*e\.g\. ':output\.0'"):
        with attach(pair, {":output.sample": Cache()}):
            pair(torch.zeros(2))


@pytest.mark.parametrize(
    ("site", "fix", "shape"),
    [
        # SD3 blocks return (context, hidden), the last one (None, hidden): the hidden state is named
        ("transformer_blocks.1", "transformer_blocks.1:output.1", (1, 16, 32)),
        ("transformer_blocks.0", "transformer_blocks.0:output.1", (1, 16, 32)),
    ],
)
def test_a_site_without_a_tensor_names_a_site_that_works(site, fix, shape):
    from tests.test_groups import sd3

    model, run = sd3()
    with pytest.raises(InterventionError) as err:
        with torch.no_grad(), attach(model, {site: Cache()}):
            run()
    assert re.search(r"e\.g\. '([^']+)'", str(err.value)).group(1) == fix
    cache = Cache()
    with torch.no_grad(), attach(model, {fix: cache}):
        run()
    assert cache[fix].shape == shape


def test_a_nested_tuple_gets_a_suggestion_that_extends_the_key():
    # a UNet down block returns (hidden, res_samples): its element 1 is itself a tuple
    from tests.test_groups import unet

    model, run = unet()
    with pytest.raises(InterventionError, match=r"e\.g\. 'down_blocks\.0:output\.1\.0'"):
        with torch.no_grad(), attach(model, {"down_blocks.0:output.1": Cache()}):
            run()
    cache = Cache()
    with torch.no_grad(), attach(model, {"down_blocks.0:output.1.0": cache}):
        run()
    assert cache["down_blocks.0:output.1.0"].shape == (1, 8, 8, 8)


def test_a_key_into_a_tensor_names_the_site_without_it():
    # transformers 5 layers return the tensor: the old habit 'transformer.h.0:output.0' is refused
    model, _ = tiny_models.gpt2_lm()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InterventionError) as err:
        with torch.no_grad(), attach(model, {"transformer.h.0:output.0": Cache()}):
            model(ids)
    fix = re.search(r"use the site '([^']+)'", str(err.value)).group(1)
    assert fix == "transformer.h.0"
    cache = Cache()
    with torch.no_grad(), attach(model, {fix: cache}):
        model(ids)
    assert cache[fix].shape == (1, 3, 64)


def test_a_missing_field_or_index_lists_what_is_there():
    unet = tiny_models.sd_pipeline().unet
    args = (torch.zeros(1, 4, 8, 8), 10, torch.zeros(1, 5, 32))
    with pytest.raises(
        InterventionError, match=r"cannot take 'samples' from a UNet2DConditionOutput \(its keys: \['sample'\]\)"
    ):
        with torch.no_grad(), attach(unet, {":output.samples": Cache()}):
            unet(*args)
    with pytest.raises(
        InterventionError, match=r"cannot take 2 from a tuple of 2 elements \(0: Tensor\(1, 8, 4, 4\), 1: tuple\)"
    ):
        with torch.no_grad(), attach(unet, {"down_blocks.0:output.2": Cache()}):
            unet(*args)
