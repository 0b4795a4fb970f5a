"""The demo's sections, in order: per world, localization (heat map) and steering (grid or audio
players), and on the shapes world SAeUron style unlearning; then ``index.html`` and
``metrics.json`` (every number the page shows)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .media import save_grid, save_heatmap, save_wav
from .report import Report, Section
from .steps import Task, localize, short_name, steer, steering_site

__all__ = ["Size", "FULL", "QUICK", "image_world", "audio_world", "unlearn_style"]


@dataclass(frozen=True)
class Size:
    """How much the demo runs: samples per patching run, whether the heat map has one column per
    step (else two halves; both add an ``all`` column), steered targets, strengths and SAeUron prompts."""

    samples: int
    per_step: bool
    targets: int
    strengths: tuple[int, ...] | None  # indices into the task's strengths (None: all of them)
    saeuron_prompts: int
    clips: int  # steered targets written as WAV per strength


FULL = Size(8, True, 4, None, 16, 3)
QUICK = Size(2, False, 2, (0, 3), 8, 1)


def _columns(steps: int, size: Size) -> tuple[Any, ...]:
    """The heat map's step windows (see :func:`interventions.patching.step_label`); None: every
    step. Past 12 steps (a real checkpoint's 25) one column per step would cost too many runs:
    5 windows instead."""
    if steps < 2 or (size.per_step and steps <= 12):
        return (*range(steps), None)
    edges = [round(i * steps / (5 if size.per_step else 2)) for i in range(6 if size.per_step else 3)]
    return (*(range(a, b) for a, b in zip(edges, edges[1:], strict=False)), None)


def _strengths(task: Task, size: Size) -> tuple[float, ...]:
    if size.strengths is None:
        return task.strengths
    return tuple(task.strengths[min(i, len(task.strengths) - 1)] for i in size.strengths)


def _localization(task: Task, size: Size, folder: Path, slug: str, sec: Section, progress: bool) -> tuple[str, dict]:
    table = localize(task, size.samples, _columns(task.steps, size), progress)
    norm = table.normalized() if table.source_value != table.baseline else table.effects
    layers = [short_name(s) for s in table.sites]
    heat = save_heatmap(
        folder / f"{slug}_heatmap.png",
        norm,
        layers,
        table.steps,
        f"share of the '{task.positive}' margin restored\nby patching one layer's conditioning",
    )
    best = table.top_sites(1)[0]
    sec.text(
        f"Run A: '{task.clean}'; run B: '{task.corrupt}' (same noise, {size.samples} samples). Each cell patches "
        "one cross-attention layer's conditioning input (encoder_hidden_states) from run A into run B during the "
        f"given steps ('all': every step), as TADA localizes concepts, and shows the share of the judge's margin "
        f"('{task.positive}' minus the other) that comes back: 1 = all of it. Unpatched B scores "
        f"{table.baseline:.2f}, A {table.source_value:.2f}."
    )
    sec.image(heat.name, f"{task.name}: layer x step heat map (patching_sweep)")
    col = table.steps.index("all")
    sec.table(
        [{"layer": name, "restored (all steps)": float(norm[i, col])} for i, name in enumerate(layers)],
        "per layer, every step patched",
    )
    sec.text(f"Localized layer: {short_name(best)} (the steering below acts on its cross-attention output).")
    record = {"rows": table.to_rows(), "baseline": table.baseline, "source": table.source_value, "localized": best}
    return steering_site(best), record


def _steering(task: Task, size: Size, site: str, progress: bool) -> tuple[torch.Tensor, list[dict], tuple, tuple]:
    strengths = _strengths(task, size)
    targets = task.targets[: size.targets]
    outputs, rows, _ = steer(task, site, strengths, targets, progress=progress)
    return outputs, rows, strengths, targets


def image_world(task: Task, size: Size, folder: Path, report: Report, progress: bool) -> dict[str, Any]:
    """Localize, then steer, on an image pipeline; adds two sections."""
    slug = "shapes" if task.name == "shapes world" else "model"
    sec = report.section(f"1. Localize: where does '{task.positive}' enter? ({task.name})")
    site, record = _localization(task, size, folder, slug, sec, progress)
    outputs, rows, strengths, targets = _steering(task, size, site, progress)
    grid = save_grid(
        folder / f"{slug}_steering.png",
        outputs,
        [f"strength {s:g}" for s in strengths],
        [t.replace(" in ", "\nin ") for t in targets],
        f"steering towards '{task.positive}' at {short_name(site)}",
    )
    sec2 = report.section(f"2. Steer: add '{task.positive}' ({task.name})")
    sec2.text(
        f"A contrastive steering vector (CAA: mean cond-branch output of {len(task.pos_prompts)} "
        f"'{task.positive}' prompts minus their counterparts, one unit vector per step) is added at "
        f"{short_name(site)} with each token's norm restored (TADA's rule), on prompts that ask for the "
        "other concept. The world's judge measures the effect; the 'kept' columns are the factors the "
        "vector should leave alone."
    )
    sec2.image(grid.name, "rows: steering strength; columns: prompts (same noise in every row)")
    sec2.table(rows, "measured effect per strength")
    return {"localization": record, "steering": rows, "site": site}


def audio_world(task: Task, size: Size, folder: Path, report: Report, rate: int, to_audio, progress: bool) -> dict:
    """The same localization and steering on the tones world, with ``<audio>`` players."""
    sec = report.section(f"4. Audio: localize '{task.positive}' (tones world)")
    site, record = _localization(task, size, folder, "tones", sec, progress)
    ref = [
        ("run A: " + task.clean, task.generate([task.clean], 0)),
        ("run B: " + task.corrupt, task.generate([task.corrupt], 0)),
    ]
    clips = []
    for i, (label, reps) in enumerate(ref):
        clips.append((label, save_wav(folder / f"tones_ref{i}.wav", to_audio(reps)[0], rate).name))
    sec.audio(clips)
    outputs, rows, strengths, targets = _steering(task, size, site, progress)
    sec2 = report.section(f"4. Audio: steer towards '{task.positive}' (tones world)")
    sec2.text(
        f"The CAA vector at {short_name(site)} added to instrumental prompts; the probes judge the synthesised "
        "waveform (vocals: the 2.45-3.95 kHz band's energy share, 'margin' in dB)."
    )
    sec2.table(rows, "measured effect per strength")
    for j, prompt in enumerate(targets[: size.clips]):
        players = []
        for k, s in enumerate(strengths):
            name = f"tones_steer_{j}_{k}.wav"
            save_wav(folder / name, to_audio(outputs[k, j : j + 1])[0], rate)
            players.append((f"strength {s:g}", name))
        sec2.text(f"'{prompt}'")
        sec2.audio(players)
    return {"localization": record, "steering": rows, "site": site}


def _subset(prompts: Any, n: int) -> Any:
    """``n`` canonical prompts that cover every (shape, style) pair once, colours cycling."""
    from recipes.saeuron import PromptSet

    lab = prompts.labels
    keep = [
        i for i in range(len(prompts)) if int(lab["colour"][i]) == (int(lab["shape"][i]) + int(lab["style"][i])) % 4
    ]
    keep = keep[:: max(1, len(keep) // n)][:n]
    idx = torch.tensor(keep)
    return PromptSet(tuple(prompts.prompts[i] for i in keep), {k: v[idx] for k, v in lab.items()})


def unlearn_style(
    size: Size,
    folder: Path,
    report: Report,
    source: Any = None,
    remove: Sequence[str] = ("stripes",),
    seed: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """SAeUron with the shipped style SAE: before/after grid and UA / IRA / CRA on held-out noise."""
    from recipes.saeuron import DEFAULTS, REDIRECT, SAeUron, canonical

    model = SAeUron.shipped(source)
    prompts = _subset(canonical(), size.saeuron_prompts)
    percentile, multiplier, gate = DEFAULTS["style"]
    remove = tuple(remove)
    methods = {"none": "none", "SAeUron": "saeuron", "negative prompt": "negative_prompt"}
    runs = {
        name: model.generate(prompts, seed, method, remove, percentile, multiplier, gate)
        for name, method in tqdm(methods.items(), desc="SAeUron runs", disable=not progress)
    }
    before = runs["none"]
    rows = []
    for method, images in runs.items():
        m = model.metrics(images, prompts, remove, reference=before if method != "none" else None)
        rows.append({"method": method, **{k: m[k] for k in ("UA", "IRA", "CRA") if k in m}})
    grid = save_grid(
        folder / "saeuron_grid.png",
        (torch.stack(list(runs.values())) + 1) / 2,
        list(runs),
        [p.replace(" in ", "\nin ") for p in prompts.prompts],
        f"unlearning '{', '.join(remove)}' with SAeUron",
    )
    sec = report.section(f"3. Unlearn a style: '{', '.join(remove)}' with SAeUron (shapes world)")
    sec.text(
        f"The shipped style SAE ({model.saes['style'][0].info.site}) encodes that block's output. Every image here "
        "is drawn in some style, so unlearning a style means drawing it in another: a probe on the SAE's latents at "
        f"the first step picks the images that show '{', '.join(remove)}', and their latents are shifted toward "
        "the most distant kept style's mean, the direction taken among prompts of the image's colour (a second "
        f"probe names it) and the shift {REDIRECT['style']} latent units long for every style, on both CFG "
        "branches, with the SAE's error term kept; the other images are not edited (the recipe's shipped style "
        "edit, chosen on selection "
        "seeds; the paper's feature scaling is interventions run saeuron --strength 0). "
        f"{len(prompts)} prompts, held-out noise seed {seed}. UA: prompts naming the style no longer show it; IRA: "
        "the other styles kept; CRA: shape and colour kept. The recipe's full evaluation: interventions run saeuron."
    )
    sec.image(grid.name, "before (none) and after (SAeUron; the negative-prompt baseline)")
    sec.table(rows, f"unlearning '{', '.join(remove)}' ({len(prompts)} prompts)")
    return {"removed": list(remove), "rows": rows, "prompts": list(prompts.prompts)}


def write_metrics(folder: Path, results: dict[str, Any]) -> Path:
    path = folder / "metrics.json"
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return path


class Timer:
    """Wall time per named step into ``report.timings``."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self) -> None:
                self.t0 = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                timer.report.timings[name] = time.perf_counter() - self.t0

        return _Span()
