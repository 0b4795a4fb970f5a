"""Mediffusion's seeds in worker processes (``--workers``): a 2-seed tiny run through two workers
writes the same ``mediffusion.json`` numbers, model and figure as the in-process run."""

import json

import pytest
import torch

from interventions.cli import main as cli_main

torch.set_num_threads(1)
TINY = [
    "--seeds", "0", "1", "--steps", "3", "--n-train", "40", "--labelled", "0.2", "--n-test", "20",
    "--counterfactuals", "2", "--cf-steps", "2", "--t0", "40", "--scales", "0", "100", "--no-progress",
]  # fmt: skip


def test_two_seeds_in_workers_merge_to_the_in_process_numbers(tmp_path, capsys):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert cli_main(["run", "mediffusion", *TINY, "--workers", "1", "--out", str(serial)]) == 0
    assert cli_main(["run", "mediffusion", *TINY, "--workers", "2", "--out", str(parallel)]) == 0
    one, two = (json.loads((folder / "mediffusion.json").read_text()) for folder in (serial, parallel))
    assert [(r["seed"], r["mode"]) for r in two["runs"]] == [(0, "supervised"), (0, "fixmatch"), (1, "supervised"),
                                                            (1, "fixmatch")]  # fmt: skip
    assert two == one  # config, every run's history, counterfactual scores and summary, bit for bit
    assert len(two["counterfactuals"]) == 2 and two["runs"][0]["history"] != two["runs"][2]["history"]  # seeds differ
    for name in ("mediffusion.png", "model/model.safetensors", "seeds/seed1/log.txt"):
        assert (parallel / name).is_file(), name
    assert (serial / "model/model.safetensors").read_bytes() == (parallel / "model/model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "mediffusion", "--workers", "0"])
    assert error.value.code == 2 and "--workers must be >= 1" in capsys.readouterr().err
