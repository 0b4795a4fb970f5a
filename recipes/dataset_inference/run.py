"""``interventions run dataset_inference``: membership features, per-sample attacks and dataset
inference of a suspect set against an i.i.d. held-out set, per seed.

::

    interventions run dataset_inference                         # the shipped tones members model, its sets
    interventions run dataset_inference --model tones-members --suspect DIR --heldout DIR [--nonmembers DIR]
    interventions run dataset_inference --model stabilityai/stable-audio-open-1.0 --device cuda \\
        --suspect suspect_latents/ --heldout heldout_latents/ --timesteps 100 200 400 --ns 10 20 50 100

``--model``: ``tones-members`` (the shipped checkpoint, ``recipes/worlds/checkpoints/tones_members``),
a tones checkpoint folder, or a ``StableAudioPipeline`` (Hub id or folder, safetensors only). Set
folders hold ``latents.safetensors`` + ``prompts.json`` (:mod:`recipes.dataset_inference.sets`;
for Stable Audio Open, ``python -m recipes.dataset_inference.encode`` turns ``.wav`` clips into
one). Without ``--suspect`` / ``--heldout`` the tones model's sets are written to
``OUT/sets`` (members, fresh held-out and fresh non-member clips) and used.

``--views V`` averages every loss over ``V`` noise draws per sample and timestep; on the shipped
model ``--views 4 --scorer sum`` over ``--timesteps 10 50 100 200 300 400 500 600 700 850`` is what
reaches a mean p <= 0.01 (at n = 200 of its 250 members; ``recipes/results/README.md``).

For each seed (the fixed noise of the features and the resampling): the feature matrices; the
per-sample attacks (if ``--nonmembers`` is given, treating the suspect set as members: only
meaningful when the truth is known); the p-value against ``n`` (``--ns``, ``--resamples`` draws
each) and the smallest ``n`` whose mean p-value is <= 0.01; and, with ``--nonmembers``, the
p-values of ``--null-resamples`` non-member suspect sets of size ``--null-n`` (their rate below
0.05 should be about 5%). Writes ``dataset_inference_<name>.json``, ``.png`` and the feature
matrices (``_features.safetensors``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import inference as di
from .features import FeatureConfig, Features, SampleSet, compute_features
from .targets import Target, stable_audio_target, tones_target

__all__ = ["main", "TONES_MEMBERS_DIR", "run"]

TONES_MEMBERS_DIR = Path(__file__).resolve().parents[1] / "worlds" / "checkpoints" / "tones_members"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="interventions run dataset_inference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tones-members", help="tones-members | a tones folder | a StableAudioPipeline")
    ap.add_argument("--suspect", type=Path, help="suspect set folder (default: the tones model's members)")
    ap.add_argument("--heldout", type=Path, help="held-out set folder, i.i.d. with the suspect's distribution")
    ap.add_argument("--nonmembers", type=Path, help="known non-members: per-sample attacks and the null check")
    ap.add_argument("--n-members", type=int, default=0, help="tones default sets: member clips used (0: all)")
    ap.add_argument("--n-heldout", type=int, default=1000, help="tones default sets: held-out clips")
    ap.add_argument("--n-nonmembers", type=int, default=1000, help="tones default sets: non-member clips")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--timesteps", type=int, nargs="+", default=[50, 100, 200, 400], help="of a 1000-step schedule")
    ap.add_argument("--grad-timestep", type=int, default=100, help="-1: no gradient-norm feature")
    ap.add_argument("--grad-site", default=None, help="site of the gradient norm (default: the target's)")
    ap.add_argument("--no-cfg", action="store_true", help="skip the conditional-minus-unconditional features")
    ap.add_argument("--views", type=int, default=1, help="noise draws per sample and timestep, losses averaged")
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500])
    ap.add_argument("--resamples", type=int, default=200, help="resamples per n of the p-value curve")
    ap.add_argument(
        "--heldout-n", type=int, default=0, help="held-out samples per draw (default 0: as many as suspect samples)"
    )
    ap.add_argument("--null-n", type=int, default=100)
    ap.add_argument("--null-resamples", type=int, default=500)
    ap.add_argument("--scorer", default="logistic", choices=list(di.SCORERS))
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default=None, help="file name part (default: from the model)")
    ap.add_argument("--out", type=Path, default=Path("dataset_inference_out"))
    return ap


def load_target(model: str, device: str) -> Target:
    """A :class:`~recipes.dataset_inference.targets.Target` for ``--model``."""
    if model == "tones-members" or (Path(model) / "sampling.json").is_file():
        from recipes.worlds.tones_model import load_model

        path = TONES_MEMBERS_DIR if model == "tones-members" else Path(model)
        if not (path / "transformer").is_dir():
            raise FileNotFoundError(f"{path} is not a tones checkpoint folder (no transformer/)")
        m = load_model(path)
        m.transformer.to(device)
        m.text_encoder.to(device)
        return tones_target(m)
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(model, use_safetensors=True).to(device)
    return stable_audio_target(pipe)


def _summary_of(feats: Features, name: str) -> dict[str, float]:
    return {n: float(feats.values[:, i].mean()) for i, n in enumerate(feats.names)} | {"n": len(feats.values)}


def run(
    target: Target,
    suspect: SampleSet,
    heldout: SampleSet,
    nonmembers: SampleSet | None,
    seeds: list[int],
    config: FeatureConfig,
    ns: list[int],
    resamples: int,
    null_n: int,
    null_resamples: int,
    scorer: str = "logistic",
    progress: bool = True,
    heldout_n: int | None = None,
    matrices: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Everything the module doc lists, per seed, as a JSON-ready dict; the feature matrices go
    to ``matrices`` (seed -> set name -> ``N x F``) when given."""
    from scipy.stats import kstest

    if heldout_n is not None and heldout_n > len(heldout):
        raise ValueError(f"--heldout-n {heldout_n} is more than the {len(heldout)} held-out samples")
    largest = len(suspect) if heldout_n else min(len(suspect), len(heldout))
    ns = [n for n in ns if 4 <= n <= largest]
    if not ns:
        raise ValueError(f"no n in --ns fits the sets (between 4 and {largest}); pass smaller --ns")
    out: dict[str, Any] = {"seeds": {}}
    matrices = {} if matrices is None else matrices
    for seed in seeds:
        cfg = FeatureConfig(**{**vars(config), "noise_seed": seed})
        fs = compute_features(target, suspect, cfg, progress)
        fh = compute_features(target, heldout, cfg, progress)
        res: dict[str, Any] = {"feature_means": {"suspect": _summary_of(fs, "s"), "heldout": _summary_of(fh, "h")}}
        curve = di.p_value_curve(fs.values, fh.values, ns, resamples, seed, scorer, progress, heldout_n)
        res["p_curve"] = curve
        res["smallest_n_mean_p_le_0.01"] = di.smallest_n(curve)
        if nonmembers is not None:
            fn = compute_features(target, nonmembers, cfg, progress)
            res["feature_means"]["nonmembers"] = _summary_of(fn, "n")
            res["per_sample"] = di.per_sample_attacks(fs.names, fs.values, fn.values, fh.values, seed=seed)
            n0 = min(null_n, len(nonmembers), len(heldout))
            p = di.null_p_values(fn.values, fh.values, n0, null_resamples, seed, scorer, heldout_n)
            res["null"] = {
                "n": n0,
                "resamples": null_resamples,
                "rate_p_lt_0.05": float((p < 0.05).double().mean()),
                "rate_p_lt_0.01": float((p < 0.01).double().mean()),
                "ks_uniform_p": float(kstest(p.numpy(), "uniform").pvalue),
                "p_values": [round(float(v), 6) for v in p],
            }
        out["seeds"][str(seed)] = res
        out["feature_names"] = fs.names
        matrices[seed] = {"suspect": fs.values, "heldout": fh.values} | (
            {"nonmembers": fn.values} if nonmembers else {}
        )
    return out


