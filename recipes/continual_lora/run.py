"""``interventions run continual_lora``: teach personalization tasks one after another with LoRA.

On the shapes world's tiny ``StableDiffusionPipeline``, every method (naive, merge_and_init,
ortho_init, ortho_init_product, magmax) learns the same task sequence on every seed; after each task its adapter is
saved in diffusers' LoRA format, loaded back with ``pipe.load_lora_weights`` and scored on every
task's prompt. It prints the table of final average and forgetting per seed and writes::

    <out>/metrics.json                   every score matrix, base scores, losses' tails, the summary
    <out>/continual_lora_matrices.png    seed-mean score matrix per method
    <out>/adapters/<method>/seed<s>/task<t>/pytorch_lora_weights.safetensors
    <out>/hub/<method>/                  last adapter of the first seed with its card (push-ready)

    interventions run continual_lora --out runs/continual_lora               # 4 tasks, 3 seeds in parallel
    interventions run continual_lora --quick --out /tmp/cl                   # 2 tasks, 1 seed, tiny
    interventions run continual_lora --prior-weight 0 --out runs/cl_plain    # no prior preservation
    interventions run continual_lora --prior-prompt class --identifiers synonyms --out runs/cl_db  # DreamBooth's class prior
    interventions run continual_lora --out runs/cl --push-to me/shapes-cl    # also push each method
    interventions run continual_lora --merge runs/s0/metrics.json runs/s1/metrics.json --out runs/all

With ``--push-to PREFIX`` each method's card folder goes to the Hub repo ``PREFIX-<method>``.

Seeds run in parallel worker processes (:mod:`.workers`), one seed each, ``--threads`` threads each,
by default one process per seed up to twice the usable cores; each writes ``<out>/seeds/seed<s>/``
(``metrics.json``, PNG, ``log.txt``), its adapters are moved to ``<out>/adapters`` as above and the
seeds are merged into ``<out>`` as ``--merge`` does (``seconds`` and ``cpu_seconds`` are then per
seed). The scores equal the in-process run's bit for bit; ``--workers 1`` runs the seeds one after
another in this process.

Defaults (chosen on selection seed 11, see the results README): identifiers the frozen text encoder
keeps apart (``--identifiers far``, :mod:`.identifiers`; ``synonyms``: the shapes' synonyms) and prior
preservation on the empty prompt at weight 1 (``--prior-weight 1 --prior-prompt null``). ``--targets cross_kv`` puts the LoRA on the
cross-attentions' ``to_k`` / ``to_v`` only instead of the paper's four projections of every attention.

With ``--prior-weight W > 0`` every method trains each task with DreamBooth's prior preservation:
``--class-images`` samples of the prior prompt from the frozen base model, their denoising loss times
``W`` added to the task's (diffusers' ``--with_prior_preservation``). ``--prior-prompt class`` is
DreamBooth's class prompt (``a circle`` for ``a disk``); ``null`` is the empty prompt, a prompt with no
task word: a task's update that also changes it (as every update does without it, measured) is one
that reaches prompts other than the task's own, and the prior holds that part back.

The same protocol on a real checkpoint is the authors' script (SDXL, DreamBooth LoRA rank 64, one
run per task, each starting from the previous task's output; not run here)::

    accelerate launch lora/train_dreambooth_lora_sdxl.py \\
      --pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0 \\
      --pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix \\
      --instance_data_dir=data/objects/<task> --instance_prompt="a photo of sks dog" \\
      --rank=64 --resolution=1024 --train_batch_size=1 --learning_rate=1e-5 --max_train_steps=850 \\
      --lr_scheduler=constant --gradient_checkpointing --use_8bit_adam --seed=0 \\
      --experiment_name=ortho_init --lora_path=<previous task's output_dir> --output_dir=out/<task>

(``--experiment_name`` one of naive_cl, merge_and_init, ortho_init, mag_max_light; the output's
``pytorch_lora_weights.safetensors`` loads with ``StableDiffusionXLPipeline.load_lora_weights``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from recipes.seed_workers import add_workers_argument, default_workers

from .methods import METHODS, Evaluation, Sequence, run_sequence
from .metrics import forgetting_per_task
from .report import plot_matrices, summarise, table
from .tasks import IDENTIFIER_SETS, make_tasks
from .train import Training
from .workers import WORKERS, collect_adapters

__all__ = ["parser", "main"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interventions run continual_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", type=int, default=4, help="how many of the 4 subjects to teach, in order (2-4)")
    p.add_argument(
        "--identifiers",
        default="far",
        choices=sorted(IDENTIFIER_SETS),
        help="identifier words of the tasks: the shapes' synonyms, or words the frozen encoder keeps apart",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60, help="training steps per task")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument(
        "--targets",
        default="attention",
        choices=["attention", "cross_kv"],
        help="LoRA on to_q/to_k/to_v/to_out.0 of every attention (the paper), or on the cross-attentions' to_k/to_v only",
    )
    p.add_argument("--instances", type=int, default=16, help="renders of each subject to train on")
    p.add_argument(
        "--prior-weight",
        type=float,
        default=1.0,
        help="DreamBooth prior preservation: weight of the class-image loss (0: off)",
    )
    p.add_argument("--class-images", type=int, default=32, help="class images per task (frozen base, class prompt)")
    p.add_argument(
        "--prior-prompt",
        default="null",
        choices=["class", "null"],
        help="prior preservation keeps the base model's images of the task's class prompt, or of the empty prompt",
    )
    p.add_argument("--samples", type=int, default=16, help="generated images per task per evaluation")
    p.add_argument("--eval-steps", type=int, default=10, help="DDIM steps when scoring")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--model", default=None, help="shapes checkpoint folder (default: the shipped one)")
    p.add_argument("--out", default=None, help="folder for metrics, the PNG, adapters and card folders")
    p.add_argument("--push-to", default=None, help="Hub repo prefix: push <out>/hub/<method> to PREFIX-<method>")
    p.add_argument("--threads", type=int, default=1, help="torch threads (of each worker)")
    add_workers_argument(p)
    p.add_argument(
        "--quick", action="store_true", help="defaults for a smoke run: 2 tasks, seed 0, 30 steps, 8 samples"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--merge", nargs="+", default=None, metavar="METRICS_JSON", help="combine runs (e.g. one seed each) into --out"
    )
    return p


def _check(args: argparse.Namespace) -> None:
    if args.push_to and not args.out:
        raise SystemExit("--push-to needs --out (the card folders are written there first)")
    if args.push_to and args.push_to.count("/") != 1:
        raise SystemExit(f"--push-to must look like 'owner/prefix', got {args.push_to!r}")
    if args.samples < 1 or args.eval_steps < 1:
        raise SystemExit("--samples and --eval-steps must be >= 1")
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"--workers must be >= 1 (1: seeds one after another in this process), got {args.workers}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if "--quick" in argv:  # smaller defaults; flags given explicitly still win
        p.set_defaults(tasks=2, seeds=[0], steps=30, samples=8)
    args = p.parse_args(argv)
    _check(args)
    if args.merge:
        _merge(args.merge, args.out)
        return 0
    workers = args.workers or default_workers(len(args.seeds), args.threads)
    if workers > 1 and len(args.seeds) > 1:
        return _parallel(p, args, workers)
    torch.set_num_threads(args.threads)
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    tasks = make_tasks(args.tasks, args.identifiers)
    training = Training(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        instances=args.instances,
        rank=args.rank,
        prior_weight=args.prior_weight,
        class_images=args.class_images,
        targets=args.targets,
        prior_prompt=args.prior_prompt,
    )
    ev = Evaluation(samples=args.samples, steps=args.eval_steps, guidance=args.guidance)
    pipe, evaluators = load_pipeline(args.model), load_evaluators(args.model)
    out = Path(args.out) if args.out else None
    t0 = time.time()
    sequences: list[Sequence] = []
    for seed in args.seeds:
        for method in args.methods:
            adapters = out / "adapters" if out else None
            sequences.append(
                run_sequence(method, pipe, evaluators, tasks, training, ev, seed, adapters, not args.no_progress)
            )
            if out is not None:  # after every sequence: a stopped run keeps what it finished
                _write_record(out, tasks, training, ev, sequences, time.time() - t0)
    summary = summarise(sequences)
    print(table(summary))
    print(f"{len(sequences)} sequences in {time.time() - t0:.0f} s")
    if out is not None:
        _write(out, args, tasks, training, ev, sequences, time.time() - t0)
    return 0


def _parallel(p: argparse.ArgumentParser, args: argparse.Namespace, workers: int) -> int:
    """Every seed in its own worker process (:mod:`.workers`), then the in-process run's outputs."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        t0 = time.time()
        paths = WORKERS.run(p, args, out, workers, not args.no_progress, units_per_seed=len(args.methods))
        sequences, tasks = _merge([str(m) for m in paths], args.out)
        print(f"{len(sequences)} sequences in {time.time() - t0:.0f} s ({workers} workers)")
        if args.out:
            collect_adapters(out, args.seeds)
            for s in sequences:
                root = out / "adapters" / s.method / f"seed{s.seed}"
                s.adapters = [str(root / f"task{t}") for t in range(len(tasks))]
            _publish(out, tasks, sequences, args.push_to)
    return 0


