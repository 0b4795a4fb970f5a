"""TADA on a stable-audio-tools DiT (recipes/tada/sat.py): the same localisation, CAA and SAE code
path as the tones world, on tiny ``ConditionedDiffusionModelWrapper`` models that stable-audio-tools'
own ``create_model_from_config`` builds, sampled by its own ``generate_diffusion_cond``."""

from __future__ import annotations

import json

import pytest
import torch

from interventions import Ablate, When, attach
from tests.sat_support import SAT_INSTALL_HINT, sat_available, tiny_sat_config

pytestmark = pytest.mark.skipif(not sat_available(), reason=SAT_INSTALL_HINT)

TEMPLATES = ["a {value} piano", "{value} drums with bass", "a {value} synth pad"]


def level(audio: torch.Tensor, sampling_rate: int) -> dict[str, torch.Tensor]:
    """A rule-based judge for the untrained tiny model: soft / loud by the latent's RMS, and a
    second concept (the sign of channel 1's mean) that steering should keep."""
    rms = audio.pow(2).mean((1, 2)).sqrt()
    tilt = audio[:, 1].mean(-1)
    return {"level": torch.stack([-rms, rms - 0.75], -1), "tilt": torch.stack([-tilt, tilt], -1)}


def tiny(depth: int):
    from recipes.tada.sat import SatModel
    from tests.sat_support import build_tiny_sat_model

    torch.set_num_threads(1)
    module = build_tiny_sat_model(seed=1, depth=depth)
    return SatModel(TEMPLATES, {"level": ("soft", "loud"), "tilt": ("down", "up")}, level, module, sample_size=16)


def test_patching_the_only_layer_restores_the_clean_run_on_the_cond_rows():
    """One DiT layer: the prompt reaches the output through its cross-attention alone, so
    patching its conditioning on the cond rows (first in stable-audio-tools' CFG batch) must
    restore the whole gap, and zeroing its output on the cond rows must change the samples."""
    from recipes.tada.localize import localize
    from recipes.tada.tones import sample

    model = tiny(depth=1)
    assert model.cross_attn_inputs(0) == "model.model.transformer.layers.0.cross_attn:input.context"
    loc = localize(model, "level", ("loud", "soft"), n=3, steps=3, windows=False, ablation=True)
    gap = loc.patching.source_value - loc.patching.baseline
    assert abs(gap) > 1e-4, "the clean and swapped prompts must give different samples"
    assert float(loc.recovered()[0, 0]) == pytest.approx(1.0, abs=1e-5)
    model.cfg = ("uncond", "cond")  # the wrong layout: the uncond rows would be patched
    wrong = localize(model, "level", ("loud", "soft"), n=3, steps=3, windows=False, ablation=False)
    assert float(wrong.recovered()[0, 0]) == pytest.approx(0.0, abs=1e-5)
    del model.cfg  # back to the class's None: the adapter's [cond, uncond]
    assert len(loc.ablation) == 1
    json.dumps(loc.to_json())
    a = sample(model, ["a loud piano"], 0, steps=3, guidance=3.0)
    assert a.shape == (1, 4, 16) and torch.equal(a, sample(model, ["a loud piano"], 0, steps=3, guidance=3.0))
    with attach(model.transformer, {model.cross_attn_output(0): Ablate("zero", when=When(branch="cond"))}):
        assert not torch.allclose(sample(model, ["a loud piano"], 0, steps=3, guidance=3.0), a, atol=1e-4)


def test_caa_and_sae_steering_through_the_public_api():
    from recipes.tada.caa import caa_curve, caa_vectors, restrict
    from recipes.tada.sae_steer import feature_scores, sae_hooks, top_features_by_step, train_layer_sae
    from recipes.tada.tones import sample

    model = tiny(depth=2)
    v = caa_vectors(model, "level", ("soft", "loud"), [0, 1], n=3, steps=3, templates=(0, 1))
    assert v.sites == [model.cross_attn_output(0), model.cross_attn_output(1)]
    assert v.steps(model.cross_attn_output(1)) == [0, 1, 2] and v.branch == "cond"
    norms = torch.stack([d.norm() for d in v.directions.values()])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    only1 = restrict(v, [1], model)
    assert only1.sites == [model.cross_attn_output(1)]
    curve = caa_curve(model, only1, [0.0, 8.0], n=3, steps=3, templates=(2,))
    assert curve.kept[0] == 1.0  # strength 0 reproduces the unsteered samples: tilt as it was

    prompts = ["a soft synth pad", "soft drums with bass"]
    plain = sample(model, prompts, 0, steps=3, guidance=3.0)
    with v.attach(model.transformer, scale=8.0, restore_norm=True):  # cond rows: the vector's own branch
        steered = sample(model, prompts, 0, steps=3, guidance=3.0)
    assert not torch.allclose(steered, plain, atol=1e-3)

    sae, report = train_layer_sae(model, 1, n=4, steps=3, train_steps=20, expansion=2, k=8)
    assert sae.info.site == model.cross_attn_output(1) and report.fvu < 1.0
    scores = feature_scores(model, sae, 1, "level", ("soft", "loud"), n=3, steps=3)
    feats = top_features_by_step(scores["tfidf"], 2)
    assert all(s.shape == (3, sae.d_sae) for s in scores.values()) and len(feats) == 3
    with attach(model.transformer, sae_hooks(sae, 1, feats, 0.0, model=model)):  # no edit: the same samples
        assert torch.allclose(sample(model, prompts, 0, steps=3, guidance=3.0), plain, atol=1e-5)
    with attach(model.transformer, sae_hooks(sae, 1, feats, 50.0, model=model)):
        assert not torch.allclose(sample(model, prompts, 0, steps=3, guidance=3.0), plain, atol=1e-3)


def test_checkpoint_folder_loads_bit_identical_and_refuses_what_is_missing(tmp_path):
    from safetensors.torch import save_file

    from recipes.tada.sat import SatModel, load_sat_model
    from recipes.tada.tones import sample

    model = tiny(depth=1)
    (tmp_path / "model_config.json").write_text(json.dumps(tiny_sat_config(depth=1)))
    save_file({k: t.contiguous() for k, t in model.model.state_dict().items()}, tmp_path / "model.safetensors")
    module, config = load_sat_model(str(tmp_path))
    back = SatModel(TEMPLATES, {"level": ("soft", "loud")}, level, module, config["sample_size"])
    prompts = ["a loud piano"]
    assert torch.equal(sample(back, prompts, 4, steps=2), sample(model, prompts, 4, steps=2))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        load_sat_model(str(tmp_path))
    with pytest.raises(ValueError, match="no stable-audio-tools DiffusionTransformer"):
        SatModel(TEMPLATES, {"level": ("soft", "loud")}, level, torch.nn.Linear(2, 2), 16)
