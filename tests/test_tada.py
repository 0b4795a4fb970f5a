"""TADA recipe (recipes/tada): localisation against a known ground truth, CAA and SAE steering on
the shipped tones model, the CLI. Tiny settings with fixed seeds (a few prompts, 3-4 DDIM steps)."""

from __future__ import annotations

import json

import pytest
import torch

from interventions import attach
from recipes.tada.caa import caa_curve, caa_vectors, restrict
from recipes.tada.ground_truth import load_ground_truth, mask_factor
from recipes.tada.localize import localize, step_windows
from recipes.tada.run import load_model, main, pick_layers
from recipes.tada.sae_steer import feature_scores, sae_hooks, top_features_by_step, train_layer_sae
from recipes.tada.tones import CFG, prompt_pairs, sample, value_index


@pytest.fixture(scope="module")
def tones():
    torch.set_num_threads(1)
    from recipes.worlds.tones_model import load_model as load_tones

    return load_tones()


def test_masking_hides_which_value_the_prompt_names():
    for pair in prompt_pairs("vocals", ("vocals", "instrumental"), n=6, seed=3):
        assert pair.clean != pair.swapped
        assert mask_factor(pair.clean, "vocals") == mask_factor(pair.swapped, "vocals")
    assert mask_factor("sad buzzy tune leisurely with singing", "timbre") == "sad mask tune leisurely with singing"
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        mask_factor("a red tune", "colour")


def test_sweep_ranks_first_the_only_block_that_sees_timbre():
    """Acceptance: in the shipped ground-truth model only block 2 reads the timbre word."""
    torch.set_num_threads(1)
    gt = load_ground_truth()
    assert (gt.factor, gt.visible_block) == ("timbre", 2)
    loc = localize(
        gt, "timbre", ("sawtooth", "sine"), n=4, steps=4, seed=5, prompt_seed=11, windows=False, ablation=False
    )
    assert loc.clean_rate >= 0.75 and loc.swapped_rate <= 0.25  # the model follows its timbre word
    rec = loc.recovered()[:, 0]
    assert loc.ranking()[0] == 2
    assert rec[2] > 0.7, rec
    assert all(abs(float(rec[i])) < 0.05 for i in (0, 1, 3)), rec


def test_localisation_on_the_shipped_model_puts_vocals_in_block_2(tones):
    loc = localize(tones, "vocals", ("vocals", "instrumental"), n=4, steps=4, seed=0, prompt_seed=100, windows=False)
    assert loc.ranking()[0] == 2
    assert float(loc.recovered()[2, 0]) > 0.5
    assert float(loc.patched_rate[2, 0]) >= 0.75 and float(loc.patched_rate[[0, 1, 3], 0].max()) == 0.0
    assert len(loc.ablation) == 4 and loc.ablation_baseline == loc.clean_rate == 1.0
    assert pick_layers([loc]) == [2]
    json.dumps(loc.to_json())


def test_caa_vectors_are_unit_per_step_and_steer_held_out_prompts(tones, tmp_path):
    v = caa_vectors(tones, "vocals", ("instrumental", "vocals"), [1, 2], n=4, steps=5, templates=(0, 1))
    assert v.sites == ["transformer_blocks.1.attn2", "transformer_blocks.2.attn2"]
    assert v.steps("transformer_blocks.2.attn2") == [0, 1, 2, 3, 4] and v.branch == "cond"
    norms = torch.stack([d.norm() for d in v.directions.values()])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    v.save(tmp_path / "v")
    from interventions.steering import SteeringVector

    back = SteeringVector.load(tmp_path / "v")
    assert back.extra["factor"] == "vocals" and torch.equal(
        back.directions[("transformer_blocks.2.attn2", 3)], v.directions[("transformer_blocks.2.attn2", 3)]
    )
    only2 = restrict(v, [2])
    assert only2.sites == ["transformer_blocks.2.attn2"]
    curve = caa_curve(tones, only2, [0.0, 4.0], n=4, steps=5, seed=0, prompt_seed=300, templates=(2,))
    assert curve.target == [0.0, 1.0]  # no strength: still instrumental; strength 4: all sing
    assert curve.kept == [1.0, 1.0]  # timbre, tempo and mood as in the unsteered samples
    with pytest.raises(ValueError, match="fitted on 5 sampling steps"):
        caa_curve(tones, only2, [1.0], n=2, steps=8)
    with pytest.raises(ValueError, match="no direction at layers"):
        restrict(v, [3])


def test_sae_features_and_error_preserving_edits(tones):
    sae, report = train_layer_sae(tones, 2, n=4, steps=3, train_steps=30, expansion=2, k=8)
    assert report.fvu < 0.5
    scores = feature_scores(tones, sae, 2, "vocals", ("instrumental", "vocals"), n=4, steps=3)
    assert set(scores) == {"tfidf", "diff_of_means", "cohens_d"}
    assert all(s.shape == (3, sae.d_sae) for s in scores.values())
    feats = top_features_by_step(scores["tfidf"], 2)
    prompts = ["a slow pure tune instrumental", "sad hollow tune quick instrumental"]
    plain = sample(tones, prompts, 0, steps=3)
    for mode, identity in (("add", 0.0), ("scale", 1.0)):  # no edit -> exactly the unsteered run
        with attach(tones.transformer, sae_hooks(sae, 2, feats, identity, mode=mode), cfg=CFG):
            assert torch.allclose(sample(tones, prompts, 0, steps=3), plain, atol=1e-5)
    with attach(tones.transformer, sae_hooks(sae, 2, feats, 8.0), cfg=CFG):
        assert not torch.allclose(sample(tones, prompts, 0, steps=3), plain, atol=1e-3)
    with pytest.raises(ValueError, match="'add' or 'scale'"):
        sae_hooks(sae, 2, feats, 1.0, mode="clamp")