def _merge(paths: list[str], out: str | None) -> tuple[list[Sequence], tuple]:
    """Print and (with ``out``) write the summary and matrices of several runs' metrics.json."""
    from .report import load_runs
    from .tasks import Task

    sequences = [s for p in paths for s in load_runs(p)]  # checks each file is a run's metrics.json
    records = [json.loads(Path(p).read_text()) for p in paths]
    record = records[0]
    tasks = tuple(Task(t["prompt"].split()[-1], *t["subject"]) for t in record["tasks"])
    summary = summarise(sequences)
    print(table(summary))
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        runs = [r for rec in records for r in rec["runs"]]
        merged = {
            **record,
            "seconds": _per_run(records, "seconds"),
            "cpu_seconds": _per_run(records, "cpu_seconds"),
            "runs": runs,
            "summary": summary,
            "merged_from": paths,
        }
        (folder / "metrics.json").write_text(json.dumps(merged, indent=1) + "\n")
        plot_matrices(sequences, tasks, folder / "continual_lora_matrices.png")
    return sequences, tasks


def _per_run(records: list[dict], key: str) -> list:
    """``key`` of each record, a merged record's list spliced in (merging merged runs stays flat)."""
    values = [rec.get(key) for rec in records]
    return [x for v in values for x in (v if isinstance(v, list) else [v])]


