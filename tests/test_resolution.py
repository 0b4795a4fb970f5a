"""Sites remembered across sessions (``interventions.resolution``): a later session on the same
model skips the walk only while every link of it still holds, and the memory never keeps a model
alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from interventions import Cache, attach
from interventions.errors import CompiledModelError, InterventionError
from interventions.resolution import recall
from interventions.sites import SiteNotFoundError


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))


def _cached(model: nn.Module, site: str) -> torch.Tensor:
    cache = Cache()
    with attach(model, {site: cache}):
        model(torch.ones(1, 2))
    return cache[site]


def test_a_second_session_recalls_the_sites_and_hooks_the_same_modules():
    model = _model()
    first = _cached(model, "0.0")
    assert recall(model, ("0.0",)) is not None
    assert recall(model, ("0.1",)) is None  # only pattern sets that were attached
    assert torch.equal(_cached(model, "0.0"), first)
    assert not model[0][0]._forward_hooks


@pytest.mark.parametrize("how", ["setattr", "modules_dict", "parent_replaced"])
def test_a_module_replaced_since_is_found_anew_however_it_was_replaced(how):
    model = _model()
    _cached(model, "0.0")
    new = nn.Linear(2, 2)
    nn.init.zeros_(new.weight)
    nn.init.constant_(new.bias, 5.0)
    if how == "setattr":
        model[0][0] = new
    elif how == "modules_dict":  # bypasses nn.Module.__setattr__ and any registration hook
        model[0]._modules["0"] = new
    else:
        model._modules["0"] = nn.Sequential(new, nn.ReLU())
    assert torch.equal(_cached(model, "0.0"), torch.full((1, 2), 5.0))
    assert not new._forward_hooks


def test_a_module_deleted_since_is_not_found():
    model = _model()
    _cached(model, "0.1")
    del model[0]._modules["1"]
    with pytest.raises(SiteNotFoundError, match="0.1"):
        attach(model, {"0.1": Cache()})


def test_a_module_compiled_since_is_refused():
    model = _model()
    _cached(model, "0.0")
    model[0].compile(backend="eager")  # sets the instance's compiled call: no module is replaced
    with pytest.raises(CompiledModelError, match="already compiled"):
        attach(model, {"0.0": Cache()})
    assert not model[0][0]._forward_hooks


def test_a_module_wrapped_by_torch_compile_since_is_refused():
    # torch.compile(module) returns an OptimizedModule that holds the layer under _orig_mod: the
    # remembered link now passes it, and the hooks would sit below compiled code
    model = _model()
    _cached(model, "0.0")
    model[0] = torch.compile(model[0], backend="eager")
    with pytest.raises(CompiledModelError, match="already compiled"):
        attach(model, {"0.0": Cache()})
    assert not model[0]._orig_mod[0]._forward_hooks


def test_reentering_after_a_direct_replacement_is_refused():
    model = _model()
    session = attach(model, {"0.0": Cache(on_repeat="append")})
    with session:
        model(torch.ones(1, 2))
    model[0]._modules["0"] = nn.Linear(2, 2)
    with pytest.raises(InterventionError, match="site '0.0' holds a different module"), session:
        pass


def test_remembering_a_model_does_not_keep_it_alive():
    model = _model()
    _cached(model, "0.0")
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_only_the_latest_pattern_sets_are_remembered():
    from interventions import resolution

    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(resolution._PER_TARGET + 1)])
    for i in range(len(model)):
        attach(model, {str(i): Cache()}).remove()
    assert recall(model, ("0",)) is None  # the oldest, dropped
    assert recall(model, ("1",)) is not None and recall(model, (str(len(model) - 1),)) is not None


def test_globs_are_not_remembered_since_their_matches_depend_on_every_module():
    model = _model()
    with attach(model, {"0.*": Cache(), "1": Cache()}):
        model(torch.ones(1, 2))
    assert recall(model, ("0.*", "1")) is None
    model[0].append(nn.Tanh())  # a new match for the glob
    cache = Cache()
    with attach(model, {"0.*": cache, "1": Cache()}):
        model(torch.ones(1, 2))
    assert {k[0] for k in cache.keys()} == {"0.0", "0.1", "0.2"}
