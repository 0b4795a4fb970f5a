"""Interleaved, paired timing: every round runs every variant once, in a shuffled order, and a
variant's overhead is the median over rounds of (its time - the plain baseline's time in the same
round). Pairing within a round cancels slow drifts of a shared, noisy machine; the median drops
the rounds where a neighbour stole the core.

The clock is the process's CPU time (``time.process_time_ns``, all threads of this process), not
wall time: on a shared core, wall time counts the milliseconds another process ran while we
waited, CPU time does not. Wall-clock statistics are kept beside it (``wall_*``)."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def pin_one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 2,
    baseline: str = "plain",
    seed: int = 0,
    time_budget_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """Time each variant ``rounds`` times, interleaved; return per-variant statistics (seconds).

    ``median``: median time; ``delta``: median of per-round differences to ``baseline``;
    ``delta_p25``/``delta_p75``: their quartiles; ``rounds``: rounds actually run (a time budget
    may stop early, never below 5 rounds).
    """
    rng = random.Random(seed)
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpu = time.process_time_ns
    start = time.perf_counter()
    for r in range(rounds):
        order = names[:]
        rng.shuffle(order)
        gc.collect()
        for n in order:
            fn = variants[n]
            w0 = time.perf_counter_ns()
            t0 = cpu()
            fn()
            t1 = cpu()
            samples[n].append((t1 - t0) * 1e-9)
            walls[n].append((time.perf_counter_ns() - w0) * 1e-9)
        if time_budget_s is not None and r >= 4 and time.perf_counter() - start > time_budget_s:
            break
    out: dict[str, dict[str, float]] = {}
    for n in names:
        st: dict[str, float] = {"rounds": len(samples[n])}
        for prefix, data in (("", samples), ("wall_", walls)):
            s, base = data[n], data.get(baseline)
            st[prefix + "median"] = statistics.median(s)
            if base is not None:
                d = sorted(a - b for a, b in zip(s, base, strict=True))
                st[prefix + "delta"] = statistics.median(d)
                st[prefix + "delta_p25"] = d[len(d) // 4]
                st[prefix + "delta_p75"] = d[(3 * len(d)) // 4]
        out[n] = st
    return out
