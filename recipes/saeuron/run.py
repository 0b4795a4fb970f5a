"""``interventions run saeuron``: unlearn styles and shapes on the shapes world, with baselines.

For every held-out seed and every removal (each style, each shape, then pairs at once) on the
canonical prompts it generates with the plain model, SAeUron, the negative-prompt baseline and the
block-ablation baseline, all from the same noise; single removals also on paraphrases (other
templates and synonyms, never used to select features) with SAeUron and the negative prompt. It
scores UA / IRA / CRA and the kept images' feature distance::

    interventions run saeuron --kind style --out runs/saeuron_style   # 3 seeds, 69 runs of 64 images
    interventions run saeuron --kind style --seeds 1000 --quick       # one seed, single removals, canonical
    interventions run saeuron --kind style --strength 0 --percentile 99.8 --quick   # the paper's edit on styles

With ``--out`` it writes ``metrics.json`` (every run's numbers, then per-seed and overall means)
and ``grid_<concept>.png`` (the first removal of each kind, every method, first seed); it prints
the summary table. Errors (an unknown concept or factor, an SAE of another site
or width, a missing checkpoint) come before any image is generated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recipes.worlds import shapes as world

from . import concepts as cs
from .recipe import CHECKPOINT, DEFAULTS, REDIRECT, SAeUron
from .train import SELECTION_SEEDS

__all__ = ["DEFAULTS", "removals", "evaluate", "summarise", "save_grid", "main"]

MULTI = {"style": [("stripes", "dots"), ("solid", "checker")], "shape": [("circle", "square"), ("triangle", "cross")]}


def removals(kinds: tuple[str, ...], multi: bool, concepts: tuple[str, ...] | None = None) -> list[tuple[str, ...]]:
    """What to remove: the given concepts together, or each concept of each kind (plus pairs)."""
    if concepts:
        cs.check_concepts(concepts)
        return [concepts]
    for kind in kinds:
        cs.check_concepts((world.FACTORS[kind][0],), kind)
    out = [(c,) for kind in kinds for c in world.FACTORS[kind]]
    return out + ([m for kind in kinds for m in MULTI.get(kind, [])] if multi else [])


def evaluate(
    model: SAeUron,
    seeds: list[int],
    todo: list[tuple[str, ...]],
    settings: dict[str, tuple[float, float, float, float]],
    paraphrases: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every (seed, prompt set, removal, method) run's metrics, one dict each. Canonical prompts:
    every removal with SAeUron, the negative prompt and block ablation; paraphrases (single
    removals only): SAeUron and the negative prompt."""
    kinds = {cs.kind_of(r[0]): r for r in todo}
    plans = [("canonical", cs.canonical(), todo, True)]
    if paraphrases:
        plans.append(("paraphrase", cs.paraphrase(), [r for r in todo if len(r) == 1], False))
    total = sum(1 + len(kinds) * ablate + 2 * len(rs) for _, _, rs, ablate in plans)
    bar = tqdm(total=len(seeds) * total, desc="saeuron runs", disable=not progress)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for name, prompts, removes, ablate in plans:
            reference = model.generate(prompts, seed)
            ablated = (
                {k: model.generate(prompts, seed, "block_ablation", r) for k, r in kinds.items()} if ablate else {}
            )
            bar.update(1 + len(ablated))
            for remove in removes:
                kind = cs.kind_of(remove[0])
                runs = {
                    "none": reference,
                    "saeuron": model.generate(prompts, seed, "saeuron", remove, *settings[kind]),
                    "negative_prompt": model.generate(prompts, seed, "negative_prompt", remove),
                }
                if ablate:
                    runs["block_ablation"] = ablated[kind]
                bar.update(2)
                for method, images in runs.items():
                    m = model.metrics(images, prompts, remove, reference if method != "none" else None)
                    rows.append(
                        {"seed": seed, "prompts": name, "remove": list(remove), "kind": kind, "method": method, **m}
                    )
    bar.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over removals per (seed, prompts, kind, single/multi, method), and over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["prompts"], r["kind"], "multi" if len(r["remove"]) > 1 else "single", r["method"])
        groups.setdefault(key + (r["seed"],), []).append(r)
    per_seed = [
        {"prompts": k[0], "kind": k[1], "removal": k[2], "method": k[3], "seed": k[4]}
        | {m: sum(r[m] for r in g) / len(g) for m in ("UA", "IRA", "CRA", "distance") if m in g[0]}
        for k, g in groups.items()
    ]
    out: dict[tuple, dict[str, Any]] = {}
    for r in per_seed:
        key = (r["prompts"], r["kind"], r["removal"], r["method"])
        entry = out.setdefault(
            key, {"prompts": key[0], "kind": key[1], "removal": key[2], "method": key[3], "per_seed": {}}
        )
        entry["per_seed"][r["seed"]] = {m: round(r[m], 4) for m in ("UA", "IRA", "CRA", "distance") if m in r}
    for entry in out.values():
        seeds = list(entry["per_seed"].values())
        entry["mean"] = {m: round(sum(s[m] for s in seeds) / len(seeds), 4) for m in seeds[0]}
    return list(out.values())


