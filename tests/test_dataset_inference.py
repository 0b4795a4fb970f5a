"""recipes.dataset_inference on the Gaussian-mixture world (a denoiser that memorises a known member
set), its statistics, set folders, and the Stable Audio target on a tiny pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recipes.dataset_inference import inference as di
from recipes.dataset_inference.features import FeatureConfig, SampleSet, compute_features
from recipes.dataset_inference.gmm_world import MemorisingWorld
from recipes.dataset_inference.sets import encode_wav_folder, load_set, save_set
from recipes.dataset_inference.stats import (
    auc,
    auc_ci,
    expected_mean_p,
    fit_logistic,
    n_for_mean_p,
    tpr_at_fpr,
    welch_greater,
)
from recipes.dataset_inference.targets import gmm_target, stable_audio_target

torch.set_num_threads(1)

CONFIG = FeatureConfig(timesteps=(10, 50, 100, 200), grad_timestep=50)


@pytest.fixture(scope="module")
def gmm():
    world = MemorisingWorld.build(members=200, strength=0.1, seed=0)
    target = gmm_target(world.denoiser)
    members = compute_features(target, SampleSet(world.member_x, world.member_labels), CONFIG, progress=False)
    heldout = compute_features(target, SampleSet(*world.fresh(1000, 1)), CONFIG, progress=False)
    nonmembers = compute_features(target, SampleSet(*world.fresh(1000, 2)), CONFIG, progress=False)
    return members, heldout, nonmembers


def test_statistics_match_their_definitions():
    pos, neg = torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.1, 0.3, 0.5, 0.2])
    # 12 pairs: 0.9 and 0.8 beat all 4, 0.3 beats 0.1 and 0.2, ties 0.3 -> 10.5 / 12
    assert auc(pos, neg) == pytest.approx(10.5 / 12)
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(2 / 3)  # above the largest negative (0.5)
    a, lo, hi = auc_ci(pos, neg, resamples=200)
    assert lo <= a <= hi
    from scipy.stats import ttest_ind

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, generator=gen) + 0.5, torch.randn(40, generator=gen)
    # the reference in float64 too (welch_greater's precision): float32 inputs differ at 1e-6
    two_sided = ttest_ind(x.double().numpy(), y.double().numpy(), equal_var=False).pvalue
    assert welch_greater(x, y) == pytest.approx(two_sided / 2)
    w, b = fit_logistic(torch.randn(50, 2) + torch.tensor([2.0, 0.0]), torch.randn(50, 2))
    assert w[0] > 1.0 and abs(float(w[1])) < 0.5 * float(w[0])
    with pytest.raises(ValueError, match="at least 2 scores"):
        welch_greater(torch.ones(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"fpr must lie in \[0, 1\)"):
        tpr_at_fpr(pos, neg, 1.0)


def test_expected_mean_p_matches_simulated_welch_tests():
    """Effect 0.3 sd, 60 suspect and 120 held-out scores: expected mean p 0.090; measured over 2,000
    simulated sets with this seed: 0.093."""
    g = torch.Generator().manual_seed(0)
    ps = torch.tensor(
        [welch_greater(torch.randn(60, generator=g) + 0.3, torch.randn(120, generator=g)) for _ in range(2000)]
    )
    expected = expected_mean_p(0.3, 60, 120)
    assert expected == pytest.approx(0.0898, abs=1e-3)
    assert float(ps.mean()) == pytest.approx(expected, abs=0.01), float(ps.mean())
    n = n_for_mean_p(0.3, heldout_n=1000)
    assert expected_mean_p(0.3, n, 1000) <= 0.01 < expected_mean_p(0.3, n - 1, 1000)
    assert n_for_mean_p(0.3, heldout_n=50) is None  # a small held-out set caps the power
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 0.5\)"):
        n_for_mean_p(0.3, alpha=0.5)


def test_gmm_members_have_lower_features_and_weak_per_sample_attacks(gmm):
    members, heldout, nonmembers = gmm
    assert members.names == ["loss@10", "loss@50", "loss@100", "loss@200", "cfg@10", "cfg@50", "cfg@100", "cfg@200"] + [
        "grad@50"
    ]
    gap = nonmembers.values.mean(0) - members.values.mean(0)
    assert bool((gap[:4] > 0).all()), gap  # the memorised points are denoised better at every t
    attacks = di.per_sample_attacks(
        members.names, members.values, nonmembers.values[:400], heldout.values, resamples=100
    )
    combined = attacks["combined"]
    # measured: combined AUC 0.79 [0.75, 0.83], TPR@1%FPR 0.04; loss@10 0.52 (no signal at tiny noise)
    assert 0.7 < combined["auc"] < 0.85 and combined["auc_lo"] > 0.6
    assert attacks["loss@10"]["auc"] < 0.6
    assert 0.0 < combined["tpr_at_1pct_fpr"] < 0.5


def test_gmm_dataset_inference_detects_members_at_a_reported_n(gmm):
    members, heldout, _ = gmm
    curve = di.p_value_curve(members.values, heldout.values, [10, 50, 100, 200], resamples=40, progress=False)
    means = [row["mean_p"] for row in curve]
    assert means[0] > 0.1 and means[-1] < 1e-4, (
        means
    )  # measured 0.29 at n = 10, 0.034 at 50, 0.0018 at 100, 8e-13 at 200
    assert di.smallest_n(curve) in (50, 100)
    assert di.smallest_n(curve, alpha=1e-30) is None


def test_gmm_non_member_suspect_sets_are_rejected_about_5_percent_of_the_time(gmm):
    _, heldout, nonmembers = gmm
    p = di.null_p_values(nonmembers.values, heldout.values, n=50, resamples=300, seed=0)
    rate = float((p < 0.05).double().mean())
    assert 0.02 <= rate <= 0.09, rate  # measured 0.033 (300 resamples), KS p = 0.13
    from scipy.stats import kstest

    assert kstest(p.numpy(), "uniform").pvalue > 0.01


def test_dataset_inference_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=">= 4 suspect and held-out samples"):
        di.dataset_inference(torch.zeros(3, 2), torch.zeros(10, 2), g)
    with pytest.raises(ValueError, match="differ in shape"):
        di.dataset_inference(torch.zeros(10, 2), torch.zeros(10, 3), g)
    with pytest.raises(ValueError, match="unknown scorer"):
        di.dataset_inference(torch.zeros(10, 2), torch.zeros(10, 2), g, scorer="mlp")
    with pytest.raises(ValueError, match="pool of 10"):
        di.p_value_curve(torch.zeros(10, 2), torch.zeros(10, 2), [20], progress=False)


def test_features_do_not_depend_on_the_batch_size(gmm):
    world = MemorisingWorld.build(members=20, seed=3)
    target = gmm_target(world.denoiser)
    samples = SampleSet(world.member_x, world.member_labels)
    a = compute_features(target, samples, FeatureConfig(timesteps=(50,), batch_size=7), progress=False)
    b = compute_features(target, samples, FeatureConfig(timesteps=(50,), batch_size=20), progress=False)
    torch.testing.assert_close(a.values, b.values)
    many = [
        compute_features(target, samples, FeatureConfig(timesteps=(50,), batch_size=b, views=4), progress=False)
        for b in (7, 20)
    ]
    torch.testing.assert_close(many[0].values, many[1].values)
    # more views change the averaged losses only: the first view and the gradient keep their draws
    assert not torch.allclose(many[0].column("loss@50"), a.column("loss@50"))
    torch.testing.assert_close(many[0].column("grad@100"), a.column("grad@100"))
    with pytest.raises(ValueError, match="views is the number of noise draws"):
        FeatureConfig(views=0)


def test_set_folders_round_trip_and_refuse_bad_ones(tmp_path):
    latents = torch.randn(3, 2, 5)
    save_set(tmp_path / "s", latents, ["a", "b", "c"])
    s = load_set(tmp_path / "s")
    assert torch.equal(s.latents, latents) and s.conditions == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="lacks latents.safetensors, prompts.json"):
        load_set(tmp_path / "empty")
    (tmp_path / "s" / "prompts.json").write_text(json.dumps(["a"]))
    with pytest.raises(ValueError, match="3 latents but 1 prompts"):
        load_set(tmp_path / "s")
    (tmp_path / "s" / "prompts.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="list of strings"):
        load_set(tmp_path / "s")


def test_stable_audio_schedule_is_the_vp_cosine_schedule_the_target_assumes():
    """The pipeline's scheduler feeds the DiT c_in x_edm = cos(pi t / 2) (x0 + sigma eps) with
    t = atan(sigma) 2 / pi: the VP sample at alpha_bar = cos^2(pi t / 2), which the target uses."""
    from tests.tiny_models import stable_audio_pipeline

    scheduler = stable_audio_pipeline().scheduler
    scheduler.set_timesteps(8)
    for t, sigma in zip(scheduler.timesteps[:-1], scheduler.sigmas[:-2], strict=False):
        x = torch.ones(3)
        assert float(scheduler.scale_model_input(x, t)[0]) == pytest.approx(math.cos(math.pi * float(t) / 2), rel=1e-4)
        assert float(t) == pytest.approx(math.atan(float(sigma)) * 2 / math.pi, rel=1e-4)
        scheduler._step_index = None  # scale_model_input advanced nothing we rely on


def test_stable_audio_target_features_and_wav_encoding(tmp_path):
    from scipy.io import wavfile

    from tests.tiny_models import stable_audio_pipeline

    pipe = stable_audio_pipeline()
    for i in range(3):
        wavfile.write(tmp_path / f"c{i}.wav", 8, (0.1 * torch.randn(16, 2)).numpy())
    (tmp_path / "prompts.json").write_text(json.dumps({"c0.wav": "rain", "c1.wav": "a dog", "c2.wav": "rain"}))
    folder = encode_wav_folder(pipe, tmp_path, tmp_path / "set", batch_size=2)
    encoded = load_set(folder)
    assert encoded.latents.shape[::2] == (3, 8) and encoded.conditions == ["rain", "a dog", "rain"]
    # the tiny VAE's latent width (3) is not the tiny DiT's (4), so the DiT gets latents of its own
    samples = SampleSet(torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)), encoded.conditions)
    target = stable_audio_target(pipe)
    config = FeatureConfig(timesteps=(100, 400), grad_timestep=100, batch_size=2)
    feats = compute_features(target, samples, config, progress=False)
    assert feats.names == ["loss@100", "loss@400", "cfg@100", "cfg@400", "grad@100"]
    assert bool(torch.isfinite(feats.values).all()) and bool((feats.column("grad@100") > 0).all())
    assert float(feats.column("cfg@100").abs().max()) > 0  # conditional and unconditional rows differ
    again = compute_features(
        target, samples, FeatureConfig(timesteps=(100, 400), grad_timestep=100, batch_size=3), progress=False
    )
    torch.testing.assert_close(feats.values, again.values)
    with pytest.raises(ValueError, match="map every .wav file name"):
        (tmp_path / "prompts.json").write_text(json.dumps({"c0.wav": "rain"}))
        encode_wav_folder(pipe, tmp_path, tmp_path / "set2")
