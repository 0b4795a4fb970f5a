"""Speed: events per second of the calorimeter GAN generators against the Monte-Carlo simulator.

::

    python -m benchmarks.bench_calorimeter_gan [--generator runs/sdi_gan/generator] [--events 4000]

Both sides get the same held-out conditions, one thread (``torch.set_num_threads(1)``), and are
timed interleaved (MC, SDI-GAN, ExpertSim, MC, ...) on the process CPU clock, median over rounds
(a shared machine steals wall time, not CPU time; wall time is reported too). The generators'
cost does not depend on their weights: without ``--generator`` / ``--mixture`` freshly
initialised ones of the recipes' sizes are timed. The simulator's cost grows with the number of
photons, so the ratio is also given per intensity regime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from recipes.gan.models import Generator, MixtureGenerator
from recipes.worlds.calorimeter import REGIMES, regime_of, sample_conditions, simulate


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def bench(conditions: torch.Tensor, samplers: dict[str, Callable[[torch.Tensor], object]], rounds: int) -> dict:
    cpu: dict[str, list[float]] = {k: [] for k in samplers}
    wall: dict[str, list[float]] = {k: [] for k in samplers}
    for fn in samplers.values():  # warm-up
        fn(conditions[:64])
    for _ in range(rounds):
        for name, fn in samplers.items():
            c, w = timed(lambda fn=fn: fn(conditions))
            cpu[name].append(c)
            wall[name].append(w)
    n = conditions.shape[0]
    return {
        name: {
            "events_per_s_cpu": n / statistics.median(cpu[name]),
            "events_per_s_wall": n / statistics.median(wall[name]),
            "ms_per_event_cpu": 1e3 * statistics.median(cpu[name]) / n,
        }
        for name in samplers
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="generator batch size")
    parser.add_argument("--generator", help="folder of a saved SDI-GAN generator (default: fresh weights)")
    parser.add_argument("--mixture", help="folder of a saved ExpertSim generator (default: fresh weights)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cond = sample_conditions(args.events, torch.Generator().manual_seed(123))
    if args.generator or args.mixture:
        from recipes.gan.hub import load_generator
    gen = load_generator(args.generator) if args.generator else Generator()
    moe = load_generator(args.mixture) if args.mixture else MixtureGenerator(3)
    if not args.generator:
        gen.encoder.fit(cond)
    if not args.mixture:
        for m in (moe.router.encoder, *(e.encoder for e in moe.experts)):
            m.fit(cond)
    gen.eval()
    moe.eval()
    mc_rng, g_rng = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    samplers = {
        "monte_carlo": lambda c: simulate(c, mc_rng),
        "sdi_gan": lambda c: gen.sample(c, g_rng, batch_size=args.batch_size),
        "expertsim": lambda c: moe.sample(c, g_rng, batch_size=args.batch_size),
    }
    result: dict = {"events": args.events, "threads": 1, "overall": bench(cond, samplers, args.rounds)}
    regimes = regime_of(cond)
    result["per_regime"] = {}
    for k, name in enumerate(REGIMES):
        sel = cond[regimes == k][: max(args.events // 4, 200)]
        if sel.shape[0]:
            result["per_regime"][name] = bench(sel, samplers, args.rounds)
    for scope, table in [("overall", result["overall"]), *result["per_regime"].items()]:
        mc = table["monte_carlo"]["events_per_s_cpu"]
        line = ", ".join(
            f"{k} {v['events_per_s_cpu']:.0f}/s ({v['events_per_s_cpu'] / mc:.1f}x MC)" for k, v in table.items()
        )
        print(f"{scope:>8}: {line}")
        for v in table.values():
            v["speedup_vs_mc_cpu"] = v["events_per_s_cpu"] / mc
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
