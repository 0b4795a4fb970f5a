"""recipes.saeuron on the shipped shapes world: the edit's maths, its identity and error-term sign,
both CFG branches per step, bad input refused before generating, and UA/IRA/CRA pinned at fixed seeds."""

from types import SimpleNamespace

import pytest
import torch

from interventions import SAEEdit, attach
from interventions.sae import SAE
from recipes.saeuron import concepts as cs
from recipes.saeuron.baselines import main as baselines_main
from recipes.saeuron.baselines import partial_block_ablation
from recipes.saeuron.recipe import SAeUron
from recipes.saeuron.run import main as run_main
from recipes.saeuron.unlearn import Redirect, Unlearning, redirect, select

_ALL = cs.canonical()


def _of_colour(colour: int) -> cs.PromptSet:
    """The 16 canonical prompts of one colour: every shape x style."""
    rows = torch.nonzero(_ALL.labels["colour"] == colour).flatten()
    return cs.PromptSet(tuple(_ALL.prompts[i] for i in rows.tolist()), {k: v[rows] for k, v in _ALL.labels.items()})


SMALL = _of_colour(0)  # red


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: more threads only wait on each other
    yield SAeUron.shipped()
    torch.set_num_threads(threads)


def test_edit_scales_only_selected_features_where_they_fire_above_the_mean():
    edit = Unlearning(
        ("x",),
        [torch.tensor([0]), torch.tensor([2, 3])],
        [torch.tensor([-1.0]), torch.tensor([-2.0, 0.5])],
        [torch.tensor([0.0]), torch.tensor([1.0, 1.0])],
    )
    z = torch.tensor([[1.0, 1.0, 3.0, 0.5], [2.0, 2.0, 0.5, 4.0]])
    out = edit(z, SimpleNamespace(step=1, site="s"))  # the edit reads the step (and the site for errors)
    assert out.tolist() == [[1.0, 1.0, -6.0, 0.5], [2.0, 2.0, 0.5, 2.0]]
    assert z.tolist() == [[1.0, 1.0, 3.0, 0.5], [2.0, 2.0, 0.5, 4.0]]  # not edited in place
    with pytest.raises(ValueError, match="step 2 has no selected features"):
        edit(z, SimpleNamespace(step=2, site="s"))


def test_select_follows_the_published_procedure():
    gen = torch.Generator().manual_seed(0)
    lat = {c: torch.rand(4, 3, 50, generator=gen) for c in ("a", "b", "c")}
    lat["b"][:, :, 11] += 3.0
    u = select(lat, ("b",), 98.0, -2.0)  # 50 latents: the top one per step
    assert [f.tolist() for f in u.features] == [[11], [11], [11]]
    mean_b = lat["b"][:, :, 11].mean(0)
    torch.testing.assert_close(torch.cat(u.factors), mean_b * -2.0)
    over_concepts = torch.stack([lat[c][:, :, 11].mean(0) for c in lat]).mean(0)
    torch.testing.assert_close(torch.cat(u.thresholds), over_concepts)
    both = select(lat, ("a", "b"), 98.0, -1.0)
    assert all(11 in f.tolist() and len(set(f.tolist())) == len(f) for f in both.features)


def test_the_gate_edits_only_images_that_show_the_concept():
    gated = Unlearning(
        ("x", "y"),
        [torch.tensor([0, 1])],
        [torch.tensor([-1.0, -1.0])],
        [torch.tensor([0.0, 0.0])],
        gates=[torch.tensor([1.0, 5.0])],
        groups=[torch.tensor([0, 1])],
        tokens=2,
    )
    image_x = [[2.0, 1.0, 3.0], [2.0, 1.0, 3.0]]  # x's feature 0 averages 2 >= 1; y's feature 1 averages 1 < 5
    image_y = [[0.5, 6.0, 3.0], [0.0, 6.0, 3.0]]  # x: 0.25 < 1; y: 6 >= 5
    out = gated(torch.tensor(image_x + image_y), SimpleNamespace(step=0, site="s"))
    assert out.tolist() == [[-2.0, 1.0, 3.0], [-2.0, 1.0, 3.0], [0.5, -6.0, 3.0], [0.0, -6.0, 3.0]]
    with pytest.raises(ValueError, match="not whole images of 2 tokens"):
        gated(torch.ones(3, 3), SimpleNamespace(step=0, site="s"))
    with pytest.raises(ValueError, match="gates, groups and tokens together"):
        Unlearning(("x",), [], [], [], gates=[])


