"""``interventions run mediffusion``: semi-supervised joint diffusion classification with FixMatch
on the two-class shapes task, against the same network trained on the labelled images only, and
classifier-guided counterfactual explanations scored by the shapes world's evaluator.

Per seed: one labelled/unlabelled split (``--labelled`` of the training images carry labels) and
one model per mode (``supervised``: cross-entropy on the labelled images only; ``joint``: +
denoising loss on all images; ``fixmatch``: + FixMatch on the unlabelled ones). Counterfactuals of
the fixmatch model towards the other class, started from a DDIM inversion of the image to ``t0``,
with the unguided reconstruction (scale 0, the image itself up to inversion error) as control.

Seeds run in parallel worker processes (:mod:`recipes.seed_workers`, one per seed, ``--workers``;
``--workers 1``: one after another in this process), merged into the same ``mediffusion.json``.

>>> config = MediffusionConfig(seeds=(0,), modes=("supervised",), steps=2, n_train=40, n_test=20)
>>> result = run_mediffusion(config, progress=False)
>>> sorted(result["runs"][0])
['history', 'labelled', 'mode', 'seed', 'test_accuracy']
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from recipes.joint_diffusion.model import PREDICTIONS, JointDiffusion
from recipes.joint_diffusion.train import MODES, TrainConfig, accuracy, train_joint
from recipes.seed_workers import SeedWorkers, add_workers_argument, default_workers, seed_folder

from .counterfactual import STARTS, counterfactual, explanation_map, top_overlap
from .data import foreground, two_class_shapes

__all__ = ["MediffusionConfig", "run_mediffusion", "explain_saved", "merge_seeds", "main", "EVALUATORS"]

#: The shapes world's shipped evaluator CNNs (recipes/worlds/checkpoints/shapes/evaluators).
EVALUATORS = Path(__file__).resolve().parents[1] / "worlds" / "checkpoints" / "shapes" / "evaluators"


@dataclass
class MediffusionConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("supervised", "fixmatch")
    classes: tuple[str, str] = ("circle", "square")
    n_train: int = 2000
    labelled_fraction: float = 0.05
    n_test: int = 1000
    steps: int = 1600
    batch_size: int = 32
    widths: tuple[int, ...] = (8, 16)
    hidden: int = 32
    diffusion_weight: float = 1.0
    denoised_ce_weight: float = 1.0  # cross-entropy on the model's own x0_hat(x_t), t <= denoised_t_max
    denoised_t_max: int = 500
    denoised_detach: bool = True
    prediction: str = "v_prediction"  # the UNet's output; "epsilon" samples full-frame noise at this size
    counterfactuals: int = 0  # images explained per seed (0: none)
    t0: int = 400
    cf_steps: int = 20
    cf_recurrence: int = 1  # guided DDIM passes per noise level (self-recurrence)
    scales: tuple[float, ...] = (0.0, 60.0)
    cf_start: str = "inversion"  # how the image reaches t0: "inversion" (DDIM) or "noise" (forward draw)
    cf_distance: float = 0.0  # weight of the L1 distance of x0_hat to the source in the guidance
    cf_smoothing: float = 0.3  # sigma of the noisy copies of x0_hat the guiding classifier sees (0: none)
    cf_draws: int = 4  # noisy copies per guided step


def _split(config: MediffusionConfig, seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    train = two_class_shapes(config.n_train, config.classes, g)
    test = two_class_shapes(config.n_test, config.classes, torch.Generator().manual_seed(99))
    n_lab = max(2, round(config.labelled_fraction * config.n_train))
    perm = torch.randperm(config.n_train, generator=g)
    return train, test, perm[:n_lab], perm[n_lab:]


def _explain(model: JointDiffusion, test, config: MediffusionConfig, seed: int, evaluator) -> tuple[dict, dict]:
    n = min(config.counterfactuals, test.images.shape[0])
    x, y = test.images[:n], test.labels[:n]
    target = 1 - y
    chance = test.region[:n].float().mean(dim=(1, 2)).mean().item()
    out, images = {}, {}
    control = None
    for s in sorted(config.scales):
        cf = counterfactual(
            model,
            x,
            target,
            t0=config.t0,
            steps=config.cf_steps,
            scale=s,
            generator=torch.Generator().manual_seed(seed),
            recurrence=config.cf_recurrence,
            start=config.cf_start,
            distance=config.cf_distance,
            smoothing=config.cf_smoothing,
            draws=config.cf_draws,
        )
        with torch.no_grad():
            said = evaluator(cf).argmax(-1)
            own = model.classify(cf).argmax(-1)
        maps = explanation_map(x, cf)
        control = cf if s == 0 else control
        out[f"scale_{s:g}"] = {
            "evaluator_target_rate": (said == test.class_index(target)).float().mean().item(),
            "evaluator_source_rate": (said == test.class_index(y)).float().mean().item(),
            "model_target_rate": (own == target).float().mean().item(),
            "top_overlap": top_overlap(maps, test.region[:n]),
            "chance_overlap": chance,
            "mean_abs_change": maps.mean().item(),
        }
        if control is not None and s != 0:  # same noise: what guidance changed beyond reconstruction error
            out[f"scale_{s:g}"]["top_overlap_vs_unguided"] = top_overlap(explanation_map(control, cf), test.region[:n])
        images[s] = cf
    out["samples"] = _sample_scores(model, test, seed, evaluator)
    return out, {"x": x, "cf": images, "region": test.region[:n]}


def _sample_scores(model: JointDiffusion, test, seed: int, evaluator, n: int = 64) -> dict[str, float]:
    """Does the denoiser generate the task's shapes? ``n`` unconditional DDIM samples (50 steps):
    the share the evaluator calls one of the two classes and their foreground share (renders: ~0.2)."""
    from recipes.jdcl.continual import generate

    samples, _ = generate(model, n, steps=50, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        said = evaluator(samples).argmax(-1)
    return {
        "evaluator_task_class_rate": torch.isin(said, torch.tensor(test.classes)).float().mean().item(),
        "foreground_share": foreground(samples).float().mean().item(),
        "renders_foreground_share": foreground(test.images).float().mean().item(),
    }


def run_mediffusion(config: MediffusionConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every (seed, mode), score the test set and, when asked, the counterfactuals; write
    ``mediffusion.json`` (after every run), ``mediffusion.png`` and the first fixmatch model's Hub
    folder ``model/`` under ``out``."""
    for m in config.modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}: use some of {MODES}")
    if not 0 < config.labelled_fraction < 1:
        raise ValueError(f"labelled_fraction must lie in (0, 1), got {config.labelled_fraction}")
    evaluator = None
    if config.counterfactuals:
        from recipes.worlds.shapes_eval import load_evaluators

        evaluator = load_evaluators(EVALUATORS)["shape"]
    result: dict[str, Any] = {"config": asdict(config), "runs": [], "counterfactuals": []}
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    figure = None
    for seed in config.seeds:
        train, test, lab, unlab = _split(config, seed)
        for mode in config.modes:
            torch.manual_seed(seed)
            model = JointDiffusion(
                num_classes=2, widths=config.widths, hidden=config.hidden, prediction=config.prediction
            )
            t = time.process_time()
            history = train_joint(
                model,
                train.images[lab],
                train.labels[lab],
                unlabelled=train.images[unlab],
                mode=mode,
                config=TrainConfig(
                    steps=config.steps,
                    batch_size=config.batch_size,
                    diffusion_weight=config.diffusion_weight,
                    denoised_ce_weight=config.denoised_ce_weight,
                    denoised_t_max=config.denoised_t_max,
                    denoised_detach=config.denoised_detach,
                    seed=seed,
                ),
                progress=progress,
            )
            run = {
                "seed": seed,
                "mode": mode,
                "labelled": len(lab),
                "test_accuracy": accuracy(model, test.images, test.labels),
                "history": history,
            }
            if progress:
                print(
                    f"seed {seed} {mode}: test accuracy {run['test_accuracy']:.3f} ({time.process_time() - t:.0f} s CPU)"
                )
            result["runs"].append(run)
            if evaluator is not None and mode == config.modes[-1]:
                scores, pictures = _explain(model, test, config, seed, evaluator)
                result["counterfactuals"].append({"seed": seed, "mode": mode, **scores})
                if progress:
                    print(f"  counterfactuals: {json.dumps(scores)}")
                figure = figure or pictures
                if out and seed == config.seeds[0]:
                    from recipes.joint_diffusion.hub import save_joint

                    save_joint(
                        model, out / "model", metrics={"test_accuracy": run["test_accuracy"]}, recipe="mediffusion"
                    )
            if out:
                (out / "mediffusion.json").write_text(json.dumps(_summarise(result), indent=1) + "\n")
    result = _summarise(result)
    if out and figure is not None:
        _plot(figure, out / "mediffusion.png")
    return result


