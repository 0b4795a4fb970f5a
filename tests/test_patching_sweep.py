"""patching_sweep: agrees with activation_patching where both apply, reproduces the source exactly
when a row patches everything the prompt enters through (TADA's check), splits by step windows on
a diffusers pipeline, and refuses bad input before any patched run."""

import pytest
import torch

from interventions import Cache, InterventionError, SiteNotFoundError, attach
from interventions.attribution import activation_patching
from interventions.patching import PatchingTable, patching_sweep, step_label
from tests.tiny_models import sd_pipeline

torch.set_num_threads(1)
STEPS = 3
KW = dict(num_inference_steps=STEPS, guidance_scale=3.0, output_type="pt")


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))


@pytest.fixture(scope="module")
def pipe():
    return sd_pipeline()


def _run(pipe, prompt):
    return lambda: pipe([prompt, prompt], generator=torch.Generator().manual_seed(0), **KW).images


def _mean(images):
    return images.mean()


def test_one_column_equals_activation_patching_per_site():
    model = _mlp()
    clean, corrupt = torch.randn(4, 3), torch.randn(4, 3)
    sites = ["0", "2", "3"]
    seen = []

    def metric(y):
        seen.append(float(y.sum()))
        return y.sum()

    table = patching_sweep(model, sites, clean, corrupt, metric, steps=[None, None], progress=False)
    # the documented call order: source, unpatched target, then the cells row by row
    assert seen == [table.source_value, table.baseline, *table.values.flatten().tolist()]
    assert torch.equal(table.values[:, 0], table.values[:, 1])
    real = activation_patching(model, sites, clean, corrupt, lambda y: y.sum(), per="site")
    assert table.sites == tuple(sites) and table.steps == ("all", "all")
    assert torch.allclose(table.effects[:, 0], torch.stack([real[s] for s in sites]), atol=1e-5)
    # a chain: every layer carries the whole input, so patching any one restores the clean metric
    assert torch.allclose(table.normalized(), torch.ones(3, 2), atol=1e-5)
    with torch.no_grad():
        assert table.source_value == pytest.approx(float(model(clean).sum()), abs=1e-5)
        assert table.baseline == pytest.approx(float(model(corrupt).sum()), abs=1e-5)


def test_patching_all_conditioning_inputs_reproduces_the_source_run(pipe):
    """The prompt enters the UNet only through the cross-attention keys and values: patching every
    attn2's encoder_hidden_states at every step turns the target run into the source run."""
    clean, corrupt = _run(pipe, "a red circle"), _run(pipe, "a blue square")
    every = ["unet.**.attn2:input.encoder_hidden_states"]
    table = patching_sweep(pipe, [every, "@cross_attn:input.encoder_hidden_states"], clean, corrupt, _mean,
                           steps=[None, 0], progress=False)  # fmt: skip
    layers = len(table.sites) - 1  # one row per cross-attention layer after the row of all of them
    assert layers == 4 and table.sites[0].count(" + ") == layers - 1 and table.steps == ("all", "0")
    assert table.source_value != table.baseline
    assert table.values[0, 0].item() == pytest.approx(table.source_value, abs=1e-6)
    norm = table.normalized()
    assert norm[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert abs(norm[0, 1].item() - 1.0) > 1e-3  # step 0 alone is not the whole effect
    assert (norm[1:, 0] - 1.0).abs().min() > 1e-3  # nor is any single layer


def test_step_windows_partition_the_run(pipe):
    """A window covering every step is the ``all`` column; a patch at step 0 alone changes the
    output; identical source and target runs give zero effect everywhere."""
    clean, corrupt = _run(pipe, "a red circle"), _run(pipe, "a blue square")
    site = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    table = patching_sweep(pipe, [site], clean, corrupt, _mean, steps=[range(STEPS), None, 0], progress=False)
    assert table.steps == (f"0-{STEPS - 1}", "all", "0")
    assert table.values[0, 0].item() == table.values[0, 1].item()
    assert table.effects[0, 2].item() != 0.0
    same = patching_sweep(pipe, [site], corrupt, corrupt, _mean, steps=[0, None], branch="cond", progress=False)
    assert torch.equal(same.effects, torch.zeros(1, 2))


def test_source_cache_and_rows(pipe):
    site = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    cache = Cache()
    with attach(pipe, {site: cache}):
        _run(pipe, "a red circle")()
    table = patching_sweep(pipe, [site], cache, _run(pipe, "a blue square"), _mean, steps=[1], progress=False)
    assert table.source_value is None
    with pytest.raises(InterventionError, match="source run's metric"):
        table.normalized()
    rows = table.to_rows()
    assert rows == [{"site": site, "step": "1", "value": rows[0]["value"], "effect": rows[0]["effect"]}]
    assert rows[0]["effect"] == pytest.approx(rows[0]["value"] - table.baseline)


def test_bad_input_is_refused_before_any_patched_run(pipe):
    model = _mlp()
    x = torch.randn(2, 3)
    with pytest.raises(SiteNotFoundError):
        patching_sweep(model, ["9"], x, x, lambda y: y.sum(), progress=False)
    with pytest.raises(InterventionError, match="scalar"):
        patching_sweep(model, ["0"], x, x, lambda y: y, progress=False)
    with pytest.raises(ValueError, match="steps is empty"):
        patching_sweep(model, ["0"], x, x, lambda y: y.sum(), steps=[], progress=False)
    with pytest.raises(ValueError, match="at least one site"):
        patching_sweep(model, [], x, x, lambda y: y.sum(), progress=False)
    site = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    cache = Cache()
    with attach(pipe, {site: cache}):
        _run(pipe, "a red circle")()
    calls = []

    def target():
        calls.append(1)
        return _run(pipe, "a blue square")()

    with pytest.raises(InterventionError, match=r"no step \[7\]"):
        patching_sweep(pipe, [site], cache, target, _mean, steps=[7], progress=False)
    with pytest.raises(InterventionError, match="holds nothing for site"):
        patching_sweep(pipe, ["@cross_attn"], cache, target, _mean, progress=False)
    assert calls == []


def test_table_helpers():
    t = PatchingTable(("a", "b"), ("0", "all"), torch.tensor([[1.0, 3.0], [2.0, 1.0]]), baseline=1.0, source_value=3.0)
    assert t.top_sites(1) == ["a"] and t.top_sites(1, step=0) == ["b"]
    assert torch.equal(t.normalized(), torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert "all" in str(t) and step_label(range(2, 6)) == "2-5" and step_label([1, 5]) == "1,5"
    with pytest.raises(KeyError, match="columns: 0, all"):
        t.column(4)
