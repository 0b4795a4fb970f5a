"""Continual-LoRA adapters as Hub artifacts: diffusers' LoRA file, a JSON record and a card.

A folder holds ``pytorch_lora_weights.safetensors`` (``StableDiffusionPipeline.save_lora_weights``),
``continual_lora.json`` (method, tasks taught, scores) and ``README.md`` (the card, written with
``hub_cards.write_card``); ``hub_cards.push`` / ``pull`` (and ``interventions hub push/pull``) move
it, and ``pipe.load_lora_weights(folder)`` loads it.

>>> folder = publish_folder(sequence, tasks, "out/naive_card")  # doctest: +SKIP
>>> push_adapter(folder, "me/shapes-continual-naive")  # doctest: +SKIP
>>> pipe.load_lora_weights(pull_adapter("me/shapes-continual-naive"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .methods import Sequence
from .tasks import Task

__all__ = ["WEIGHTS", "RECORD", "publish_folder", "push_adapter", "pull_adapter"]

WEIGHTS = "pytorch_lora_weights.safetensors"
RECORD = "continual_lora.json"
_PAPER = "https://arxiv.org/abs/2410.04891"


def _metrics(seq: Sequence, tasks: tuple[Task, ...]) -> str:
    head = "| task (prompt -> subject) | before | " + " | ".join(f"after {t.identifier}" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 2) + "|"]
    for i, t in enumerate(tasks):
        cells = " | ".join(f"{s:.2f}" for s in seq.scores[i])
        lines.append(f"| `{t.prompt}` -> {' '.join(t.subject)} | {seq.base[i]:.2f} | {cells} |")
    lines += ["", f"Final average {seq.final_average:.3f}, forgetting {seq.forgetting:.3f} (seed {seq.seed})."]
    return "\n".join(lines)


def publish_folder(
    seq: Sequence, tasks: tuple[Task, ...], folder: str | os.PathLike[str], repo_id: str | None = None
) -> Path:
    """Copy the last adapter of ``seq`` into ``folder`` with its record and card; returns ``folder``."""
    from hub_cards import write_card

    if not seq.adapters:
        raise ValueError("this sequence kept no adapters: run it with out=<folder> to save them")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(seq.adapters[-1]) / WEIGHTS, folder / WEIGHTS)
    record: dict[str, Any] = {
        "method": seq.method,
        "seed": seq.seed,
        "tasks": [{"prompt": t.prompt, "subject": list(t.subject)} for t in tasks],
        "scores": seq.scores,
        "base_scores": seq.base,
        "final_average": seq.final_average,
        "forgetting": seq.forgetting,
    }
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    snippet = (
        "from hub_cards import pull\nfrom recipes.worlds.shapes_model import load_pipeline\n\n"
        f'pipe = load_pipeline()\npipe.load_lora_weights(str(pull("{repo_id or "<repo_id>"}")))\n'
        f'images = pipe("{tasks[0].prompt}", guidance_scale=3.0, num_inference_steps=10).images'
    )
    write_card(
        folder,
        "model",
        repo_id=repo_id,
        title=f"Continual LoRA ({seq.method}) on the shapes world, {len(tasks)} subjects",
        description=(
            f"A LoRA adapter for the UNet attention projections (to_q/to_k/to_v/to_out.0) of the tiny shapes "
            f"StableDiffusionPipeline of interventions, after teaching {len(tasks)} personalization tasks one after "
            f"another with the `{seq.method}` method of Low-Rank Continual Personalization of Diffusion Models. "
            "Saved in diffusers' LoRA format (`pipe.load_lora_weights`). Scores: evaluator accuracy (shape, colour "
            "and texture all right) on each task's prompt."
        ),
        metrics=_metrics(seq, tasks),
        load_snippet=snippet,
        paper_url=_PAPER,
        repo_url="https://github.com/luk-st/continual-lora",
        tags=["lora", "continual-learning", "diffusers", "personalization"],
    )
    return folder


def push_adapter(folder: str | os.PathLike[str], repo_id: str, **kwargs: Any) -> Any:
    """``hub_cards.push`` (safetensors, JSON and the card only; checked first)."""
    from hub_cards import push

    if not (Path(folder) / WEIGHTS).is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no {WEIGHTS}: write it with publish_folder first")
    return push(folder, repo_id, **kwargs)


def pull_adapter(repo_id: str, **kwargs: Any) -> Path:
    """The adapter folder of ``repo_id`` (``hub_cards.pull``), ready for ``pipe.load_lora_weights``."""
    from hub_cards import pull

    folder = pull(repo_id, **kwargs)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{repo_id} holds no {WEIGHTS}: not a continual-LoRA adapter")
    return folder
