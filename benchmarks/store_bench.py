"""Activation store: caching many steps to ``DiskStore`` shards against a plain
``safetensors.torch.save_file`` of the same tensors, and peak memory while the cached total is many
times the memory budget.

One process, one thread, variants interleaved in shuffled rounds. Peak memory is read from the
kernel's high-water mark (VmHWM), reset before each variant (``/proc/self/clear_refs``) after
handing freed memory back (``malloc_trim``, and a fixed mmap threshold set at process start). Every tensor is a fresh one (a clone of a small pool, as hooks produce
fresh activations), keyed (site, step, branch) like ``Cache`` keys. Variants:

  produce        make the tensors only (the producer's own cost, for reference)
  diskstore      DiskStore(buffer_bytes=budget).put(key, t) for each, flush() at the end
  st_one_file    collect everything in a dict, one save_file at the end (plain; unbounded memory)
  st_shards      collect up to the budget, save_file a shard, clear (a hand-written bounded floor)

Throughput = bytes cached / time (process CPU time, user + system, and wall time, both kept);
peak memory = peak RSS minus RSS just before the loop.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKLOADS = {
    # name: (sites, steps, shape, budget bytes)
    "large": (20, 15, (1, 320, 32, 32), 64 << 20),  # 600 x 1.25 MiB = 750 MiB, budget 64 MiB
    "small": (20, 250, (1, 64, 16), 4 << 20),  # 10000 x 4 KiB = 39 MiB, budget 4 MiB
}
QUICK = {
    "large": (20, 5, (1, 320, 32, 32), 64 << 20),  # 250 MiB
    "small": (20, 50, (1, 64, 16), 1 << 20),  # 7.8 MiB
}
VARIANTS = ("produce", "diskstore", "st_one_file", "st_shards")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Return freed memory to the OS, reset the peak-RSS mark (VmHWM); return RSS in bytes."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def _one(variant: str, sites: int, steps: int, shape: tuple[int, ...], budget: int, folder: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from interventions import DiskStore

    g = torch.Generator().manual_seed(0)
    pool = [torch.randn(*shape, generator=g) for _ in range(4)]
    keys = [
        (f"unet.site_{s}", step, branch) for step in range(steps) for s in range(sites) for branch in ("uncond", "cond")
    ]
    nbytes = pool[0].nbytes * len(keys)
    name = lambda k: json.dumps(list(k))  # noqa: E731  (DiskStore's own tensor naming)
    rss0 = _reset_peak()
    w0, c0 = time.perf_counter(), time.process_time()
    if variant == "produce":
        for i, _k in enumerate(keys):
            pool[i % 4].clone()
    elif variant == "diskstore":
        store = DiskStore(folder, buffer_bytes=budget)
        for i, k in enumerate(keys):
            store.put(k, pool[i % 4].clone())
        store.flush()
        del store
    elif variant == "st_one_file":
        everything = {}
        for i, k in enumerate(keys):
            everything[name(k)] = pool[i % 4].clone()
        save_file(everything, os.path.join(folder, "all.safetensors"))
        del everything
    elif variant == "st_shards":
        buf: dict[str, Any] = {}
        size, shard = 0, 0
        for i, k in enumerate(keys):
            t = pool[i % 4].clone()
            buf[name(k)] = t
            size += t.nbytes
            if size >= budget:
                save_file(buf, os.path.join(folder, f"shard-{shard:05d}.safetensors"))
                buf, size, shard = {}, 0, shard + 1
        if buf:
            save_file(buf, os.path.join(folder, f"shard-{shard:05d}.safetensors"))
        del buf
    else:
        raise ValueError(variant)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = _status_kib("VmHWM") * 1024
    on_disk = sum(p.stat().st_size for p in Path(folder).iterdir())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "bytes": nbytes,
        "entries": len(keys),
        "peak_rss_delta": peak - rss0,
        "on_disk": on_disk,
    }


def run(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    plan = QUICK if quick else WORKLOADS
    rounds = rounds or (1 if quick else 3)
    rng = random.Random(0)
    out: dict[str, Any] = {}
    for wname, (sites, steps, shape, budget) in plan.items():
        samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            order = list(VARIANTS)
            rng.shuffle(order)
            for v in order:
                folder = tempfile.mkdtemp(prefix="bench-store-")
                try:
                    samples[v].append(_one(v, sites, steps, shape, budget, folder))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        w: dict[str, Any] = {
            "sites": sites,
            "steps": steps,
            "branches": 2,
            "shape": list(shape),
            "budget_bytes": budget,
            "rounds": rounds,
            "variants": {},
        }
        for v, ss in samples.items():
            nbytes = ss[0]["bytes"]
            cpu, wall = statistics.median(s["cpu_s"] for s in ss), statistics.median(s["wall_s"] for s in ss)
            w["bytes"], w["entries"] = nbytes, ss[0]["entries"]
            w["variants"][v] = {
                "cpu_s": cpu,
                "wall_s": wall,
                "mib_per_cpu_s": nbytes / cpu / 2**20,
                "mib_per_wall_s": nbytes / wall / 2**20,
                "peak_rss_delta_mib": max(s["peak_rss_delta"] for s in ss) / 2**20,
                "on_disk_mib": ss[0]["on_disk"] / 2**20,
            }
        out[wname] = w
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        # a fixed mmap threshold: freed tensors go back to the OS, so each variant's peak RSS is its own
        os.execve(
            sys.executable,
            [sys.executable, "-m", "benchmarks.store_bench", *sys.argv[1:]],
            {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
    res = run(args.quick)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
