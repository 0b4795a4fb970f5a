"""``interventions run tada``: localise one concept in a text-to-audio DiT and steer it (TADA,
arXiv 2602.11910), on the tones world (or, ``--world shapes``, localise in the shapes UNet).

::

    interventions run tada --world tones --concept vocals                  # shipped tones model, seeds 0 1
    interventions run tada --world tones --concept timbre --model ground-truth --no-steer
    interventions run tada --world tones --concept tempo --values slow fast --layers 1 3 --seeds 0 1 2
    interventions run tada --world shapes --concept color                  # localisation only

Per held-out seed: (1) localisation: every block's cross-attention conditioning patched from the
clean prompt into the one-word-swapped prompt at every step (and per third of the steps), and the
cond-only zero-ablation of every block's cross-attention output; (2) CAA: per-step unit vectors at
the localised blocks (``--layers``, default: every block restoring at least half as much as the
best one), fitted on prompts of templates 0-1 and latents of their own, then added with the norm
restored over ``--strengths`` on held-out prompts (template 2) and seeds: localised vs all blocks,
cond pass vs both passes, plus projection removal; (3) an SAE on the top localised block,
features scored by TF-IDF per step, steering by adding to / scaling the top features. Writes
``tada_<world>_<concept>.json``, ``..._localisation.png``, ``..._steering.png`` and the vectors
(``..._vectors/``: ``SteeringVector`` folders with their card; ``interventions hub push`` them).

``--model``: ``tones`` (shipped), ``ground-truth`` (the shipped model in which only one block sees
timbre), a folder of either, or a ``StableAudioPipeline`` (Stable Audio Open), which runs the same
functions through :class:`recipes.tada.pipeline.PipelineModel` (prompt templates ``--prompt``,
concepts ``--values`` and ``--keep``, a CLAP judge ``--judge``; not run here, no weights)::

    interventions run tada --model stabilityai/stable-audio-open-1.0 --device cuda --concept tempo \\
        --values slow fast --prompt "a {value} piano piece" --prompt "{value} jazz with drums" \\
        --prompt "a {value} guitar song" --keep "instrument=piano,guitar,drums" --steps 100 \\
        --guidance 7 --n 32 --seconds 10 --strengths 2 5 10 20 50 100 --sae-steps 5000

or, with ``--backend stable-audio-tools`` (or a folder holding ``model_config.json`` and
``model.safetensors``), stable-audio-tools' own model of the same checkpoint through
:class:`recipes.tada.sat.SatModel` (the DiT's ``cross_attn`` layers, its own sampler)::

    interventions run tada --model stabilityai/stable-audio-open-1.0 --backend stable-audio-tools \\
        --device cuda --concept tempo --values slow fast --prompt "a {value} piano piece" \\
        --prompt "{value} jazz with drums" --prompt "a {value} guitar song" \\
        --keep "instrument=piano,guitar,drums" --steps 100 --guidance 7 --n 32 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .caa import caa_curve, caa_vectors, restrict, steering_curve
from .localize import localize
from .plots import plot_localisation, plot_tradeoff
from .sae_steer import feature_scores, sae_hooks, top_features_by_step, train_layer_sae
from .tones import block_count

__all__ = ["main", "DEFAULT_VALUES", "load_model", "pick_layers", "run_caa", "run_tones"]

#: (negative / swapped, positive / clean) value of each tones factor
DEFAULT_VALUES = {
    "timbre": ("sine", "sawtooth"),
    "tempo": ("slow", "fast"),
    "mood": ("major", "minor"),
    "vocals": ("instrumental", "vocals"),
}
FIT_TEMPLATES, HELD_OUT_TEMPLATES = (0, 1), (2,)
TONES_CHECKPOINT = "recipes/worlds/checkpoints/tones"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(name: str, args: argparse.Namespace | None = None) -> Any:
    """``tones`` / ``ground-truth`` / a tones folder (a ground-truth folder holds ground_truth.json) /
    a ``StableAudioPipeline`` (folder with model_index.json, or Hub id: safetensors only) wrapped
    as a :class:`~recipes.tada.pipeline.PipelineModel`, or a stable-audio-tools model (folder with
    model_config.json, or Hub id with ``--backend stable-audio-tools``) wrapped as a
    :class:`~recipes.tada.sat.SatModel`; both with ``--prompt``, ``--keep`` and ``--judge``."""
    from recipes.worlds import tones_model

    from .ground_truth import load_ground_truth

    if name == "tones":
        return tones_model.load_model()
    if name == "ground-truth":
        return load_ground_truth()
    folder = Path(name)
    sat = (folder / "model_config.json").exists() or (args is not None and args.backend == "stable-audio-tools")
    if folder.is_dir() and not sat and not (folder / "model_index.json").exists():
        return load_ground_truth(folder) if (folder / "ground_truth.json").exists() else tones_model.load_model(folder)
    if not folder.is_dir() and not _HUB_ID.match(name):
        raise FileNotFoundError(f"--model {name!r}: not 'tones', 'ground-truth', a checkpoint folder or a Hub id")
    if args is None or not args.prompt or not args.values:
        raise SystemExit("a pipeline --model needs --values FROM TO and at least one --prompt with a {value} slot")
    from .pipeline import ClapJudge, PipelineModel

    concepts = {args.concept: tuple(args.values)}
    for spec in args.keep or []:
        key, _, vals = spec.partition("=")
        concepts[key] = tuple(v.strip() for v in vals.split(",") if v.strip())
    judge = ClapJudge(concepts, args.judge)
    if sat:
        from .sat import SatModel, load_sat_model

        module, config = load_sat_model(name, args.device)
        return SatModel(args.prompt, concepts, judge, module, config["sample_size"], seconds=args.seconds)
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(name, use_safetensors=True).to(args.device)
    return PipelineModel(args.prompt, concepts, judge, pipe, seconds=args.seconds)


def pick_layers(locs: list[Any], share: float = 0.5) -> list[int]:
    """Blocks whose every-step restored share (mean over seeds) is at least ``share`` of the best
    block's; the best block alone when none restores anything. ``locs``: localisations of any
    world (anything with ``recovered()``, rows = layers)."""
    mean = torch.stack([loc.recovered()[:, 0] for loc in locs]).nan_to_num(0.0).mean(0)
    best = float(mean.max())
    if best <= 0.05:
        return [int(mean.argmax())]
    return [i for i, v in enumerate(mean.tolist()) if v >= share * best]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="interventions run tada", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="tones", choices=["tones", "shapes"])
    ap.add_argument("--concept", required=True, help="tones: timbre | tempo | mood | vocals; shapes: a factor")
    ap.add_argument("--values", nargs=2, metavar=("FROM", "TO"), help="the swapped pair (default per concept)")
    ap.add_argument("--model", default=None, help="tones | ground-truth | a checkpoint folder (default: shipped)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="held-out latent / prompt seeds")
    ap.add_argument("--n", type=int, default=16, help="prompts (pairs) per seed and per fit")
    ap.add_argument("--steps", type=int, default=16, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--layers", type=int, nargs="+", help="blocks to steer (default: from the localisation)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4, 8, 16])
    ap.add_argument("--remove-strengths", type=float, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--sae-strengths", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    ap.add_argument("--sae-gammas", type=float, nargs="+", default=[0, -1, -2, -4])
    ap.add_argument("--sae-top", type=int, default=3, help="features per step")
    ap.add_argument("--sae-from-step", type=int, default=0, help="edit the SAE features from this step on only")
    ap.add_argument(
        "--sae-score", default="tfidf", choices=["tfidf", "diff_of_means", "cohens_d"], help="how features are ranked"
    )
    ap.add_argument("--sae-steps", type=int, default=600, help="SAE training steps")
    ap.add_argument("--no-steer", action="store_true", help="localisation only")
    ap.add_argument("--prompt", action="append", help="pipeline models: a prompt template with {value} (repeat)")
    ap.add_argument("--keep", action="append", help="pipeline models: another concept the judge scores, name=v1,v2")
    ap.add_argument("--judge", default="laion/clap-htsat-unfused", help="pipeline models: the CLAP checkpoint")
    ap.add_argument("--seconds", type=float, default=None, help="pipeline models: audio length")
    ap.add_argument(
        "--backend",
        choices=["diffusers", "stable-audio-tools"],
        default="diffusers",
        help="a Hub --model's format: a diffusers StableAudioPipeline or stable-audio-tools' model_config.json + "
        "model.safetensors (a folder is recognised by its files)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-sae", action="store_true", help="skip the SAE part")
    ap.add_argument("--no-caa", action="store_true", help="skip the CAA part (localisation and SAE only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("tada_out"))
    return ap


def run_tones(args: argparse.Namespace) -> dict[str, Any]:
    """The tones part of the CLI (localise, CAA, SAE); returns what the JSON holds."""
    model_name = args.model or "tones"
    model = load_model(model_name, args)
    concept = args.concept
    neg, pos = tuple(args.values) if args.values else DEFAULT_VALUES.get(concept, (None, None))
    if neg is None:
        raise SystemExit(f"unknown tones concept {concept!r}; choose one of {', '.join(DEFAULT_VALUES)}")
    tag = f"tada_tones_{concept}" + ("" if model_name == "tones" else f"_{Path(model_name).name}")
    out: dict[str, Any] = {"world": "tones", "model": model_name, "concept": concept, "values": [neg, pos]}
    out["settings"] = {k: v for k, v in vars(args).items() if k not in ("out",)}
    t0 = time.time()
    common = {"steps": args.steps, "guidance": args.guidance}
    locs = [
        localize(model, concept, (pos, neg), n=args.n, seed=s, prompt_seed=100 + s, **common, progress=True)
        for s in args.seeds
    ]
    out["localisation"] = [loc.to_json() for loc in locs]
    plot_localisation(locs, args.out / f"{tag}_localisation.png", f"TADA localisation: {concept} ({pos} -> {neg})")
    layers = list(args.layers) if args.layers else pick_layers(locs)
    out["localised_layers"] = layers
    out["seconds_localisation"] = round(time.time() - t0, 1)
    print(f"[tada] {concept}: ranking per seed {[loc.ranking() for loc in locs]}; steering blocks {layers}")
    if args.no_steer:
        out["cpu_seconds_total"] = round(time.process_time(), 1)
        return out
    if not args.no_caa:
        base = {"tones": TONES_CHECKPOINT, "ground-truth": "recipes/worlds/checkpoints/tones_tada_ground_truth"}
        out.update(run_caa(model, args, tag, concept, (neg, pos), layers, common, base.get(model_name, model_name)))
    out["seconds_caa"] = round(time.time() - t0 - out["seconds_localisation"], 1)
    if not args.no_sae:
        out["sae"] = _sae_part(model, args, concept, (neg, pos), layers[0], common)
    out["seconds_total"] = round(time.time() - t0, 1)
    out["cpu_seconds_total"] = round(time.process_time(), 1)  # this process's CPU time (the machine is shared)
    return out


def run_caa(
    model: Any,
    args: argparse.Namespace,
    tag: str,
    concept: str,
    values: tuple[str, str],
    layers: list[int],
    common: dict[str, Any],
    base_model: str,
) -> dict[str, Any]:
    """The CAA part of the CLI on any TADA model: vectors at every layer fitted on templates 0-1
    (saved with their card under ``<out>/<tag>_vectors``), then per held-out seed the curves of
    the localised layers and of all layers, cond pass and both passes, and projection removal;
    a trade-off plot per seed. Returns ``{"vectors": folder name, "caa": per seed}``."""
    neg, pos = values
    out: dict[str, Any] = {}
    n_layers = block_count(model)
    fit = {"n": args.n, "seed": 1000, "prompt_seed": 200, "templates": FIT_TEMPLATES, **common}
    vec_all = caa_vectors(model, concept, (neg, pos), list(range(n_layers)), **fit, base_model=base_model)
    vec_loc = restrict(vec_all, layers, model)
    folder = args.out / f"{tag}_vectors"
    _save_vectors(folder, {"localised": vec_loc, "all_layers": vec_all}, concept, args.world)
    out["vectors"] = folder.name
    per_seed = []
    for s in args.seeds:
        held = {"n": args.n, "seed": s, "prompt_seed": 300 + s, "templates": HELD_OUT_TEMPLATES, **common}
        curves = [
            caa_curve(model, vec_loc, args.strengths, branch="cond", label=f"CAA blocks {layers}, cond pass", **held),
            caa_curve(model, vec_loc, args.strengths, branch="all", label=f"CAA blocks {layers}, both passes", **held),
            caa_curve(model, vec_all, args.strengths, branch="cond", label="CAA all blocks, cond pass", **held),
            caa_curve(model, vec_all, args.strengths, branch="all", label="CAA all blocks, both passes", **held),
            caa_curve(
                model, vec_loc, args.remove_strengths, mode="remove", label=f"CAA remove, blocks {layers}", **held
            ),
        ]
        per_seed.append({"seed": s, "prompt_seed": 300 + s, "curves": [c.to_json() for c in curves]})
        plot_tradeoff(curves[:4], args.out / f"{tag}_steering_seed{s}.png", f"CAA {neg} -> {pos}, held-out seed {s}")
    out["caa"] = per_seed
    return out


def _save_vectors(folder: Path, vectors: dict[str, Any], concept: str, world: str) -> None:
    from hub_cards import write_card

    for name, vec in vectors.items():
        vec.save(folder / name)
    write_card(
        folder,
        "steering_vector",
        title=f"TADA CAA vectors: {concept} in the {world} world",
        description=(
            "Per-step unit CAA directions (difference of mean cross-attention outputs of prompts with the positive "
            "and the negative value, cond rows), for the localised blocks and for every block. Apply with "
            "AddVector(restore_norm=True) on the cond pass, or remove with Ablate('project_positive')."
        ),
    )


def _sae_part(model: Any, args: argparse.Namespace, concept: str, values: tuple[str, str], layer: int, common) -> dict:
    sae, report = train_layer_sae(
        model, layer, n=4 * args.n, templates=FIT_TEMPLATES, train_steps=args.sae_steps, **common, progress=True
    )
    fit = {"n": args.n, "seed": 1000, "prompt_seed": 200, "templates": FIT_TEMPLATES, **common}
    scores = feature_scores(model, sae, layer, concept, values, **fit)
    feats = top_features_by_step(scores[args.sae_score], args.sae_top)
    agree = {
        name: float(
            sum(len(set(a) & set(b)) for a, b in zip(feats, top_features_by_step(s, args.sae_top), strict=True))
            / (args.sae_top * len(feats))
        )
        for name, s in scores.items()
    }
    edited = [f if step >= args.sae_from_step else [] for step, f in enumerate(feats)]  # no edit before
    per_seed = []
    for s in args.seeds:
        held = {"n": args.n, "seed": s, "prompt_seed": 300 + s, "templates": HELD_OUT_TEMPLATES, **common}
        add = steering_curve(
            model,
            concept,
            values,
            lambda m: sae_hooks(sae, layer, edited, m, mode="add", model=model),
            args.sae_strengths,
            label=f"SAE add top-{args.sae_top} {args.sae_score} (block {layer})",
            **held,
        )
        scale = steering_curve(
            model,
            concept,
            values,
            lambda g: sae_hooks(sae, layer, edited, g, mode="scale", model=model),
            args.sae_gammas,
            mode="remove",
            label=f"SAE scale top-{args.sae_top} {args.sae_score} (block {layer})",
            **held,
        )
        per_seed.append({"seed": s, "curves": [add.to_json(), scale.to_json()]})
    return {
        "layer": layer,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "train": {"fvu": report.fvu, "l0": report.l0, "dead_fraction": report.dead_fraction},
        "score": args.sae_score,
        "edited_from_step": args.sae_from_step,
        "features_by_step": feats,
        "overlap_with_top": agree,
        "per_seed": per_seed,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.world == "shapes":
        from .shapes import run_shapes

        result = run_shapes(args)
    else:
        result = run_tones(args)
    name = f"tada_{args.world}_{args.concept}" + ("" if args.model in (None, "tones") else f"_{Path(args.model).name}")
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"[tada] wrote {path}")
    return 0