def save_grid(
    model: SAeUron, remove: tuple[str, ...], seed: int, settings: tuple[float, float, float, float], path: str | Path
) -> None:
    """A PNG: the 16 canonical prompts of one colour (rows: shapes, columns: styles) for the plain
    model and each method removing ``remove``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = cs.canonical()
    rows = torch.nonzero(full.labels["colour"] == 0).flatten()  # red: shape-major, style-minor
    prompts = cs.PromptSet(tuple(full.prompts[i] for i in rows.tolist()), {k: v[rows] for k, v in full.labels.items()})
    methods = {
        "plain model": model.generate(prompts, seed),
        "SAeUron": model.generate(prompts, seed, "saeuron", remove, *settings),
        "negative prompt": model.generate(prompts, seed, "negative_prompt", remove),
        "block ablation": model.generate(prompts, seed, "block_ablation", remove),
    }
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.6))
    for ax, (name, images) in zip(axes, methods.items(), strict=True):
        tiles = ((images + 1) / 2).clamp(0, 1).view(4, 4, 3, 16, 16).permute(0, 3, 1, 4, 2).reshape(64, 64, 3)
        ax.imshow(tiles.numpy(), interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks(range(8, 64, 16), world.STYLES, fontsize=7)
        ax.set_yticks(range(8, 64, 16), world.SHAPES, fontsize=7)
    fig.suptitle(f"removing {' + '.join(remove)} (seed {seed}, red prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| prompts | kind | removal | method | UA | IRA | CRA | distance | per seed (UA/IRA/CRA) |",
        "|" + "---|" * 9,
    ]
    for e in summary:
        m = e["mean"]
        seeds = " ; ".join(f"{s['UA']:.2f}/{s['IRA']:.2f}/{s['CRA']:.2f}" for s in e["per_seed"].values())
        dist = f"{m['distance']:.3f}" if "distance" in m else "-"
        lines.append(
            f"| {e['prompts']} | {e['kind']} | {e['removal']} | {e['method']} | {m['UA']:.3f} | {m['IRA']:.3f} | {m['CRA']:.3f} | {dist} | {seeds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="interventions run saeuron", description=__doc__.split("\n")[0])
    p.add_argument(
        "--kind", choices=sorted(world.FACTORS), action="append", help="factor to unlearn (default: style and shape)"
    )
    p.add_argument("--remove", nargs="+", help="remove these concepts together (e.g. stripes dots)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002], help="held-out seeds")
    p.add_argument("--percentile", type=float, help="override the kind's default feature percentile")
    p.add_argument("--multiplier", type=float, help="override the kind's default multiplier (gamma)")
    p.add_argument("--gate", type=float, help="override the kind's default presence gate (0: none, the paper)")
    p.add_argument(
        "--strength",
        type=float,
        help="override the kind's default redirection strength, the shift's length in latent units (0: the paper's edit)",
    )
    p.add_argument("--quick", action="store_true", help="single removals on canonical prompts only")
    p.add_argument("--sae", default=str(CHECKPOINT), help="folder with the SAE and latents.safetensors")
    p.add_argument("--model", help="shapes checkpoint folder or Hub id (default: shipped)")
    p.add_argument("--out", help="folder for metrics.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    clash = sorted(set(args.seeds) & set(SELECTION_SEEDS))
    if clash:
        p.error(f"seeds {clash} selected the features; evaluate on other seeds")
    kinds = tuple(args.kind or ("style", "shape"))
    try:
        todo = removals(kinds, not args.quick, tuple(args.remove) if args.remove else None)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    missing = sorted({cs.kind_of(r[0]) for r in todo} - {k for k in world.FACTORS if (Path(args.sae) / k).is_dir()})
    if missing:
        p.error(f"no SAE for {', '.join(missing)} in {args.sae} (one subfolder per kind)")
    if args.gate is not None and args.gate < 0:
        p.error(f"--gate must be >= 0 (0: no gate), got {args.gate}")
    if args.strength is not None and args.strength < 0:
        p.error(f"--strength must be >= 0 (0: the paper's edit), got {args.strength}")
    overrides = (args.percentile, args.multiplier, args.gate, args.strength)
    settings = {
        k: tuple(d if o is None else o for d, o in zip((*v, REDIRECT[k]), overrides, strict=True))
        for k, v in DEFAULTS.items()
    }
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.model and not Path(args.model).is_dir() and args.model.count("/") != 1:
        p.error(f"--model {args.model!r} is neither a folder nor a Hub id (namespace/name)")
    try:
        model = SAeUron.shipped(args.model, args.sae)
    except Exception as e:  # a missing or malformed checkpoint or SAE, a Hub failure: one line, nothing generated
        p.error(f"cannot load the model or SAEs: {type(e).__name__}: {e}")
    rows = evaluate(model, args.seeds, todo, settings, paraphrases=not args.quick)
    summary = summarise(rows)
    print(_table(summary))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "interventions run saeuron " + " ".join(sys.argv[1:] if argv is None else argv),
            "settings": settings,
            "seconds": round(time.time() - t0),
        }
        (out / "metrics.json").write_text(json.dumps(record | {"summary": summary, "runs": rows}, indent=1) + "\n")
        for kind in sorted({cs.kind_of(r[0]) for r in todo}):
            first = next(r for r in todo if cs.kind_of(r[0]) == kind)
            save_grid(model, first, args.seeds[0], settings[kind], out / f"grid_{'_'.join(first)}.png")
        print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
