"""A plain-loop check of the session-entry benchmark (``hook_overhead.bench_enter``): enter and
leave ``attach`` with 20 Cache sites on the tiny UNet, N times in a row, against registering and
removing 20 hooks on modules already in hand and with ``get_submodule`` resolution, a session
entered again after its block ended, and an empty session. Medians of CPU time per enter over interleaved rounds; one thread.

    taskset -c 1 python -m benchmarks.enter_loop [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from interventions import Cache, attach


def main(
    rounds: int = 20,
    per_round: int = 50,
    unet: torch.nn.Module | None = None,
    sites: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, float]:
    """Median CPU µs per enter of each variant. ``benchmarks.run`` passes its UNet and sites and
    reports the result next to the interleaved figures it confirms."""
    torch.set_num_threads(1)
    if unet is None:
        from tests.tiny_models import sd_pipeline

        unet = sd_pipeline().unet
    if sites is None:
        kinds = ("Attention", "FeedForward", "ResnetBlock2D")
        sites = [n for n, m in unet.named_modules() if type(m).__name__ in kinds][:20]
    modules = [unet.get_submodule(s) for s in sites]
    hooks = {s: Cache() for s in sites}

    def fn(m: object, a: object, o: object) -> None:
        return None

    def raw_resolved() -> None:
        handles = [m.register_forward_hook(fn) for m in modules]
        for h in handles:
            h.remove()

    def raw_get_submodule() -> None:
        handles = [unet.get_submodule(s).register_forward_hook(fn) for s in sites]
        for h in handles:
            h.remove()

    def ours() -> None:
        with attach(unet, hooks, on_unfired="ignore"):
            pass

    prepared = attach(unet, hooks, on_unfired="ignore")
    prepared.remove()

    def reentered() -> None:
        with prepared:
            pass

    def empty() -> None:
        with attach(unet, {}, on_unfired="ignore"):
            pass

    variants: dict[str, Callable[[], None]] = {
        "raw_resolved": raw_resolved,
        "raw_get_submodule": raw_get_submodule,
        "interventions": ours,
        "reentered": reentered,
        "empty": empty,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, f in variants.items():
            start = time.process_time_ns()
            for _ in range(per_round):
                f()
            times[name].append((time.process_time_ns() - start) / per_round / 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    if quiet:
        return med
    for k, v in med.items():
        print(f"{k:>18}: {v:7.1f} us")
    print(
        f"interventions = {med['interventions'] / med['raw_resolved']:.2f}x raw on resolved modules, "
        f"{med['interventions'] / med['raw_get_submodule']:.2f}x raw with get_submodule; a session entered again "
        f"(its sites resolved): {med['reentered'] / med['raw_resolved']:.2f}x raw on resolved modules"
    )
    return med


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