def _sets(args: argparse.Namespace) -> tuple[SampleSet, SampleSet, SampleSet | None]:
    from .sets import load_set, write_catalogue_sets

    if args.suspect is None and args.heldout is None:
        if args.model != "tones-members":
            raise SystemExit("--suspect and --heldout are required for a model other than tones-members")
        info = json.loads((TONES_MEMBERS_DIR / "members.json").read_text())
        count = int(info["members"])
        folders = write_catalogue_sets(
            args.out / "sets", args.n_members or count, args.n_heldout, args.n_nonmembers, count
        )
        return load_set(folders["members"]), load_set(folders["heldout"]), load_set(folders["nonmembers"])
    if args.suspect is None or args.heldout is None:
        raise SystemExit("give both --suspect and --heldout (or neither, for the tones model's own sets)")
    nonmembers = load_set(args.nonmembers) if args.nonmembers else None
    return load_set(args.suspect), load_set(args.heldout), nonmembers


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    target = load_target(args.model, args.device)
    if args.grad_site:
        target.grad_site = args.grad_site
    suspect, heldout, nonmembers = _sets(args)
    config = FeatureConfig(
        timesteps=tuple(args.timesteps),
        grad_timestep=None if args.grad_timestep < 0 else args.grad_timestep,
        cfg=not args.no_cfg,
        batch_size=args.batch_size,
        views=args.views,
    )
    matrices: dict[int, dict[str, torch.Tensor]] = {}
    result = run(
        target,
        suspect,
        heldout,
        nonmembers,
        args.seeds,
        config,
        args.ns,
        args.resamples,
        args.null_n,
        args.null_resamples,
        args.scorer,
        heldout_n=args.heldout_n or None,
        matrices=matrices,
    )
    name = args.name or ("tones" if target.name == "tones" else Path(args.model).name.replace("/", "_"))
    result = {
        "model": args.model,
        "command": "interventions run dataset_inference " + " ".join(sys.argv[1:] if argv is None else argv),
        "sizes": {"suspect": len(suspect), "heldout": len(heldout), "nonmembers": len(nonmembers or [])},
        "scorer": args.scorer,
        "feature_config": {k: v for k, v in vars(config).items() if k != "noise_seed"},
        **result,
        "seconds": round(time.time() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dataset_inference_{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    from safetensors.torch import save_file

    save_file(
        {f"seed{s}.{k}": v.float().contiguous() for s, sets in matrices.items() for k, v in sets.items()},
        str(args.out / f"dataset_inference_{name}_features.safetensors"),
        metadata={"feature_names": json.dumps(result["feature_names"])},
    )
    if nonmembers is not None:
        from .plots import plot_run

        seeds = result["seeds"]
        plot_run(
            {int(s): r["p_curve"] for s, r in seeds.items()},
            {int(s): torch.tensor(r["null"]["p_values"]) for s, r in seeds.items()},
            args.null_n,
            args.out / f"dataset_inference_{name}.png",
            title=f"dataset inference: {args.model}",
        )
    _print_summary(result)
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return 0


def _print_summary(result: dict[str, Any]) -> None:
    for seed, r in result["seeds"].items():
        line = f"seed {seed}: smallest n with mean p <= 0.01: {r['smallest_n_mean_p_le_0.01']}"
        if "per_sample" in r:
            c = r["per_sample"]["combined"]
            line += f"; per-sample AUC (combined) {c['auc']:.3f} [{c['auc_lo']:.3f}, {c['auc_hi']:.3f}]"
            line += f", TPR@1%FPR {c['tpr_at_1pct_fpr']:.3f}; null rate p<0.05 {r['null']['rate_p_lt_0.05']:.3f}"
        print(line)
