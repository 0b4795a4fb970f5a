"""Run the seeds of ``interventions run continual_lora`` in parallel worker processes, one seed each.

A continual run is one thread of small tensors per seed, so a machine's other cores sit idle while
the seeds run one after another; here every seed runs in its own process::

    python -m recipes.continual_lora.run <the same settings> --seeds S --workers 1 --out <out>/seeds/seed<S>

at most ``workers`` at a time, each writing its ``metrics.json``, matrices PNG and ``log.txt`` (its
stdout and stderr) in ``<out>/seeds/seed<S>``. When all have finished, :func:`collect_adapters` moves
their adapters to where the in-process run puts them (``<out>/adapters/<method>/seed<S>/task<t>``),
and the caller merges the seeds' metrics (``--merge``). A failed worker stops the others and raises
``SystemExit`` naming its seed, exit status and the tail of its log.

>>> from recipes.continual_lora.run import parser
>>> p = parser()
>>> worker_argv(p, p.parse_args(["--steps", "5", "--seeds", "0", "1"]), 1, "out/seeds/seed1")[-9:]
['--threads', '1', '--no-progress', '--seeds', '1', '--workers', '1', '--out', 'out/seeds/seed1']
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

__all__ = ["default_workers", "worker_argv", "run_seeds", "collect_adapters"]

# options the parent handles itself (or sets per worker)
_PARENT_ONLY = {"help", "seeds", "out", "workers", "push_to", "merge", "quick", "no_progress"}


def default_workers(seeds: int, threads: int = 1) -> int:
    """One process per seed, at most twice the usable cores (each process ~0.7 GB): with 3 seeds on
    2 cores all three share both cores to the end instead of the third seed running alone on one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(seeds, 2 * max(1, cores // max(1, threads))))


def worker_argv(parser: argparse.ArgumentParser, args: argparse.Namespace, seed: int, out: str | Path) -> list[str]:
    """Command-line flags that repeat every setting of ``args`` for one seed written to ``out``
    (all values spelled out, so ``--quick``'s defaults carry over without ``--quick``)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.dest in _PARENT_ONLY or not action.option_strings:
            continue
        flag, value = max(action.option_strings, key=len), getattr(args, action.dest)
        if action.nargs == 0:  # store_true
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]  # str(float) reads back to the same float
    return [*argv, "--no-progress", "--seeds", str(seed), "--workers", "1", "--out", str(out)]


@dataclass
class _Worker:
    seed: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float

    def finished_sequences(self) -> int:
        try:
            return len(json.loads((self.folder / "metrics.json").read_text())["runs"])
        except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
            return 0

    def tail(self, lines: int = 25) -> str:
        text = (self.folder / "log.txt").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def run_seeds(
    parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path, workers: int, progress: bool = True
) -> list[Path]:
    """Run each of ``args.seeds`` in its own process, at most ``workers`` at a time; returns their
    ``metrics.json`` paths in the order of ``args.seeds``."""
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(
            f"--seeds {args.seeds} repeats a seed: with --workers > 1 each seed runs once, in its own folder"
        )
    pending, running, done = list(args.seeds), [], {}
    bar = tqdm(total=len(args.seeds) * len(args.methods), desc="sequences", unit="seq", disable=not progress)
    try:
        while pending or running:
            while pending and len(running) < workers:
                running.append(_start(parser, args, pending.pop(0), out))
            for w in list(running):
                code = w.process.poll()
                if code is None:
                    continue
                running.remove(w)
                w.log.close()
                if code != 0:
                    _stop(running)
                    raise SystemExit(
                        f"continual_lora: the worker of seed {w.seed} failed (exit status {code}); the other workers "
                        f"were stopped. Last lines of {w.folder / 'log.txt'}:\n{w.tail()}"
                    )
                done[w.seed] = w.folder / "metrics.json"
                record = json.loads(done[w.seed].read_text())
                tqdm.write(
                    f"seed {w.seed}: {len(record['runs'])} sequences in {time.time() - w.started:.0f} s wall, "
                    f"{record.get('cpu_seconds', float('nan')):.0f} s CPU"
                )
            finished = len(done) * len(args.methods) + sum(w.finished_sequences() for w in running)
            if finished != bar.n:  # redrawn on progress only: a log file gets one line per sequence
                bar.update(finished - bar.n)
            time.sleep(0.2)
    except BaseException:  # KeyboardInterrupt too: leave no orphan workers
        _stop(running)
        raise
    finally:
        bar.close()
    return [done[s] for s in args.seeds]


def _start(parser: argparse.ArgumentParser, args: argparse.Namespace, seed: int, out: Path) -> _Worker:
    folder = out / "seeds" / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").unlink(missing_ok=True)  # a rerun's progress starts from zero
    log = (folder / "log.txt").open("wb")
    command = [sys.executable, "-m", "recipes.continual_lora.run", *worker_argv(parser, args, seed, folder)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return _Worker(seed, folder, process, log, time.time())


def _stop(running: list[_Worker]) -> None:
    for w in running:
        w.process.terminate()
    for w in running:
        w.process.wait()
        w.log.close()
    running.clear()


def collect_adapters(out: Path, seeds: list[int]) -> None:
    """Move each worker's adapters to ``<out>/adapters/<method>/seed<S>`` (the in-process layout) and
    drop its card folders (the parent writes ``<out>/hub`` from the merged run)."""
    for seed in seeds:
        folder = out / "seeds" / f"seed{seed}"
        for method in sorted((folder / "adapters").iterdir()):
            target = out / "adapters" / method.name / f"seed{seed}"
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(method / f"seed{seed}", target)
        shutil.rmtree(folder / "adapters")
        shutil.rmtree(folder / "hub", ignore_errors=True)
