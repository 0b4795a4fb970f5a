"""SAeUron's per-step feature scores and percentile selection (interventions.scores)."""

import pytest
import torch

from interventions.scores import (
    above_percentile,
    above_percentile_by_step,
    normalized_difference,
    normalized_difference_by_step,
    probe_predict,
    ridge_probe,
)


def _published(latents: dict[str, torch.Tensor], target: str, step: int, eps: float = 1e-8) -> torch.Tensor:
    """SAeUron's compute_feature_importance, transcribed (the reference)."""
    mean_x = latents[target][:, step, :].float().mean(0)
    others = torch.cat([latents[s][:, step, :].float() for s in latents if s != target])
    mean_o = others.mean(0)
    return mean_x / (mean_x.sum() + eps) - mean_o / (mean_o.sum() + eps)


def _latents(seed: int = 0, counts=(3, 5, 2, 4)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    alive = torch.rand(40, generator=gen) > 0.3  # some latents never fire, for every concept
    return {f"c{i}": torch.rand(n, 6, 40, generator=gen) * alive for i, n in enumerate(counts)}


def test_by_step_matches_the_published_code_with_unequal_counts():
    lat = _latents()
    scores = normalized_difference_by_step(lat)
    for c in lat:
        assert scores[c].shape == (6, 40)
        for step in range(6):
            torch.testing.assert_close(scores[c][step], _published(lat, c, step), rtol=1e-5, atol=1e-7)
            other = torch.cat([lat[o][:, step] for o in lat if o != c])
            torch.testing.assert_close(
                scores[c][step], normalized_difference(lat[c][:, step], other), rtol=1e-5, atol=1e-6
            )


def test_a_planted_concept_feature_scores_highest_at_its_steps():
    lat = _latents(1, (4, 4, 4))
    lat["c1"][:, 2:4, 7] += 5.0  # feature 7 fires for c1 at steps 2 and 3 only
    scores = normalized_difference_by_step(lat)["c1"]
    picked = above_percentile_by_step(scores, 97.0)  # 40 features: the top 1-2 per step
    assert all(7 in p.tolist() for p in picked[2:4])
    assert all(7 not in p.tolist() for p in picked[:2] + picked[4:])
    assert scores[2:4, 7].min() > 0 > normalized_difference_by_step(lat)["c0"][2:4, 7].max()


def test_percentile_by_step_equals_one_row_at_a_time():
    scores = torch.randn(5, 1000, generator=torch.Generator().manual_seed(2))
    picked = above_percentile_by_step(scores, 99.5)
    assert [p.tolist() for p in picked] == [above_percentile(row, 99.5).tolist() for row in scores]
    assert [len(p) for p in picked] == [5] * 5  # 1000 distinct scores: exactly the top 0.5%
    assert [len(p) for p in above_percentile_by_step(scores, 99.95)] == [1] * 5


def test_bad_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="two or more concepts"):
        normalized_difference_by_step({"a": torch.rand(2, 3, 4)})
    with pytest.raises(ValueError, match="steps x d_sae"):
        normalized_difference_by_step({"a": torch.rand(2, 3, 4), "b": torch.rand(2, 3, 5)})
    with pytest.raises(ValueError, match="percentile"):
        above_percentile_by_step(torch.rand(2, 4), 100.0)


def test_ridge_probe_solves_the_normal_equations_and_separates_planted_concepts():
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(30) % 3
    latents = torch.rand(30, 8, generator=gen) * 0.5
    latents[torch.arange(30), labels] += 2.0  # concept k fires feature k
    w = ridge_probe(latents, labels, 3, l2=0.5)
    x = torch.cat([latents, torch.ones(30, 1)], 1)
    penalty = torch.diag(torch.tensor([0.5] * 8 + [0.0]))  # the bias is not penalised
    y = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close((x.T @ x + penalty) @ w, x.T @ y, rtol=1e-4, atol=1e-4)
    test = torch.rand(9, 8, generator=gen) * 0.5
    test[torch.arange(9), torch.arange(9) % 3] += 2.0
    assert probe_predict(test, w).tolist() == (torch.arange(9) % 3).tolist()
    with pytest.raises(ValueError, match="labels must lie in"):
        ridge_probe(latents, labels + 1, 3)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        ridge_probe(latents, labels, 3, l2=0.0)
    with pytest.raises(ValueError, match="latents \\[n, 8\\]"):
        probe_predict(torch.rand(2, 7), w)
