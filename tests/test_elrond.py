"""ELROND on the shapes model: the hook's gradients are autograd's, complexity grows with the free
factors, the top direction changes the free factor and keeps the prompted ones (tiny, fixed seeds)."""

import json

import pytest
import torch

from interventions import DiskStore
from interventions.subspace import complexity, pca
from recipes.elrond.cli import LADDER, main
from recipes.elrond.complexity import gradient_spread, ladder_holds
from recipes.elrond.distance import canonical, canonicalise, pixel
from recipes.elrond.experiment import (
    above_null,
    diversity,
    parallel_analysis,
    predict_factors,
    unit_rows,
    unsteered_samples,
)
from recipes.elrond.gradients import Setting, collect, concept_position, embed, fully_noised, pair_gradients, regenerate
from recipes.elrond.steer import generate

SETTING = Setting(sample_steps=10, regen_steps=4, guidance=3.0, batch=32)


@pytest.fixture(scope="module")
def pipe():
    from recipes.worlds.shapes_model import load_pipeline

    torch.set_num_threads(1)
    return load_pipeline()


@pytest.fixture(scope="module")
def evaluators():
    from recipes.worlds.shapes_model import load_evaluators

    return load_evaluators()


@pytest.fixture(scope="module")
def striped_circle(pipe, tmp_path_factory):
    return collect(
        pipe, "a striped circle", 32, DiskStore(tmp_path_factory.mktemp("g")), setting=SETTING, progress=False
    )


@pytest.mark.parametrize("distance", ["pixel", "canonical"])
def test_hook_gradients_equal_autograd(pipe, distance):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    setting = Setting(regen_steps=2, distance=distance)
    hooked = pair_gradients(pipe, a, b, "a red circle", setting, seed=5)
    cond, uncond = embed(pipe, "a red circle", 3)
    cond.requires_grad_(True)
    dist = {"pixel": pixel, "canonical": canonical}[distance]
    with torch.enable_grad():
        x0 = regenerate(pipe, fully_noised(pipe, a, setting, torch.Generator().manual_seed(5)), cond, uncond, setting)
        (direct,) = torch.autograd.grad(dist(x0, b).sum(), cond)
    assert hooked.shape == (3, 8, 64)
    assert float(direct.abs().max()) > 1e-4  # a real gradient, not zeros on both sides
    torch.testing.assert_close(hooked, direct, rtol=1e-5, atol=1e-8)
    # the backward pass skipped the UNet's weights (frozen for the pass) and gave them back trainable
    assert all(p.requires_grad and p.grad is None for p in pipe.unet.parameters())


def test_canonical_distance_factors_out_position_and_size():
    """On world renders: in pixel MSE a new position and size (same factors) costs more than a new
    shape or style (the measured cause of the ladder's failure); in the canonical frame it costs a
    tenth as much, and far less than a new colour (measured 0.245 -> 0.022; colour 0.298)."""
    from recipes.worlds.shapes import render, sample_factors

    g = torch.Generator().manual_seed(0)
    f, moved = sample_factors(400, g), sample_factors(400, g)
    a = render(f["shape"], f["colour"], f["style"], f["cx"], f["cy"], f["size"])
    b = render(f["shape"], f["colour"], f["style"], moved["cx"], moved["cy"], moved["size"])
    other = {k: (f[k] + 1) % 4 for k in ("shape", "colour", "style")}
    changed = {
        k: render(*[other[j] if j == k else f[j] for j in ("shape", "colour", "style")], f["cx"], f["cy"], f["size"])
        for k in other
    }
    nuisance_pixel, nuisance_canonical = float(pixel(a, b).mean()), float(canonical(a, b).mean())
    assert nuisance_pixel > float(pixel(a, changed["shape"]).mean())
    assert nuisance_pixel > float(pixel(a, changed["style"]).mean())
    assert nuisance_canonical < 0.15 * nuisance_pixel
    assert float(canonical(a, changed["colour"]).mean()) > 5 * nuisance_canonical
    assert canonicalise(a).shape == a.shape and float(canonicalise(a).min()) >= -1 - 1e-6
    with pytest.raises(ValueError, match="unknown distance"):
        Setting(distance="dreamsim")


def test_parallel_analysis_counts_planted_directions_and_none_in_noise():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(128, 64, generator=g)
    planted = torch.randn(128, 3, generator=g) @ torch.randn(3, 64, generator=g) * 3 + noise
    assert parallel_analysis(noise) == 0
    assert parallel_analysis(unit_rows(planted)) == 3


def test_above_null_counts_only_variance_beyond_the_null_and_keeps_scale():
    g = torch.Generator().manual_seed(0)
    null, same = 0.1 * torch.randn(128, 64, generator=g), 0.1 * torch.randn(128, 64, generator=g)
    planted = same + 0.3 * torch.randn(128, 2, generator=g) @ torch.randn(2, 64, generator=g)
    assert above_null(same, null) == 0
    assert above_null(planted, null) == 2
    assert above_null(3 * null, null) == 64  # scale-free measures cannot see this
    assert parallel_analysis(3 * null) == parallel_analysis(null)