def test_select_sets_each_gate_from_its_concepts_own_prompts():
    gen = torch.Generator().manual_seed(1)
    lat = {c: torch.rand(4, 3, 50, generator=gen) for c in ("a", "b", "c")}
    lat["b"][:, :, 11] += 3.0
    lat["a"][:, :, 7] += 3.0
    u = select(lat, ("b", "a"), 98.0, -1.0, gate=0.5, tokens=64)
    assert [f.tolist() for f in u.features] == [[11, 7]] * 3 and [g.tolist() for g in u.groups] == [[0, 1]] * 3
    torch.testing.assert_close(
        torch.stack(u.gates), 0.5 * torch.stack([lat["b"][:, :, 11], lat["a"][:, :, 7]], -1).mean(0)
    )
    assert select(lat, ("b",), 98.0, -1.0).gates is None  # no gate: the paper's edit
    with pytest.raises(ValueError, match="tokens per image"):
        select(lat, ("b",), 98.0, -1.0, gate=0.5)


def _ctx(step, branch, run=1):
    return SimpleNamespace(step=step, branch=branch, run=run, site="s")


def test_redirect_shifts_only_the_images_the_probe_assigns_a_removed_concept():
    by_concept = {  # [prompts, steps, d]: concept a fires feature 0, b feature 1, c feature 2
        "a": torch.tensor([[[4.0, 0.0, 0.0]] * 2]),
        "b": torch.tensor([[[0.0, 4.0, 0.0]] * 2]),
        "c": torch.tensor([[[0.0, 0.0, 4.0]] * 2]),
    }
    by_concept["c"][..., 1] = 1.0  # c lies farther from a than b does: a is pushed toward c
    edit = redirect(by_concept, ("a",), 0.5 * 33**0.5, tokens=2)  # |c - a| = sqrt(33): half-way from a to c
    torch.testing.assert_close(edit.shifts[0, 0, 0], torch.tensor([-2.0, 0.5, 2.0]))
    image_a = [[3.0, 0.0, 0.0], [5.0, 1.0, 0.0]]  # token mean [4, 0.5, 0]: the probe says a
    image_c = [[0.0, 1.0, 3.0], [1.0, 1.0, 4.0]]  # c: kept as it is
    z = torch.tensor(image_a + image_c)
    out = edit(z, _ctx(0, "cond"))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.5, 2.0], [3.0, 1.5, 2.0]] + image_c))
    # the assignment made at the run's first cond call holds for its uncond rows and later steps,
    # even once the edited image no longer looks like a
    torch.testing.assert_close(
        edit(torch.tensor([[0.0, 0.0, 4.0]] * 4), _ctx(1, "uncond")),
        torch.tensor([[0.0, 0.5, 6.0]] * 2 + [[0.0, 0.0, 4.0]] * 2),
    )
    # a new run assigns again; its uncond rows before the first cond call are not edited
    assert torch.equal(edit(z, _ctx(0, "uncond", run=2)), z)
    assert torch.equal(edit(z, _ctx(0, "cond", run=2)), out)
    with pytest.raises(ValueError, match="not whole images of 2 tokens"):
        edit(torch.ones(3, 3), _ctx(0, "cond"))
    with pytest.raises(ValueError, match="step 2 has no shift"):
        edit(z, _ctx(2, "cond"))
    with pytest.raises(ValueError, match="must be \\[removed=1, groups=1, steps=2, d_sae=3\\]"):
        Redirect(("a",), edit.probes, (0,), edit.shifts[:, :, :1], 2)


