"""The ablation summary: per-variant statistics and per-seed paired claims, by hand."""

from __future__ import annotations

import pytest

from recipes.gan.ablations import plot_curves, sign_test_p, summarise


def run(variant: str, seed: int, ws: float, late: float | None = None) -> dict:
    r = {
        "variant": variant,
        "config": {"seed": seed},
        "ws_channels": ws,
        "ws_photon_sum": 2 * ws,
        "position_error": 1.0,
        "spread_corr": 0.5,
        "spread_corr_log": 0.5,
        "train_cpu_s": 10.0,
        "steps": 4,
        "parameters": {},
    }
    if late is not None:
        r["ws_channels_late"] = late
        r["curve"] = [{"epoch": 1, "ws_channels": ws}, {"epoch": 2, "ws_channels": late}]
    return r


def test_claims_are_paired_by_seed_and_skip_missing_metrics(tmp_path):
    runs = [
        run("single_3x", 0, 30.0, late=40.0),
        run("single_3x", 1, 50.0, late=60.0),
        run("single_3x", 2, 10.0),  # no curve: left out of the late claim
        run("expertsim", 0, 35.0, late=20.0),
        run("expertsim", 1, 40.0, late=70.0),
        run("expertsim", 2, 5.0),
    ]
    s = summarise(runs)
    assert s["variants"]["single_3x"]["ws_channels"]["mean"] == pytest.approx(30.0)
    assert "ws_channels_late" not in s["variants"]["single_3x"]  # not every run has it
    claims = {c["claim"]: c for c in s["claims"]}
    end = claims["expertsim has lower ws_channels than single_3x"]
    assert end["seeds"] == [0, 1, 2] and end["improvement_per_seed"] == [-5.0, 10.0, 5.0]
    assert end["holds_on_seeds"] == 2 and end["holds_on_mean"] is True
    assert end["sign_test_p"] == pytest.approx(4 / 8)  # P(>= 2 of 3) = (3 + 1) / 8
    late = claims["expertsim has lower ws_channels_late than single_3x"]
    assert late["seeds"] == [0, 1] and late["improvement_per_seed"] == [20.0, -10.0]
    assert late["holds_on_seeds"] == 1
    plot_curves(str(tmp_path / "curves.png"), runs)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_sign_test_by_hand():
    assert sign_test_p(3, 3) == 0.125
    assert sign_test_p(5, 5) == 1 / 32
    assert sign_test_p(0, 4) == 1.0
    assert sign_test_p(6, 7) == pytest.approx(8 / 128)