def test_cli_localisation_writes_table_and_heat_map(tmp_path):
    argv = ["--world", "tones", "--concept", "vocals", "--seeds", "0", "--n", "2", "--steps", "3"]
    assert main([*argv, "--no-steer", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "tada_tones_vocals.json").read_text())
    assert out["localisation"][0]["columns"] == ["all", "0", "1", "2"]
    assert len(out["localisation"][0]["recovered"]) == 4
    assert (tmp_path / "tada_tones_vocals_localisation.png").stat().st_size > 1000


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="its values are slow, fast"):
        value_index("tempo", "medium")
    with pytest.raises(FileNotFoundError, match="not 'tones', 'ground-truth'"):
        load_model("/nonexistent/folder")
    assert [list(w) for w in step_windows(7)] == [[0, 1], [2, 3, 4], [5, 6]]


def test_shapes_localisation_runs_through_the_pipeline():
    torch.set_num_threads(1)
    from recipes.tada.shapes import localize_shapes, shapes_pairs
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    loc = localize_shapes(pipe, load_evaluators(), "colour", ("red", "blue"), n=2, steps=3)
    assert loc.row_labels == ["down1.0", "up0.0", "up0.1", "mid0"]  # the tiny UNet's cross-attention layers
    assert (loc.clean_rate, loc.swapped_rate) == (1.0, 0.0)
    assert loc.recovered().shape == (4, 1) and sorted(loc.ranking()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="its values are red, green, blue, yellow"):
        shapes_pairs("colour", ("red", "purple"), 2, 0)


def test_a_stable_audio_pipeline_runs_the_same_code_path():
    """Stable Audio Open's path (recipes.tada.pipeline) on a tiny StableAudioPipeline with a rule-based judge."""
    torch.set_num_threads(1)
    from recipes.tada.pipeline import PipelineModel
    from tests.tiny_models import stable_audio_pipeline

    def level(audio, sampling_rate):  # quiet / loud by RMS around the tiny model's typical level
        rms = audio.pow(2).mean((1, 2)).sqrt()
        return {"level": torch.stack([-rms, rms - 0.05], -1)}

    pipe = stable_audio_pipeline()
    pipe.set_progress_bar_config(disable=True)
    model = PipelineModel(["a {value} piano piece", "{value} drums"], {"level": ("quiet", "loud")}, level, pipe)
    loc = localize(model, "level", ("loud", "quiet"), n=2, steps=2, windows=False, ablation=False)
    assert loc.patching.sites == tuple(f"transformer_blocks.{i}.attn2:input.encoder_hidden_states" for i in range(2))
    json.dumps(loc.to_json())
    v = caa_vectors(model, "level", ("quiet", "loud"), [0, 1], n=2, steps=2)
    assert v.steps("transformer_blocks.1.attn2") == [0, 1]
    curve = caa_curve(model, v, [0.0, 50.0], n=2, steps=2)
    assert curve.kept[0] == 1.0  # strength 0 reproduces the unsteered samples
    with pytest.raises(ValueError, match="needs a {value} slot"):
        PipelineModel(["a piano piece"], {"level": ("quiet", "loud")}, level, pipe)


def test_shapes_caa_runs_the_same_functions_on_the_unet():
    """CAA on the shapes pipeline (ShapesModel): vectors at the UNet's attn2 outputs, curves judged by
    the evaluator CNNs; strength 0 is the unsteered run, a strong push at the mid block draws circles."""
    torch.set_num_threads(1)
    from recipes.tada.shapes import ShapesModel
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    model = ShapesModel(pipe, load_evaluators())
    assert model.cross_attn_output(3) == "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    v = caa_vectors(model, "shape", ("square", "circle"), [3], n=4, steps=4, templates=(0, 1))
    assert v.steps(model.cross_attn_output(3)) == [0, 1, 2, 3]
    curve = caa_curve(model, v, [0.0, 8.0], n=4, steps=4, seed=0, prompt_seed=300, templates=(2,))
    assert (curve.target[0], curve.kept[0]) == (0.0, 1.0)  # square prompts, unsteered: no circle, all kept
    assert (curve.target[1], curve.kept[1]) == (1.0, 1.0)  # 4 of 4 drawn as circles, colour and style kept
    with pytest.raises(ValueError, match="its values are circle, square, triangle, cross"):
        model.value_index("shape", "star")


def test_cli_shapes_localises_then_steers(tmp_path):
    argv = ["--world", "shapes", "--concept", "shape", "--seeds", "0", "--n", "2", "--steps", "4"]
    assert main([*argv, "--strengths", "8", "--remove-strengths", "4", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "tada_shapes_shape.json").read_text())
    assert out["localised_layers"] == [3]  # the mid block, as in the full run
    curves = out["caa"][0]["curves"]
    assert [c["label"] for c in curves][:2] == ["CAA blocks [3], cond pass", "CAA blocks [3], both passes"]
    assert [(c["target"], c["kept"]) for c in curves[:1]] == [([1.0], [1.0])]
    assert (tmp_path / "tada_shapes_shape_vectors" / "localised").is_dir()
    assert (tmp_path / "tada_shapes_shape_steering_seed0.png").stat().st_size > 1000
