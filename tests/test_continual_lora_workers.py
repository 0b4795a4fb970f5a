"""``interventions run continual_lora --workers N``: seeds in parallel worker processes give the
in-process run's outputs bit for bit; a failing worker stops the run with its seed and log tail."""

from __future__ import annotations

import json

import pytest

from interventions import cli
from recipes.continual_lora.run import parser
from recipes.continual_lora.workers import WORKERS
from recipes.seed_workers import default_workers

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--tasks", "2", "--steps", "2", "--batch", "2", "--instances", "4", "--class-images", "2", "--samples", "2"]
TINY += [
    "--eval-steps",
    "2",
    "--methods",
    "naive",
    "magmax",
    "--targets",
    "cross_kv",
    "--seeds",
    "0",
    "1",
    "--no-progress",
]


def test_worker_argv_repeats_every_setting_for_one_seed(monkeypatch):
    p = parser()
    p.set_defaults(tasks=2, seeds=[0], steps=30, samples=8)  # what --quick does
    args = p.parse_args(["--lr", "0.0037", "--methods", "naive", "magmax", "--seeds", "3", "4", "--out", "o"])
    again = p.parse_args(WORKERS.argv(p, args, 4, "o/seeds/seed4"))
    expected = {**vars(args), "seeds": [4], "out": "o/seeds/seed4", "workers": 1, "no_progress": True}
    assert vars(again) == expected  # the float lr and --quick's defaults survive the round trip
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)  # a 2-core machine
    assert [default_workers(n) for n in (1, 2, 3, 9)] == [1, 2, 3, 4] and default_workers(9, threads=2) == 2


def test_parallel_seeds_equal_the_in_process_run(tmp_path, capsys):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert cli.main(["run", "continual_lora", *TINY, "--workers", "1", "--out", str(serial)]) == 0
    assert cli.main(["run", "continual_lora", *TINY, "--workers", "2", "--out", str(parallel)]) == 0
    assert "(2 workers)" in capsys.readouterr().out
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (serial, parallel))
    keys = ("method", "seed", "scores", "base", "forgetting", "final_average", "final_loss")
    assert [[r[k] for k in keys] for r in b["runs"]] == [[r[k] for k in keys] for r in a["runs"]]
    assert [r["seed"] for r in b["runs"]] == [0, 0, 1, 1] and b["summary"] == a["summary"]
    assert a["runs"][0]["final_loss"] != a["runs"][2]["final_loss"]  # the seeds differ: the equality says something
    assert len(b["cpu_seconds"]) == 2 and min(b["cpu_seconds"]) > 0
    # the same adapters, byte for byte, where the in-process run puts them; the same cards
    weights = sorted(p.relative_to(serial) for p in (serial / "adapters").rglob("*.safetensors"))
    assert len(weights) == 2 * 2 * 2  # methods x seeds x tasks
    assert weights == sorted(p.relative_to(parallel) for p in (parallel / "adapters").rglob("*.safetensors"))
    assert all((parallel / w).read_bytes() == (serial / w).read_bytes() for w in weights)
    for f in ("hub/naive/README.md", "hub/magmax/pytorch_lora_weights.safetensors", "hub/magmax/continual_lora.json"):
        assert (parallel / f).read_bytes() == (serial / f).read_bytes()
    assert (parallel / "continual_lora_matrices.png").stat().st_size > 1000
    assert sorted(p.name for p in (parallel / "seeds" / "seed1").iterdir()) == [
        "continual_lora_matrices.png",
        "log.txt",
        "metrics.json",
    ]


def test_a_failing_worker_names_its_seed_and_error(tmp_path):
    (tmp_path / "empty").mkdir()
    argv = [*TINY, "--workers", "2", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as failed:
        cli.main(["run", "continual_lora", *argv])
    message = str(failed.value)
    assert "the worker of seed 0 failed (exit status 1)" in message or "the worker of seed 1 failed" in message
    assert "scheduler_config.json" in message  # the worker's own error, from its log
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(SystemExit, match="--workers must be >= 1"):
        cli.main(["run", "continual_lora", "--workers", "0"])
    with pytest.raises(SystemExit, match="repeats a seed"):
        cli.main(["run", "continual_lora", "--seeds", "2", "2", "--workers", "2"])
