"""The seeds of ``interventions run continual_lora`` in parallel worker processes
(:mod:`recipes.seed_workers`), one seed each, and where their adapters go afterwards.

Each worker writes its ``metrics.json``, matrices PNG and ``log.txt`` in ``<out>/seeds/seed<S>``;
:func:`collect_adapters` then moves their adapters to where the in-process run puts them
(``<out>/adapters/<method>/seed<S>/task<t>``), and the caller merges the seeds' metrics.

>>> from recipes.continual_lora.run import parser
>>> p = parser()
>>> WORKERS.argv(p, p.parse_args(["--steps", "5", "--seeds", "0", "1"]), 1, "out/seeds/seed1")[-9:]
['--threads', '1', '--no-progress', '--seeds', '1', '--workers', '1', '--out', 'out/seeds/seed1']
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recipes.seed_workers import SeedWorkers, seed_folder

__all__ = ["WORKERS", "collect_adapters"]

#: Seeds of ``python -m recipes.continual_lora.run``; progress counted in finished sequences.
WORKERS = SeedWorkers(
    module="recipes.continual_lora.run",
    result="metrics.json",
    parent_only=frozenset({"push_to", "merge", "quick", "no_progress"}),
    extra=("--no-progress",),
    unit="seq",
    finished_units=lambda record: len(record["runs"]),
    describe=lambda record: f"{len(record['runs'])} sequences, {record.get('cpu_seconds', float('nan')):.0f} s CPU",
)


def collect_adapters(out: Path, seeds: list[int]) -> None:
    """Move each worker's adapters to ``<out>/adapters/<method>/seed<S>`` (the in-process layout) and
    drop its card folders (the parent writes ``<out>/hub`` from the merged run)."""
    for seed in seeds:
        folder = seed_folder(out, seed)
        for method in sorted((folder / "adapters").iterdir()):
            target = out / "adapters" / method.name / f"seed{seed}"
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(method / f"seed{seed}", target)
        shutil.rmtree(folder / "adapters")
        shutil.rmtree(folder / "hub", ignore_errors=True)
