"""Speed: events per second of the calorimeter GAN generators against the Monte-Carlo simulator.

::

    python -m benchmarks.bench_calorimeter_gan [--generator runs/sdi_gan/generator] [--events 4000]

Both sides get the same held-out conditions, one thread (``torch.set_num_threads(1)``), and are
timed interleaved (MC, SDI-GAN, ExpertSim, MC, ...) on the process CPU clock, median over rounds
(a shared machine steals wall time, not CPU time; wall time is reported too). The generators'
cost does not depend on their weights: without ``--generator`` / ``--mixture`` freshly
initialised ones of the recipes' sizes are timed. The simulator's cost grows with the number of
photons, so the ratio is also given per intensity regime.

``--device cuda`` runs the generators on a GPU (the papers' setting: GEANT4 on a CPU core against
the generator on a GPU); their speed is then wall time after ``torch.accelerator.synchronize()``,
the simulator stays on one CPU thread, and the ratios are of wall times. A short run there::

    python -m benchmarks.bench_calorimeter_gan --device cuda --events 20000 --batch-size 20000 \
        --rounds 5 --out calorimeter_gan_speed_cuda.json

(the simulator's side takes ~1 minute of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from recipes.gan.models import Generator, MixtureGenerator
from recipes.gan.trainer import GanConfig
from recipes.worlds.calorimeter import REGIMES, regime_of, sample_conditions, simulate


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def bench(
    conditions: torch.Tensor, samplers: dict[str, Callable[[torch.Tensor], object]], rounds: int, basis: str = "cpu"
) -> dict:
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
    table = {
        name: {
            "events_per_s_cpu": n / statistics.median(cpu[name]),
            "events_per_s_wall": n / statistics.median(wall[name]),
            "ms_per_event_cpu": 1e3 * statistics.median(cpu[name]) / n,
        }
        for name in samplers
    }
    mc = table["monte_carlo"][f"events_per_s_{basis}"]
    for v in table.values():
        v["speedup_vs_mc"] = v[f"events_per_s_{basis}"] / mc
    return table


def macs_per_event(model: Generator, conditions: torch.Tensor) -> float:
    """Multiply-accumulates per generated event of ``model``'s linear and (transposed) conv layers,
    counted from their shapes in one forward pass (with gradients: the training layout)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.ConvTranspose2d):  # every input pixel scatters a full kernel
            total += inputs[0].numel() * module.out_channels * module.weight[0, 0].numel()
        elif isinstance(module, nn.Conv2d):
            total += output.numel() * module.weight[0].numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        n = conditions.shape[0]
        model(torch.randn(n, model.noise_dim), conditions)
    finally:
        for h in handles:
            h.remove()
    return total / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="generator batch size")
    parser.add_argument("--generator", help="folder of a saved SDI-GAN generator (default: fresh weights)")
    parser.add_argument("--mixture", help="folder of a saved ExpertSim generator (default: fresh weights)")
    parser.add_argument("--device", default="cpu", help="where the generators run (default cpu; e.g. cuda)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    basis = "cpu" if device.type == "cpu" else "wall"
    cond = sample_conditions(args.events, torch.Generator().manual_seed(123))
    if args.generator or args.mixture:
        from recipes.gan.hub import load_generator
    cfg = GanConfig()  # the recipes' sizes: generator width 8, noise 10
    gen = load_generator(args.generator) if args.generator else Generator(cfg.noise_dim, cfg.width, cfg.shape)
    moe = load_generator(args.mixture) if args.mixture else MixtureGenerator(3, cfg.noise_dim, cfg.width, cfg.shape)
    if not args.generator:
        gen.encoder.fit(cond)
    if not args.mixture:
        for m in (moe.router.encoder, *(e.encoder for e in moe.experts)):
            m.fit(cond)
    macs = macs_per_event(gen, cond[:16])
    gen.eval().to(device)
    moe.eval().to(device)
    mc_rng, g_rng = torch.Generator().manual_seed(0), torch.Generator(device).manual_seed(1)

    def on_device(model: Generator | MixtureGenerator) -> Callable[[torch.Tensor], object]:
        def sample(c: torch.Tensor) -> torch.Tensor:
            images = model.sample(c.to(device), g_rng, batch_size=args.batch_size)
            if device.type != "cpu":  # kernels run asynchronously: wait for them inside the timing
                torch.accelerator.synchronize(device)
            return images

        return sample

    samplers = {"monte_carlo": lambda c: simulate(c, mc_rng), "sdi_gan": on_device(gen), "expertsim": on_device(moe)}
    result: dict = {
        "events": args.events,
        "threads": 1,
        "generator_device": str(device),
        "speedup_basis": basis,
        "overall": bench(cond, samplers, args.rounds, basis),
    }
    regimes = regime_of(cond)
    result["per_regime"] = {}
    for k, name in enumerate(REGIMES):
        sel = cond[regimes == k][: max(args.events // 4, 200)]
        if sel.shape[0]:
            result["per_regime"][name] = bench(sel, samplers, args.rounds, basis)
    for scope, table in [("overall", result["overall"]), *result["per_regime"].items()]:
        line = ", ".join(
            f"{k} {v[f'events_per_s_{basis}']:.0f}/s ({v['speedup_vs_mc']:.1f}x MC)" for k, v in table.items()
        )
        print(f"{scope:>8}: {line} ({basis} time)")
    overall = result["overall"]
    achieved = 2 * macs * overall["sdi_gan"][f"events_per_s_{basis}"] / 1e9
    needed = 2 * macs * 100 * overall["monte_carlo"][f"events_per_s_{basis}"] / 1e9
    result["generator_mflop_per_event"] = 2 * macs / 1e6
    result["generator_gflop_per_s"] = achieved
    result["gflop_per_s_for_100x"] = needed
    print(
        f"SDI-GAN generator: {2 * macs / 1e6:.2f} MFLOP per event, {achieved:.1f} GFLOP/s achieved; "
        f"100x the simulator would take {needed:.0f} GFLOP/s on {device}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
