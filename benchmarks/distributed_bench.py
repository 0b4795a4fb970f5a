"""Distributed SAE training throughput: tokens/s with 1 and 2 processes (gloo, CPU), the bytes a
rank hands to the collectives per step (measured by a DDP communication hook), and the scaling
that those bytes imply on N GPUs.

Configurations: 1 process; 2 processes; 2 processes all-reducing bfloat16 gradients.

``python -m benchmarks.distributed_bench [--quick]`` writes ``results/distributed{,_quick}.{json,md}``.

Data: the synthetic sparse mixture of ``benchmarks.sae_training`` (512 directions in 64 dims, 8
active per token), harvested through :func:`interventions.distributed.harvest` (an identity
module's output, 1,024 tokens per input, 4 inputs per shard), so training reads real harvest
shards. Each configuration runs ``interventions.distributed.train_sae_distributed`` (TopK,
d_sae 256, k 16, batch 1,024 per rank) in freshly spawned processes, one thread each; tokens/s is
the steady state: all ranks' tokens between step ``WARM`` and the last step over the wall time
between them (process start, imports and the hold-out are excluded). Configurations are
interleaved in rounds; the median is reported. This machine has 2 cores shared with other
jobs: the load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
D_IN, D_SAE, K, BATCH, WARM = 64, 256, 16, 1024, 20
FULL = {"items": 128, "steps": 300, "rounds": 3}
QUICK = {"items": 32, "steps": 80, "rounds": 2}


def make_harvest(root: Path, items: int) -> None:
    import torch

    from benchmarks.sae_training import make_data
    from interventions.distributed import harvest

    data = Path(tempfile.mkdtemp()) / "acts.safetensors"
    make_data(items * BATCH, 16, data)
    from safetensors.torch import load_file

    train = load_file(str(data))["train"]
    model = torch.nn.Sequential(torch.nn.Identity())
    harvest(model, list(train.split(BATCH)), "0", root, items_per_shard=4, progress=False)


def _rank(rank: int, world: int, port: int, root: str, steps: int, out: str, bf16: bool) -> None:
    """One rank: train, and record the wall time at every step and the bytes of the last one."""
    import torch
    import torch.distributed as dist

    from interventions.distributed import DDPSync, train_sae_distributed
    from interventions.sae_train import TrainConfig

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)

    class Timed(DDPSync):
        """Records, after every step, the wall clock, this process's CPU time and the wall time
        spent so far inside the collectives (communication plus waiting for the other rank)."""

        times: list[tuple[float, float, float]] = []
        in_comm = 0.0

        def _timed(self, fn: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.in_comm += time.perf_counter() - start

        def gradients(self, sae: Any) -> None:
            self._timed(super().gradients, sae)

        def step_stats(self, *args: Any) -> Any:
            return self._timed(super().step_stats, *args)

        def residual_variance(self, err: Any) -> Any:
            return self._timed(super().residual_variance, err)

        def step_done(self, state: Any, sae: Any, opt: Any) -> None:
            super().step_done(state, sae, opt)
            self.times.append((time.perf_counter(), time.process_time(), self.in_comm))

    sync = Timed(bf16_gradients=bf16)
    cfg = TrainConfig(
        steps=steps, batch_size=BATCH, lr=2e-3, shuffle_tokens=4 * BATCH, dead_tokens=100_000, progress=False
    )
    _, report = train_sae_distributed(root, d_sae=D_SAE, k=K, config=cfg, sync=sync)
    (wall0, cpu0, comm0), (wall1, cpu1, comm1) = sync.times[WARM], sync.times[-1]
    steps_timed = len(sync.times) - 1 - WARM
    result = {
        "steps_timed": steps_timed,
        "wall_s": wall1 - wall0,
        "cpu_s": cpu1 - cpu0,
        "comm_s": comm1 - comm0,
        "bytes_per_step": sync.bytes_per_step,
        "fvu": report.fvu,
    }
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def run_once(world: int, root: Path, steps: int, bf16: bool = False) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "result.json"
    mp.start_processes(_rank, args=(world, port, str(root), steps, str(out), bf16), nprocs=world, start_method="spawn")
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    n, tokens = ranks[0]["steps_timed"], ranks[0]["steps_timed"] * BATCH * world
    wall = max(r["wall_s"] for r in ranks)
    return {
        "tokens_per_s": tokens / wall,
        # the clock of the busiest process: what the run would take with a core to itself
        "tokens_per_cpu_s": tokens / max(r["cpu_s"] for r in ranks),
        "step_ms": 1000 * wall / n,
        "comm_ms_per_step": 1000 * max(r["comm_s"] for r in ranks) / n,
        "bytes_per_step": ranks[0]["bytes_per_step"],
        "fvu": ranks[0]["fvu"],
    }


def gradient_bytes(d_in: int, d_sae: int, width: int = 4) -> int:
    """The gradients of W_enc, W_dec, b_enc and b_dec (float32: 4 bytes, bf16: 2): what DDP
    all-reduces every step."""
    return width * (2 * d_in * d_sae + d_sae + d_in)


def projection(
    d_in: int, d_sae: int, batch: int, flops_per_s: float, bus_bytes_per_s: float, n: int, width: int = 4
) -> dict[str, float]:
    """Expected step time and efficiency on ``n`` GPUs with a ring all-reduce: compute ~8 d_in d_sae
    FLOPs per token (the encoder, its gradient, and the two dense decoder products of the TopK
    step), communication 2 (n-1)/n times the bytes over the bus bandwidth, not overlapped (the TopK
    step's gradients are all ready at its end)."""
    compute = 8 * d_in * d_sae * batch / flops_per_s
    comm = 2 * (n - 1) / n * gradient_bytes(d_in, d_sae, width) / bus_bytes_per_s
    return {"compute_ms": 1000 * compute, "comm_ms": 1000 * comm, "efficiency": compute / (compute + comm)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inputs, steps and rounds")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp()) / "harvest"
    make_harvest(root, plan["items"])
    load = [os.getloadavg()[0]]
    configs = {"1": (1, False), "2": (2, False), "2, bf16 gradients": (2, True)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for _ in range(plan["rounds"]):
        for name, (world, bf16) in configs.items():
            runs[name].append(run_once(world, root, plan["steps"], bf16))
            load.append(os.getloadavg()[0])
    summary = {
        world: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in rs),
            "step_ms": statistics.median(r["step_ms"] for r in rs),
            "comm_ms_per_step": statistics.median(r["comm_ms_per_step"] for r in rs),
            "bytes_per_step": rs[-1]["bytes_per_step"],
            "fvu": rs[-1]["fvu"],
            "all_tokens_per_s": [round(r["tokens_per_s"]) for r in rs],
        }
        for world, rs in runs.items()
    }
    measured = summary["2"]["bytes_per_step"]
    gpu = []
    for d_in, d_sae in ((2048, 32768), (4096, 65536)):
        b = gradient_bytes(d_in, d_sae)
        for batch in (4096, 16384):
            for name, bw in (("NVLink, 200 GB/s bus", 200e9), ("100 Gb/s network, 10 GB/s", 10e9)):
                row = {"d_in": d_in, "d_sae": d_sae, "batch_per_gpu": batch, "link": name, "bytes": b}
                p8 = projection(d_in, d_sae, batch, 4e14, bw, 8)
                half = projection(d_in, d_sae, batch, 4e14, bw, 8, width=2)["efficiency"]
                gpu.append({**row, **{k: round(v, 3) for k, v in p8.items()}, "efficiency_bf16": round(half, 3)})
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": [round(x, 2) for x in load],
        "config": {"d_in": D_IN, "d_sae": D_SAE, "k": K, "batch_per_rank": BATCH, **plan, "warm_steps": WARM},
        "measured": summary,
        "gradient_bytes_formula": gradient_bytes(D_IN, D_SAE),
        "statistics_bytes": measured - gradient_bytes(D_IN, D_SAE),
        "projection_8_gpus": gpu,
    }
    name = "distributed_quick" if args.quick else "distributed"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    m, c = r["measured"], r["config"]
    one, two = m["1"], m["2"]
    lines = [
        f"Distributed SAE training, {r['date']}, torch {r['torch']}, {r['machine']}, gloo on CPU, 1 thread per process; "
        f"load average (1 min) during the runs: {r['load_average_1min']}.",
        f"TopK d_in={c['d_in']} d_sae={c['d_sae']} k={c['k']}, batch {c['batch_per_rank']} per rank, {c['steps']} steps "
        f"(tokens/s from step {c['warm_steps']} on), over a harvest of {c['items']} inputs of 1,024 tokens; "
        f"median of {c['rounds']} rounds.",
        "",
        "| processes | tokens/s (wall) | tokens/s (CPU) | step (ms, wall) | in collectives (ms/step) "
        "| bytes sent per step per rank | runs (tokens/s, wall) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {n} | {x['tokens_per_s']:,.0f} | {x['tokens_per_cpu_s']:,.0f} | {x['step_ms']:.1f} | "
            f"{x['comm_ms_per_step']:.1f} | {x['bytes_per_step']:,} | {x['all_tokens_per_s']} |"
            for n, x in m.items()
        ),
        "",
        "tokens/s (CPU) divides all ranks' tokens by the CPU time of the busiest process: the rate with a core "
        "per process, which the wall clock on this shared machine does not give. 'in collectives' is the wall "
        "time a rank spent inside DDP's all-reduce and the statistics' (sending, and waiting for the other rank).",
        "",
        f"Speed-up with 2 processes: {two['tokens_per_s'] / one['tokens_per_s']:.2f}x (wall), "
        f"{two['tokens_per_cpu_s'] / one['tokens_per_cpu_s']:.2f}x (CPU). Per step a rank sends "
        f"{two['bytes_per_step']:,} bytes: {r['gradient_bytes_formula']:,} of float32 gradients (DDP's buckets, "
        f"4 (2 d_in d_sae + d_sae + d_in)) and {r['statistics_bytes']:,} of statistics (fired latents, tokens, loss; "
        "the residual's sums while latents are dead). The gradient bytes do not depend on the batch or on N; "
        f"with bf16 gradients (DDP's bf16_compress_hook) a rank sends {m['2, bf16 gradients']['bytes_per_step']:,}.",
        "",
        "Expected on 8 GPUs (not measured here: no GPU on this machine). A ring all-reduce moves 2 (N-1)/N times "
        "the bytes per rank; the TopK step is ~8 d_in d_sae FLOPs per token, taken at 400 TFLOP/s (bf16), and its "
        "gradients are all ready at the step's end, so communication is not overlapped with compute. "
        "Efficiency = compute / (compute + communication) = 1 / (1 + 2 (N-1)/N F / (bandwidth x batch)): "
        "independent of the SAE's size, set by the batch per GPU.",
        "",
        "| d_in | d_sae | batch per GPU | link | gradient bytes | compute (ms) | all-reduce (ms) | efficiency "
        "| efficiency, bf16 gradients |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in r["projection_8_gpus"]:
        lines.append(
            f"| {g['d_in']} | {g['d_sae']} | {g['batch_per_gpu']} | {g['link']} | {g['bytes'] / 1e9:.2f} GB | "
            f"{g['compute_ms']:.1f} | {g['comm_ms']:.1f} | {g['efficiency']:.0%} | {g['efficiency_bf16']:.0%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
