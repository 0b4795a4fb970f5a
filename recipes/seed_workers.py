"""Run a recipe's seeds in parallel worker processes, one seed each.

A recipe's run is one thread of small tensors per seed, so a machine's other cores sit idle while
the seeds run one after another. Here every seed runs in its own process::

    python -m <recipe module> <the same settings> --seeds S --workers 1 --out <out>/seeds/seed<S>

at most ``workers`` at a time, each writing its result JSON and ``log.txt`` (its stdout and stderr)
in ``<out>/seeds/seed<S>``; the caller merges the results. A failed worker stops the others and
raises ``SystemExit`` naming its seed, exit status and the tail of its log.

The recipe's parser needs ``--seeds`` (ints), ``--workers`` and ``--out``; every other option is
repeated for the worker with its parsed value spelled out (so defaults a flag like ``--quick``
changed carry over without the flag). Options only the parent handles (e.g. ``--push-to``) are
named in ``parent_only``; flags every worker gets (e.g. ``--no-progress``) in ``extra``.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> for flag, kind in (("--seeds", int), ("--out", str), ("--workers", int), ("--lr", float)):
...     _ = p.add_argument(flag, type=kind, nargs="+" if flag == "--seeds" else None)
>>> worker_argv(p, p.parse_args(["--seeds", "0", "1", "--lr", "0.01"]), 1, "out/seeds/seed1")
['--lr', '0.01', '--seeds', '1', '--workers', '1', '--out', 'out/seeds/seed1']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["SeedWorkers", "add_workers_argument", "default_workers", "worker_argv", "seed_folder"]

#: options every worker gets from the parent itself (one seed, one worker, its own folder)
_ALWAYS_PARENT = frozenset({"help", "seeds", "out", "workers"})


def default_workers(seeds: int, threads: int = 1) -> int:
    """One process per seed, at most twice the usable cores (with 3 seeds on 2 cores all three share
    both cores to the end instead of the third seed running alone on one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(seeds, 2 * max(1, cores // max(1, threads))))


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """A recipe's ``--workers`` option (default ``None``: :func:`default_workers`)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="seeds run at once, each in its own process (default: one per seed, at most twice the cores; "
        "1: one after another in this process)",
    )


def seed_folder(out: str | Path, seed: int) -> Path:
    """Where the worker of ``seed`` writes: ``<out>/seeds/seed<S>``."""
    return Path(out) / "seeds" / f"seed{seed}"


def worker_argv(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    seed: int,
    out: str | Path,
    parent_only: Iterable[str] = (),
    extra: Iterable[str] = (),
) -> list[str]:
    """Command-line flags that repeat every setting of ``args`` for one seed written to ``out``."""
    skip = _ALWAYS_PARENT | set(parent_only)
    argv: list[str] = []
    for action in parser._actions:
        if action.dest in skip or not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse.BooleanOptionalAction):
            argv += [f"--{'' if value else 'no-'}{action.option_strings[0].removeprefix('--')}"]
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true
            argv += [flag] if value else []
        elif isinstance(value, list | tuple):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]  # str(float) reads back to the same float
    return [*argv, *extra, "--seeds", str(seed), "--workers", "1", "--out", str(out)]


@dataclass
class _Worker:
    seed: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float

    def tail(self, lines: int = 25) -> str:
        text = (self.folder / "log.txt").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class SeedWorkers:
    """The seeds of ``python -m <module>`` in worker processes.

    ``result``: the JSON file name each worker writes in its folder. ``finished_units(record)``: a
    finer progress bar, read from the JSON a worker rewrites as it goes (``progress_file``, default
    its partial result: e.g. the sequences it has finished; :meth:`run`'s ``units_per_seed`` of
    them make a seed); without it the bar counts seeds. ``describe(record)``: a line
    printed when a seed finishes."""

    module: str
    result: str
    progress_file: str | None = None
    parent_only: frozenset[str] = frozenset()
    extra: tuple[str, ...] = ()
    unit: str = "seed"
    finished_units: Callable[[dict[str, Any]], int] | None = None
    describe: Callable[[dict[str, Any]], str] = field(default=lambda record: "")

    def run(
        self,
        parser: argparse.ArgumentParser,
        args: argparse.Namespace,
        out: Path,
        workers: int,
        progress: bool = True,
        units_per_seed: int = 1,
    ) -> list[Path]:
        """Run each of ``args.seeds`` in its own process, at most ``workers`` at a time; returns
        their result paths in the order of ``args.seeds``."""
        if len(set(args.seeds)) != len(args.seeds):
            raise SystemExit(
                f"--seeds {args.seeds} repeats a seed: with --workers > 1 each seed runs once, in its own folder"
            )
        pending, running, done = list(args.seeds), [], {}
        total = len(args.seeds) * units_per_seed
        bar = tqdm(total=total, desc="seed workers", unit=self.unit, disable=not progress)
        try:
            while pending or running:
                while pending and len(running) < workers:
                    running.append(self._start(parser, args, pending.pop(0), out))
                for w in list(running):
                    code = w.process.poll()
                    if code is None:
                        continue
                    running.remove(w)
                    w.log.close()
                    if code != 0:
                        _stop(running)
                        raise SystemExit(
                            f"{self.module}: the worker of seed {w.seed} failed (exit status {code}); the other "
                            f"workers were stopped. Last lines of {w.folder / 'log.txt'}:\n{w.tail()}"
                        )
                    done[w.seed] = w.folder / self.result
                    line = self.describe(json.loads(done[w.seed].read_text()))
                    tqdm.write(f"seed {w.seed}: done in {time.time() - w.started:.0f} s wall{line and ', ' + line}")
                finished = len(done) * units_per_seed + sum(self._partial(w) for w in running)
                if finished > bar.n:  # redrawn on progress only: a log file gets one line per unit
                    bar.update(finished - bar.n)
                time.sleep(0.2)
        except BaseException:  # KeyboardInterrupt too: leave no orphan workers
            _stop(running)
            raise
        finally:
            bar.close()
        return [done[s] for s in args.seeds]

    def argv(self, parser: argparse.ArgumentParser, args: argparse.Namespace, seed: int, out: str | Path) -> list[str]:
        """The flags the worker of ``seed`` is started with (:func:`worker_argv` with this recipe's
        ``parent_only`` and ``extra``)."""
        return worker_argv(parser, args, seed, out, self.parent_only, self.extra)

    def _partial(self, worker: _Worker) -> int:
        if self.finished_units is None:
            return 0
        try:
            return self.finished_units(json.loads((worker.folder / (self.progress_file or self.result)).read_text()))
        except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
            return 0

    def _start(self, parser: argparse.ArgumentParser, args: argparse.Namespace, seed: int, out: Path) -> _Worker:
        folder = seed_folder(out, seed)
        folder.mkdir(parents=True, exist_ok=True)
        for name in {self.result, self.progress_file or self.result}:  # a rerun's progress starts from zero
            (folder / name).unlink(missing_ok=True)
        log = (folder / "log.txt").open("wb")
        command = [sys.executable, "-m", self.module, *self.argv(parser, args, seed, folder)]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return _Worker(seed, folder, process, log, time.time())


def _stop(running: list[_Worker]) -> None:
    for w in running:
        w.process.terminate()
    for w in running:
        w.process.wait()
        w.log.close()
    running.clear()