def _write_record(out, tasks, training, ev, sequences, seconds) -> None:
    """``<out>/metrics.json``: settings, every finished sequence and the summary."""
    from dataclasses import asdict

    record = {
        "tasks": [{"prompt": t.prompt, "subject": list(t.subject)} for t in tasks],
        "training": asdict(training),
        "evaluation": asdict(ev),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(time.process_time(), 1),  # this process's, all threads
        "runs": [
            {
                "method": s.method,
                "seed": s.seed,
                "scores": s.scores,
                "base": s.base,
                "final_average": s.final_average,
                "forgetting": s.forgetting,
                "forgetting_per_task": forgetting_per_task(torch.tensor(s.scores)),
                "final_loss": [sum(c[-20:]) / len(c[-20:]) for c in s.losses],
            }
            for s in sequences
        ],
        "summary": summarise(sequences),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")


def _write(out, args, tasks, training, ev, sequences, seconds) -> None:
    _write_record(out, tasks, training, ev, sequences, seconds)
    plot_matrices(sequences, tasks, out / "continual_lora_matrices.png")
    _publish(out, tasks, sequences, args.push_to)


def _publish(out: Path, tasks, sequences: list[Sequence], push_to: str | None) -> None:
    """``<out>/hub/<method>``: each method's last adapter of the first seed with its card (pushed with ``push_to``)."""
    from .hub import publish_folder, push_adapter

    first: dict[str, Sequence] = {}
    for s in sequences:
        first.setdefault(s.method, s)
    for method, s in first.items():
        repo = f"{push_to}-{method}" if push_to else None
        folder = publish_folder(s, tasks, out / "hub" / method, repo_id=repo)
        if repo:
            push_adapter(folder, repo)
            print(f"pushed {folder} to {repo}")


if __name__ == "__main__":  # the worker processes of .workers
    raise SystemExit(main())