def test_redirect_takes_each_images_direction_within_its_group_with_one_length():
    # two groups (feature 3 says which); a -> b points along feature 1 in group 0, feature 2 in group 1,
    # and the two differences have lengths 5 and 10: the shift has length 2 in both
    row = lambda a, b, c, g: [[a, b, c, g]]  # noqa: E731  one step
    by_concept = {
        "a": torch.tensor([row(4.0, 0.0, 0.0, 0.0), row(4.0, 0.0, 0.0, 3.0)]),
        "b": torch.tensor([row(3.0, 4.0, 0.0, 0.0), row(6.0, 0.0, 8.0, 3.0)]),
        "c": torch.tensor([row(0.0, 0.0, 0.0, 0.0), row(0.0, 0.0, 0.0, 3.0)]),
    }
    groups = {c: torch.tensor([0, 1]) for c in by_concept}
    edit = redirect(by_concept, ("c",), 2.0, tokens=1, groups=groups)  # c's farthest kept concept: b
    torch.testing.assert_close(edit.shifts[0, :, 0], torch.tensor([[1.2, 1.6, 0.0, 0.0], [1.2, 0.0, 1.6, 0.0]]))
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0], [4.0, 0.0, 0.0, 3.0]])  # c in 0, c in 1, a
    out = edit(z, _ctx(0, "cond"))
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.6, 0.0, 0.0], [1.2, 0.0, 1.6, 3.0], [4.0, 0.0, 0.0, 3.0]]))
    with pytest.raises(ValueError, match="every group 0..1 needs prompts of every concept"):
        redirect(by_concept, ("c",), 2.0, tokens=1, groups=groups | {"a": torch.tensor([0, 0])})


def test_redirect_then_scales_as_the_paper_on_the_assigned_images_only():
    gen = torch.Generator().manual_seed(3)
    lat = {c: torch.rand(4, 3, 50, generator=gen) for c in ("a", "b", "c")}
    lat["b"][:, :, 11] += 3.0
    scaling = select(lat, ("b",), 98.0, -2.0)
    edit = redirect(lat, ("b",), 0.0, tokens=1, scaling=scaling)  # strength 0: the paper's edit, gated
    z = torch.stack([lat["b"][0, 0], lat["a"][0, 0]])  # one image of b, one of a, one token each
    out = edit(z, _ctx(0, "cond"))
    assert torch.equal(out[0], scaling(z[:1], _ctx(0, "cond"))[0]) and not torch.equal(out[0], z[0])
    assert torch.equal(out[1], z[1])


def test_no_selected_feature_is_bit_identical_and_the_error_term_sign_matters(model):
    sae, _ = model.saes["style"]
    steps = model.sampling.steps
    nothing = Unlearning(
        ("stripes",),
        [torch.tensor([], dtype=torch.long)] * steps,
        [torch.tensor([])] * steps,
        [torch.tensor([])] * steps,
    )
    prompts = cs.PromptSet(SMALL.prompts[:4], {k: v[:4] for k, v in SMALL.labels.items()})
    plain = model.generate(prompts, 7)
    from recipes.saeuron.sampling import generate

    same = generate(model.pipe, prompts.prompts, 7, model.sampling, {sae.info.site: SAEEdit(sae, nothing)})
    assert torch.equal(plain, same)

    def published(x, ctx):  # SAeUron's hook with no feature edited: dec(z) + (dec(z) - x)
        from interventions.layout import from_tokens, to_tokens

        tokens = to_tokens(x, ctx.layout)
        rec = sae.decode(sae.encode(tokens))
        return from_tokens(rec + (rec - tokens), x, ctx.layout)

    flipped = generate(model.pipe, prompts.prompts, 7, model.sampling, {sae.info.site: published})
    assert (flipped - plain).abs().max() > 0.05