def test_gradients_stream_to_the_disk_store(pipe, striped_circle, tmp_path):
    assert striped_circle.shape == (32, 64)
    assert bool((striped_circle.norm(dim=1) > 0).all())


def test_spectral_gap_of_unit_gradients_falls_with_fewer_free_factors(pipe, striped_circle, tmp_path):
    """3 free factors > 2 > 1 on seed 0 (measured 4 / 2 / 1); the raw gradients' count does not
    order them, and "a striped red circle" (no free factor) does not fit (recipes/results/README.md)."""
    gaps = {}
    for prompt in ("a", "a circle"):
        g = collect(pipe, prompt, 32, DiskStore(tmp_path / prompt), setting=SETTING, progress=False)
        gaps[prompt] = complexity(unit_rows(g))["spectral_gap"]
    gaps["a striped circle"] = complexity(unit_rows(striped_circle))["spectral_gap"]
    assert list(gaps.values()) == [4, 2, 1]


def test_top_direction_changes_the_free_factor_and_keeps_the_prompted_ones(pipe, evaluators, striped_circle):
    top = pca(striped_circle)[0][0]
    rand = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    n = 16
    base = predict_factors(
        evaluators, generate(pipe, "a striped circle", top.expand(n, -1), torch.zeros(n), SETTING, 101)
    )
    for direction, changes in ((top, True), (rand, False)):
        steered = generate(pipe, "a striped circle", direction.expand(n, -1), torch.full((n,), -8.0), SETTING, 101)
        pred = predict_factors(evaluators, steered)
        changed = float((pred["colour"] != base["colour"]).float().mean())
        assert (changed > 0.5) == changes, changed
        assert float((pred["shape"] == 0).float().mean()) >= 0.875  # circle
        assert float((pred["style"] == 1).float().mean()) >= 0.875  # striped


def test_unsteered_samples_are_drawn_once_and_shared(pipe, evaluators, striped_circle):
    """The unsteered samples that steering is scored against are the zero-strength steered ones
    of the same noise, bit for bit, so drawing them once per seed changes no number."""
    top = pca(striped_circle)[0][:2]
    base = unsteered_samples(pipe, "a striped circle", 8, 101, SETTING)
    assert torch.equal(base, generate(pipe, "a striped circle", top[0].expand(8, -1), torch.zeros(8), SETTING, 101))
    shared = diversity(pipe, evaluators, "a striped circle", top, 4.0, 8.0, 8, 101, SETTING, base)
    assert shared == diversity(pipe, evaluators, "a striped circle", top, 4.0, 8.0, 8, 101, SETTING)
    assert shared["unsteered"] != shared["random_steering"]


def test_bad_input_is_refused_before_any_work(pipe, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown word"):
        concept_position(pipe.tokenizer, "a shape")
    with pytest.raises(ValueError, match="not in the prompt"):
        concept_position(pipe.tokenizer, "a circle", word="red")
    with pytest.raises(SystemExit, match="no such folder"):
        main(["--model", str(tmp_path / "missing"), "--prompt", "a dog", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown word"):
        main(["--prompt", "a shape", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="use --distance pixel with --model"):
        main(["--model", str(tmp_path), "--distance", "canonical", "--prompt", "a dog", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_shapes_default_distance_is_canonical(tmp_path):
    """The default run measures with the canonical distance (under which the complexity column
    orders the ladder), and says so in its file name and setting."""
    tiny = ["--prompt", "a circle", "--no-steer", "--n", "4", "--batch", "4", "--seeds", "0", "--sample-steps", "2"]
    assert main([*tiny, "--regen-steps", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "elrond_shapes_canonical.json").read_text())
    assert result["setting"]["distance"] == "canonical"
    assert (tmp_path / "grads_canonical" / "a_circle" / "seed0").is_dir()


def test_complexity_column_from_the_cli(tmp_path, capsys):
    """The CLI's complexity column (median gradient norm, canonical distance) on a tiny ladder
    (8 pairs per prompt, seed 0): read back from the DiskStores, it is the gradients' median norm;
    the fully specified prompt's is the smallest (the method's reason for the column) and the
    ladder verdict is the rule applied to the column."""
    argv = [
        "--no-steer",
        "--n",
        "16",
        "--batch",
        "16",
        "--seeds",
        "0",
        "--distance",
        "canonical",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "elrond_shapes_canonical.json").read_text())
    column = {p: result["prompts"][p]["complexity"]["0"]["median_norm"] for p in LADDER}
    for p in LADDER:
        with DiskStore(tmp_path / "grads_canonical" / ("_".join(p.split())) / "seed0") as store:
            assert column[p] == pytest.approx(gradient_spread(store.get(("elrond/grads", 0, None))), rel=1e-4)
    assert min(column, key=column.get) == "a striped red circle"
    assert column["a"] > 1.5 * column["a striped red circle"]
    assert result["ladder_holds"] == {"0": ladder_holds(column, LADDER)}
    table = capsys.readouterr().out
    assert "| 'a striped red circle' |" in table and "components to 95% | spectral gap |" in table
    with pytest.raises(ValueError, match="no value for"):
        ladder_holds(column, [*LADDER, "a red circle"])
