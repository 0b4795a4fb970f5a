"""Harvesting one early layer of a deep model, with and without ``attach(..., stop=True)``.

A 24-layer GPT-2 built from config (random weights, 1 x 128 tokens), layer 2 cached: the forward
without stop pays for 22 more layers. Interleaved rounds, CPU time, one thread, medians.

    taskset -c 1 python -m benchmarks.early_stop [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main(rounds: int = 15) -> dict[str, float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from interventions import Cache, attach

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=256, n_head=8, vocab_size=1000)).eval()
    ids = torch.randint(0, 1000, (1, 128))

    def harvest(stop: bool) -> torch.Tensor:
        cache = Cache()
        with torch.no_grad(), attach(model, {"transformer.h.2": cache}, stop=stop):
            model(ids)
        return cache["transformer.h.2"]

    assert torch.equal(harvest(True), harvest(False))  # the same activations either way
    times: dict[str, list[float]] = {"full forward": [], "stop=True": []}
    for _ in range(rounds):
        for name, stop in (("full forward", False), ("stop=True", True)):
            start = time.process_time_ns()
            harvest(stop)
            times[name].append((time.process_time_ns() - start) / 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>13}: {v:7.2f} ms")
    print(f"stop=True takes {med['stop=True'] / med['full forward']:.2f}x the full forward's time (3/24 layers run)")
    return med


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