def test_the_edit_runs_on_both_branches_at_every_step(model):
    seen = set()
    unlearning = model.unlearning(("stripes",), 99.5, -1.0)

    def recording(z, ctx):
        seen.add((ctx.step, ctx.branch))
        return unlearning(z, ctx)

    sae, _ = model.saes["style"]
    with attach(model.pipe, {sae.info.site: SAEEdit(sae, recording)}):
        model.pipe(
            ["a red circle in striped style"],
            num_inference_steps=model.sampling.steps,
            guidance_scale=3.0,
            output_type="pt",
        )
    assert seen == {(t, b) for t in range(model.sampling.steps) for b in ("cond", "uncond")}


@pytest.mark.parametrize(
    "remove, error, words",
    [
        (("sparkly",), KeyError, "unknown concept 'sparkly'"),
        (("stripes", "circle"), ValueError, "not all of kind"),
        (("red",), KeyError, "no SAE for 'colour'"),
        (("solid", "stripes", "dots", "checker"), ValueError, "leaves nothing"),
    ],
)
def test_bad_concepts_are_refused_before_generating(model, remove, error, words):
    with pytest.raises(error, match=words):
        model.generate(SMALL, 0, "saeuron", remove)


def test_an_sae_of_another_site_or_width_is_refused(model, tmp_path):
    style_sae, style_stats = model.saes["style"]
    shape_sae, shape_stats = model.saes["shape"]
    with pytest.raises(ValueError, match="the SAE is for site"):
        SAeUron(model.pipe, model.evaluators, {"style": (shape_sae, style_stats)})
    narrow = SAE(32, style_sae.d_sae, "topk", 4)
    narrow.info.site = style_sae.info.site
    with pytest.raises(Exception, match="has 64 channels, the SAE expects 32"):
        SAeUron(model.pipe, model.evaluators, {"style": (narrow, style_stats)})
    with pytest.raises(KeyError, match="no factor 'texture'"):
        SAeUron(model.pipe, model.evaluators, {"texture": (style_sae, style_stats)})


def test_cli_refuses_before_loading(capsys):
    for argv, words in [
        (["--remove", "sparkly"], "unknown concept"),
        (["--seeds", "100"], "selected the features"),
        (["--kind", "texture"], "invalid choice"),
        (["--kind", "colour"], "no SAE for colour"),
        (["--gate", "-1"], "--gate must be >= 0"),
        (["--strength", "-1"], "--strength must be >= 0"),
        (["--model", "/no/such/checkpoint"], "neither a folder nor a Hub id"),
    ]:
        with pytest.raises(SystemExit):
            run_main(argv)
        assert words in capsys.readouterr().err


# Measured on the 16 red canonical prompts (SMALL), held-out seed 1000, 10 DDIM steps, the shipped DEFAULTS
# (shapes gated at 0.5; styles redirected by 18 latent units within the image's colour by the up_blocks.0.attentions.0 SAE;
# recipes/results/README.md has the full evaluation), for square the paper's ungated edit (gate 0), for
# styles the paper's edit with the same SAE (percentile 99.8, gamma -1, no redirection, no gate): pinned with a
# margin of one image per group.
PINNED = {
    ("triangle",): {
        "saeuron": {"UA": 4 / 4, "IRA": 12 / 12, "CRA": 16 / 16},
        "block_ablation": {"UA": 4 / 4, "IRA": 6 / 12, "CRA": 10 / 16},
    },
    ("square",): {
        "saeuron": {"UA": 3 / 4, "IRA": 12 / 12, "CRA": 10 / 16},
        "ungated": {"UA": 3 / 4, "IRA": 6 / 12, "CRA": 7 / 16},
    },
    ("stripes",): {
        "saeuron": {"UA": 4 / 4, "IRA": 11 / 12, "CRA": 16 / 16},
        "paper": {"UA": 0 / 4, "IRA": 11 / 12, "CRA": 15 / 16},
        "block_ablation": {"UA": 4 / 4, "IRA": 4 / 12, "CRA": 2 / 16},
    },
    ("dots",): {
        "saeuron": {"UA": 4 / 4, "IRA": 12 / 12, "CRA": 15 / 16},
        "paper": {"UA": 1 / 4, "IRA": 12 / 12, "CRA": 16 / 16},
        "block_ablation": {"UA": 0 / 4, "IRA": 0 / 12, "CRA": 2 / 16},
    },
}


