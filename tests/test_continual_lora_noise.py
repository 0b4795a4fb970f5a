"""The evaluation-noise interval of a forgetting difference (recipes.continual_lora.metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from recipes.continual_lora.metrics import forgetting, forgetting_difference_interval

torch.set_num_threads(1)


def test_point_is_the_forgetting_difference_and_stacks_average_over_seeds():
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randint(0, 65, (3, 4, 4), generator=g) / 64 for _ in range(2))
    d, lo, hi = forgetting_difference_interval(A[0], B[0], n=64, resamples=200)
    assert d == pytest.approx(forgetting(A[0]) - forgetting(B[0]), abs=1e-12)
    assert lo <= hi
    mean = sum(forgetting(a) - forgetting(b) for a, b in zip(A, B, strict=True)) / 3
    assert forgetting_difference_interval(A, B, n=64, resamples=200)[0] == pytest.approx(mean, abs=1e-12)


def test_interval_width_is_the_binomial_standard_error():
    # only S[0, 1] is uncertain (0 and 1 redraw as themselves): forgetting(A) = (1 - S[0, 1]) / 2
    A = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    B = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    d, lo, hi = forgetting_difference_interval(A, B, n=64, resamples=20_000)
    assert d == 0.25
    se = math.sqrt(0.5 * 0.5 / 64) / 2
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # four times the images halve the interval
    lo4, hi4 = forgetting_difference_interval(A, B, n=256, resamples=20_000)[1:]
    assert (hi4 - lo4) / (hi - lo) == pytest.approx(0.5, rel=0.15)


def test_equal_methods_rarely_look_different():
    # two methods with the same true score matrix: the 95 % interval excludes 0 in about 5 % of evaluations
    g = torch.Generator().manual_seed(1)
    P = torch.tensor([[0.9, 0.6, 0.4], [0.1, 0.8, 0.5], [0.2, 0.3, 0.7]], dtype=torch.float64)
    n, trials, excluded = 64, 200, 0
    for i in range(trials):
        A, B = (torch.binomial(torch.full_like(P, n), P, generator=g) / n for _ in range(2))
        _, lo, hi = forgetting_difference_interval(A, B, n=n, resamples=1000, seed=i)
        excluded += not lo <= 0 <= hi
    assert excluded / trials < 0.1


def test_bad_input_says_what_was_wrong():
    S = torch.eye(2)
    with pytest.raises(ValueError, match="one shape"):
        forgetting_difference_interval(S, torch.eye(3), n=16)
    with pytest.raises(ValueError, match="outside"):
        forgetting_difference_interval(S * 2, S, n=16)
    with pytest.raises(ValueError, match="n >= 1"):
        forgetting_difference_interval(S, S, n=0)


def test_differences_per_method_and_seed_in_a_table():
    from recipes.continual_lora.methods import Sequence
    from recipes.continual_lora.report import differences_table, forgetting_differences

    forgot, kept, half = [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]], [[1.0, 0.5], [0.0, 1.0]]
    runs = [Sequence("naive", 0, forgot, [0, 0]), Sequence("naive", 1, half, [0, 0])]
    runs += [Sequence("magmax", 0, kept, [0, 0]), Sequence("magmax", 1, half, [0, 0])]
    d = forgetting_differences(runs, n=64, resamples=2000)
    assert list(d) == ["magmax"] and d["magmax"]["seeds"] == [0, 1]
    assert d["magmax"]["difference"] == [0.5, 0.0] and d["magmax"]["mean"]["difference"] == 0.25
    assert d["magmax"]["low"][0] == 0.5  # 0 and 1 redraw as themselves: no noise
    assert d["magmax"]["low"][1] < 0 < d["magmax"]["high"][1]
    rows = differences_table(d).splitlines()
    assert rows[0] == "| naive minus | seed 0 | seed 1 | mean |"
    assert rows[2].startswith("| magmax | **+0.500 [+0.500, +0.500]** | +0.000 [")
    with pytest.raises(ValueError, match="reference method 'ortho_init'"):
        forgetting_differences(runs, n=64, reference="ortho_init")