def explain_saved(folder: str | Path, config: MediffusionConfig, seed: int) -> dict[str, Any]:
    """Counterfactual scores of a saved model (a ``model/`` folder of :func:`run_mediffusion`) on
    the test images of ``seed``, for ``config``'s scales, ``t0`` and steps: the same numbers as
    the training run gives for those settings, without training again."""
    from recipes.joint_diffusion.hub import load_joint
    from recipes.worlds.shapes_eval import load_evaluators

    if not config.counterfactuals:
        raise ValueError("counterfactuals must be >= 1 to explain a saved model")
    _, test, _, _ = _split(config, seed)
    scores, _ = _explain(load_joint(folder), test, config, seed, load_evaluators(EVALUATORS)["shape"])
    return {"seed": seed, "model": str(folder), **scores}


def _summarise(result: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for mode in {r["mode"] for r in result["runs"]}:
        accs = torch.tensor([r["test_accuracy"] for r in result["runs"] if r["mode"] == mode])
        summary[mode] = {
            "mean": accs.mean().item(),
            "std": accs.std().item() if len(accs) > 1 else 0.0,
            "per_seed": accs.tolist(),
        }
    result["summary"] = summary
    return result


def _plot(figure: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(6, figure["x"].shape[0])
    scales = sorted(figure["cf"])
    rows = 2 + 2 * len(scales)
    fig, axes = plt.subplots(rows, n, figsize=(1.4 * n, 1.4 * rows))
    show = lambda t: ((t.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()  # noqa: E731
    for j in range(n):
        axes[0, j].imshow(show(figure["x"][j]))
        axes[1, j].imshow(figure["region"][j].numpy(), cmap="gray")
        for k, s in enumerate(scales):
            cf = figure["cf"][s]
            axes[2 + 2 * k, j].imshow(show(cf[j]))
            axes[3 + 2 * k, j].imshow(explanation_map(figure["x"][j : j + 1], cf[j : j + 1])[0].numpy(), cmap="magma")
    labels = ["image", "class region"] + [t for s in scales for t in (f"cf s={s:g}", f"|diff| s={s:g}")]
    for i, name in enumerate(labels):
        axes[i, 0].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interventions run mediffusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["supervised", "fixmatch"], choices=MODES)
    parser.add_argument("--classes", nargs=2, default=["circle", "square"], help="two shapes of the shapes world")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--labelled", type=float, default=0.05, help="fraction of training images with labels")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--diffusion-weight", type=float, default=1.0, help="weight of the denoising loss")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="channels of the UNet's down blocks")
    parser.add_argument(
        "--denoised-ce",
        type=float,
        default=1.0,
        help="weight of the cross-entropy on the model's own denoised estimates x0_hat(x_t) (what guidance classifies)",
    )
    parser.add_argument("--denoised-t-max", type=int, default=500, help="largest t of that term's x_t")
    parser.add_argument(
        "--denoised-through",
        action="store_true",
        help="let that term's gradient reach the denoiser through x0_hat (default: x0_hat detached)",
    )
    parser.add_argument(
        "--prediction",
        default="v_prediction",
        choices=PREDICTIONS,
        help="the UNet's output (epsilon: the earlier default, whose samples are noise at this size)",
    )
    parser.add_argument("--counterfactuals", type=int, default=32, help="test images explained per seed (0: none)")
    parser.add_argument("--t0", type=int, default=400, help="noise level the counterfactual starts from")
    parser.add_argument("--cf-steps", type=int, default=20)
    parser.add_argument(
        "--cf-start",
        default="inversion",
        choices=STARTS,
        help="how the image reaches t0: deterministic DDIM inversion (the control returns the image) or "
        "one forward-process draw (noise, rounds 1-2)",
    )
    parser.add_argument(
        "--cf-recurrence",
        type=int,
        default=1,
        help="guided passes per noise level, re-noised with fresh noise in between (1: plain DDIM)",
    )
    parser.add_argument("--cf-distance", type=float, default=0.0, help="weight of DiME's L1 distance to the source")
    parser.add_argument(
        "--cf-smoothing",
        type=float,
        default=0.3,
        help="guide through the classifier's mean cross-entropy on x0_hat + sigma * noise (sigma; 0: plain)",
    )
    parser.add_argument("--cf-draws", type=int, default=4, help="noisy copies of x0_hat per guided step")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 60.0], help="guidance scales (0: control)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (of each worker)")
    add_workers_argument(parser)
    parser.add_argument("--out", help="folder for mediffusion.json, mediffusion.png and model/")
    parser.add_argument("--explain", metavar="MODEL", help="only score counterfactuals of this saved model (one seed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("n_train", "n_test", "steps", "batch_size", "threads", "cf_steps", "cf_recurrence", "cf_draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.cf_distance < 0 or args.cf_smoothing < 0:
        parser.error(f"--cf-distance and --cf-smoothing must be >= 0, got {args.cf_distance}, {args.cf_smoothing}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1 (1: seeds one after another in this process), got {args.workers}")
    workers = args.workers or default_workers(len(args.seeds), args.threads)
    if workers > 1 and len(args.seeds) > 1 and not args.explain:
        return _parallel(parser, args, workers)
    torch.set_num_threads(args.threads)
    config = MediffusionConfig(
        seeds=tuple(args.seeds),
        modes=tuple(args.modes),
        classes=tuple(args.classes),
        n_train=args.n_train,
        labelled_fraction=args.labelled,
        n_test=args.n_test,
        steps=args.steps,
        batch_size=args.batch_size,
        diffusion_weight=args.diffusion_weight,
        widths=tuple(args.widths),
        denoised_ce_weight=args.denoised_ce,
        denoised_t_max=args.denoised_t_max,
        denoised_detach=not args.denoised_through,
        prediction=args.prediction,
        counterfactuals=args.counterfactuals,
        t0=args.t0,
        cf_steps=args.cf_steps,
        cf_recurrence=args.cf_recurrence,
        scales=tuple(args.scales),
        cf_start=args.cf_start,
        cf_distance=args.cf_distance,
        cf_smoothing=args.cf_smoothing,
        cf_draws=args.cf_draws,
    )
    try:
        if args.explain:
            if len(config.seeds) != 1:
                parser.error("--explain scores one model: give the one seed it was trained with (--seeds N)")
            print(json.dumps(explain_saved(args.explain, config, config.seeds[0]), indent=1))
            return 0
        result = run_mediffusion(config, out=args.out, progress=not args.no_progress)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(result["summary"], indent=1))
    return 0


