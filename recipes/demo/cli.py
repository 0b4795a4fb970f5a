"""``interventions demo``: the offline tour, written as one HTML report.

::

    interventions demo                       # shapes + tones worlds, about 3 minutes on 2 CPU cores
    interventions demo --quick --out /tmp/r  # a much smaller run (what the tests use)
    interventions demo --world shapes --model stable-diffusion-v1-5/stable-diffusion-v1-5   # a real SD 1.5, on a GPU

Every argument is checked (an unknown world, a ``--model`` folder or Hub id that does not exist,
a ``--model`` with the tones world only) before any model loads: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

__all__ = ["main", "parser", "check"]

WORLDS = ("shapes", "tones", "all")
DEFAULT_JUDGE = "openai/clip-vit-base-patch32"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DemoError(ValueError):
    """A bad argument, reported as one line with exit code 2."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="interventions demo",
        description="Localize a concept (activation patching over every cross-attention layer and step), steer "
        "it (a contrastive steering vector), unlearn a style (SAeUron), and the same on audio; "
        "writes one HTML report and prints its folder.",
    )
    p.add_argument("--world", default="all", help="shapes, tones or all (default: all)")
    p.add_argument("--out", default="interventions-demo", help="report folder (default: ./interventions-demo)")
    p.add_argument("--quick", action="store_true", help="a much smaller run (under a minute)")
    p.add_argument(
        "--model",
        help="the image model: a Hub id or local folder of a Stable Diffusion 1.5 checkpoint (or of the shapes "
        "world); default: the shipped shapes world",
    )
    p.add_argument(
        "--judge", default=DEFAULT_JUDGE, help="CLIP model that judges a --model's images (Hub id or folder)"
    )
    p.add_argument("--steps", type=int, default=25, help="denoising steps for a --model checkpoint (default 25)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: tiny models gain little)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _local_or_hub(value: str, flag: str, marker: str) -> None:
    """An existing folder, or a Hub id of a model that has ``marker`` (its config file) in the
    local Hugging Face cache or on the Hub: a mistyped id fails here, not minutes later inside
    diffusers."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DemoError(f"{flag} {value!r} is a file; give a checkpoint folder or a Hub id")
        return
    if (
        value.startswith((".", "/", "~"))
        or os.sep in value.strip(os.sep).replace("/", "", 1)
        or not _HUB_ID.match(value)
    ):
        raise DemoError(
            f"{flag} {value!r} does not exist: give an existing local folder or a Hub id such as "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    _on_hub(value, flag, marker)


def _on_hub(repo_id: str, flag: str, marker: str) -> None:
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError

    if isinstance(try_to_load_from_cache(repo_id, marker), str):
        return  # downloaded before: runs offline
    if constants.HF_HUB_OFFLINE:
        raise DemoError(
            f"{flag} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
            f"first (hf download {repo_id}) or give a local folder"
        )
    try:
        found = HfApi().file_exists(repo_id, marker)
    except GatedRepoError:
        raise DemoError(
            f"{flag} {repo_id!r} is gated: accept its license on huggingface.co and log in (hf auth login)"
        ) from None
    except Exception as e:  # no network, a proxy, a server error: the download would fail the same way
        raise DemoError(
            f"{flag} {repo_id!r} could not be checked on the Hub ({type(e).__name__}: {e}); download it first "
            "or give a local folder"
        ) from None
    if not found:
        raise DemoError(
            f"{flag} {repo_id!r} is not a model on the Hub with a {marker} (a typo, or a private repo: log in with "
            "hf auth login); give a Hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5' or a local folder"
        )


def check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before anything loads."""
    if args.world not in WORLDS:
        raise DemoError(f"unknown world {args.world!r}; choose one of: {', '.join(WORLDS)}")
    if args.model is not None:
        if args.world == "tones":
            raise DemoError("--model replaces the image model; use it with --world shapes or --world all")
        _local_or_hub(args.model, "--model", "model_index.json")
        from .worlds import is_shapes_folder

        if not is_shapes_folder(args.model):
            if (
                Path(args.model).expanduser().is_dir()
                and not (Path(args.model).expanduser() / "model_index.json").is_file()
            ):
                raise DemoError(
                    f"--model {args.model!r} has no model_index.json: it is not a diffusers pipeline folder"
                )
            _local_or_hub(args.judge, "--judge", "config.json")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    if args.threads < 1 or args.steps < 1:
        raise DemoError("--threads and --steps must be at least 1")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (2: a bad argument, reported on one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        check(args)
    except DemoError as e:
        print(f"interventions demo: {e}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from .report import Report
    from .run import FULL, QUICK, Timer, audio_world, image_world, unlearn_style, write_metrics
    from .worlds import is_shapes_folder, sd_task, shapes_task, tones_task

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    size = QUICK if args.quick else FULL
    report = Report(folder, shlex.join(["interventions", "demo", *argv]))
    timer, progress = Timer(report), not args.no_progress
    results: dict = {"command": report.command, "quick": args.quick}
    start = time.perf_counter()
    if args.world in ("shapes", "all"):
        shapes = args.model is None or is_shapes_folder(args.model)
        with timer("load image model"):
            task = shapes_task(args.model) if shapes else sd_task(args.model, args.judge, args.steps)
        with timer("localize + steer (images)"):
            results["images"] = image_world(task, size, folder, report, progress)
        if shapes:
            with timer("SAeUron unlearning"):
                results["saeuron"] = unlearn_style(size, folder, report, args.model, progress=progress)
        else:
            report.section("3. Unlearn a style with SAeUron").text(
                "Skipped: the shipped SAEs are for the shapes world. SAeUron's own SAEs for SD 1.5 (fine-tuned on "
                "UnlearnCanvas) load with interventions.sae_sparsify.load_sparsify."
            )
    if args.world in ("tones", "all"):
        from recipes.worlds import tones as tones_world

        with timer("load tones model"):
            task = tones_task()
        with timer("localize + steer (audio)"):
            results["tones"] = audio_world(
                task,
                size,
                folder,
                report,
                tones_world.SR,
                lambda reps: tones_world.synthesize(reps, torch.Generator().manual_seed(0)),
                progress,
            )
    report.timings["total"] = time.perf_counter() - start
    results["seconds"] = report.timings
    write_metrics(folder, results)
    report.write()
    print(folder.resolve())
    return 0