@pytest.mark.parametrize("remove", list(PINNED))
def test_unlearning_at_a_held_out_seed_is_pinned(model, remove):
    runs = {
        "saeuron": lambda: model.generate(SMALL, 1000, "saeuron", remove),
        "ungated": lambda: model.generate(SMALL, 1000, "saeuron", remove, gate=0.0),
        "paper": lambda: model.generate(SMALL, 1000, "saeuron", remove, 99.8, -1.0, 0.0, strength=0.0),
        "block_ablation": lambda: model.generate(SMALL, 1000, "block_ablation", remove),
    }
    got = {method: model.metrics(runs[method](), SMALL, remove) for method in PINNED[remove]}
    for method, pinned in PINNED[remove].items():
        for metric, value in pinned.items():
            counts = got[method]
            n = {"UA": counts["n_target"], "IRA": counts["n_kept"]}.get(metric, counts["n_target"] + counts["n_kept"])
            assert abs(got[method][metric] - value) <= 1.0 / n + 1e-6, (method, metric, got[method])
    other = "ungated" if "ungated" in got else "block_ablation"
    assert got["saeuron"]["IRA"] > got[other]["IRA"]  # selective where the whole block (or the ungated edit) is not
    if "paper" in got:  # redirection removes the style the paper's scaling leaves (the network's default style)
        assert got["saeuron"]["UA"] > got["paper"]["UA"]


def test_a_negative_gate_or_strength_is_refused(model):
    with pytest.raises(ValueError, match="gate must be >= 0"):
        model.unlearning(("circle",), gate=-0.5)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        model.unlearning(("stripes",), strength=-1.0)


def test_blue_dots_are_redirected(model):
    # the images the shipped edit of 7 December 2026 (one direction from the all-colour style means, its length
    # proportional to their distance) left as dots on the selection seeds were blue: pinned at held-out seed 1000
    # on the 16 blue prompts, against the paper's scaling with the same SAE (one image of tolerance)
    blue = _of_colour(2)
    ours = model.metrics(model.generate(blue, 1000, "saeuron", ("dots",)), blue, ("dots",))
    paper = model.metrics(
        model.generate(blue, 1000, "saeuron", ("dots",), 99.8, -1.0, 0.0, strength=0.0), blue, ("dots",)
    )
    assert ours["UA"] >= 3 / 4 and ours["IRA"] >= 11 / 12 and ours["CRA"] >= 13 / 16, ours  # measured 4/4, 12/12, 14/16
    assert paper["UA"] <= 1 / 4, paper  # measured 0/4 (IRA 11/12, CRA 15/16)


def test_partial_block_ablation_interpolates_to_the_recipes_baseline(model):
    sae, stats = model.saes["style"]
    prompts = cs.PromptSet(SMALL.prompts[:2], {k: v[:2] for k, v in SMALL.labels.items()})
    full = model.generate(prompts, 7, "block_ablation", ("dots",))
    from recipes.saeuron.sampling import generate

    def ablated(fraction):
        hooks = partial_block_ablation(sae.info.site, stats.block_means, fraction)
        return generate(model.pipe, prompts.prompts, 7, model.sampling, hooks)

    plain = model.generate(prompts, 7)
    assert torch.equal(ablated(1.0), full)
    half = ablated(0.5)
    assert (half - full).abs().mean() > 0.01 and (half - plain).abs().mean() > 0.01
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\]"):
        partial_block_ablation(sae.info.site, stats.block_means, 0.0)


def test_baselines_cli_refuses_before_loading(capsys):
    for argv, words in [
        (["--kind", "style", "--seeds", "101"], "selected the features"),
        (["--kind", "style", "--fractions", "1.5"], "--fractions must lie in (0, 1]"),
        (["--kind", "colour"], "no SAE for colour"),
    ]:
        with pytest.raises(SystemExit):
            baselines_main(argv)
        assert words in capsys.readouterr().err