def _parallel(parser: argparse.ArgumentParser, args: argparse.Namespace, workers: int) -> int:
    """Every seed in its own worker process (:mod:`recipes.seed_workers`), writing in
    ``<out>/seeds/seed<S>``; their runs are merged into the ``mediffusion.json`` the in-process run
    writes (runs and counterfactuals in ``--seeds`` order, the same config and summary), and the
    first seed's ``model/`` and ``mediffusion.png`` are put where the in-process run puts them."""
    import shutil
    import tempfile

    seed_runs = SeedWorkers(
        module="recipes.mediffusion.run",
        result="mediffusion.json",
        parent_only=frozenset({"no_progress", "explain"}),
        extra=("--no-progress",),
        unit="model",  # a worker rewrites its mediffusion.json after every trained model
        finished_units=lambda record: len(record["runs"]),
        describe=lambda record: ", ".join(f"{r['mode']} {r['test_accuracy']:.3f}" for r in record["runs"]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        t0 = time.time()
        paths = seed_runs.run(parser, args, out, workers, not args.no_progress, units_per_seed=len(args.modes))
        result = merge_seeds([json.loads(path.read_text()) for path in paths])
        (out / "mediffusion.json").write_text(json.dumps(result, indent=1) + "\n")
        first = seed_folder(out, args.seeds[0])
        if (first / "model").is_dir():
            shutil.rmtree(out / "model", ignore_errors=True)
            shutil.move(first / "model", out / "model")
        if (first / "mediffusion.png").is_file():
            shutil.copyfile(first / "mediffusion.png", out / "mediffusion.png")
        print(f"{len(args.seeds)} seeds in {time.time() - t0:.0f} s ({workers} workers)")
    print(json.dumps(result["summary"], indent=1))
    return 0


def merge_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One-seed ``mediffusion.json`` records (of the same settings) as the one record of a run of
    all their seeds."""
    config = {**records[0]["config"], "seeds": [s for r in records for s in r["config"]["seeds"]]}
    merged = {
        "config": config,
        "runs": [run for r in records for run in r["runs"]],
        "counterfactuals": [cf for r in records for cf in r["counterfactuals"]],
    }
    return _summarise(merged)


if __name__ == "__main__":  # the worker processes of recipes.seed_workers
    raise SystemExit(main())
