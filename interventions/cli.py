"""The ``interventions`` command.

::

    interventions hub push DIR REPO_ID [--revision R] [--tag T] [--message M] [--private] [--endpoint URL]
    interventions hub pull REPO_ID [--revision R] [--subfolder S] [--local-dir D] [--cache-dir C] [--offline]
    interventions run                      list the recipes that can be run
    interventions run RECIPE [ARGS...]     run one (its own options follow its name)
    interventions demo [--world W] [--out DIR] [--quick] [--model M]   the offline tour: one HTML report
    interventions distributed COMMAND ...  harvest / check / train-sae (python -m interventions.distributed)

``hub`` talks to the Hub through ``hub_cards`` (imported only when a hub command runs; the Hub is
``--endpoint``, else ``$HF_ENDPOINT``, else huggingface.co; the token is ``$HF_TOKEN`` or the one
saved by ``hf auth login``). Recipes register lazily: :data:`RECIPES` maps a name to
``"module:function"`` plus a one-line help, and packages may add more through the
``interventions.recipes`` entry-point group; nothing is imported until a recipe runs. A recipe
function takes the remaining command-line arguments (``list[str]``) and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

__all__ = ["RECIPES", "main", "recipes", "register_recipe"]

#: name -> ("package.module:function", one-line help); filled by recipe modules' authors, imported lazily.
RECIPES: dict[str, tuple[str, str]] = {
    "sdi_gan": ("recipes.sdi_gan:main", "SDI-GAN fast calorimeter simulation (arXiv 2406.03263)"),
    "expertsim": ("recipes.expertsim:main", "ExpertSim mixture of generative experts (arXiv 2508.20991)"),
    "taba": ("recipes.taba.cli:main", "There and Back Again: noise, DDIM samples, inversions (arXiv 2410.23530)"),
    "saeuron": (
        "recipes.saeuron.run:main",
        "SAeUron concept unlearning with SAEs on the shapes world (arXiv 2501.18052)",
    ),
    "elrond": (
        "recipes.elrond.cli:main",
        "ELROND variation directions from prompt-embedding gradients (arXiv 2602.10216)",
    ),
    "dataset_inference": ("recipes.dataset_inference.run:main", "membership and dataset inference (arXiv 2512.09654)"),
    "tada": ("recipes.tada.run:main", "TADA: localise and steer concepts in audio diffusion (arXiv 2602.11910)"),
    "continual_lora": ("recipes.continual_lora.run:main", "continual LoRA personalization (arXiv 2410.04891)"),
    "mediffusion": (
        "recipes.mediffusion.run:main",
        "Mediffusion: semi-supervised joint diffusion classifier, counterfactuals (arXiv 2411.09434)",
    ),
    "jdcl": ("recipes.jdcl.run:main", "JDCL: continual learning with joint diffusion models (arXiv 2411.08224)"),
}


def register_recipe(name: str, target: str, help: str = "") -> None:
    """Make ``interventions run NAME`` call ``target`` (``"module:function"``), imported when it runs."""
    if ":" not in target:
        raise ValueError(f"recipe target must be 'module:function', got {target!r}")
    RECIPES[name] = (target, help)


def recipes() -> dict[str, tuple[str, str]]:
    """Registered recipes plus those of the ``interventions.recipes`` entry-point group."""
    from importlib.metadata import entry_points

    found = dict(RECIPES)
    for ep in entry_points(group="interventions.recipes"):
        found.setdefault(ep.name, (ep.value, ""))
    return found


def _load(target: str) -> Callable[[list[str]], int | None]:
    module, _, func = target.partition(":")
    obj = import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interventions", description="Hook-based interventions for PyTorch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    hub = sub.add_parser("hub", help="push artifacts to / pull them from the Hugging Face Hub")
    hub.set_defaults(print_help=hub.print_help)
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    push = hub_sub.add_parser("push", help="upload a folder of artifacts (checked first) in one commit")
    push.add_argument("dir", help="folder with SAEs / steering vectors / a model, and its README.md card")
    push.add_argument("repo_id", help="namespace/name on the Hub")
    push.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    push.add_argument("--tag", help="tag the new commit with this name")
    push.add_argument("--message", default="Upload artifacts with interventions", help="commit message")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or huggingface.co)")

    pull = hub_sub.add_parser("pull", help="download the safetensors, JSON and cards of a repo (never pickles)")
    pull.add_argument("repo_id", help="namespace/name on the Hub")
    pull.add_argument("--revision", help="branch, tag or commit (default main)")
    pull.add_argument("--subfolder", help="only this folder of the repo")
    pull.add_argument("--local-dir", help="copy the files here instead of returning the Hub cache folder")
    pull.add_argument("--cache-dir", help="Hub cache folder (default: $HF_HUB_CACHE)")
    pull.add_argument("--offline", action="store_true", help="read the Hub cache only (no network)")
    pull.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or huggingface.co)")

    dist = sub.add_parser("distributed", help="harvest / check / train-sae over torch.distributed (torchrun)")
    dist.add_argument("args", nargs=argparse.REMAINDER, help="python -m interventions.distributed's arguments")

    sub.add_parser("demo", help="localize, steer and unlearn concepts offline; one HTML report (demo --help)")

    run = sub.add_parser("run", help="run a recipe (without a name: list them)")
    run.add_argument("recipe", nargs="?", help="recipe name")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's own arguments")
    return parser


def _hub(args: argparse.Namespace) -> int:
    """``hub push`` / ``hub pull``: every refusal and Hub failure is one line on stderr and exit code 2."""
    if args.hub_command is None:
        args.print_help()
        return 2
    import warnings

    from hub_cards import ArtifactError, HubError, pull, push

    from .artifacts import check_artifacts

    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            if args.hub_command == "push":
                info = push(
                    args.dir,
                    args.repo_id,
                    revision=args.revision,
                    tag=args.tag,
                    commit_message=args.message,
                    private=True if args.private else None,
                    endpoint=args.endpoint,
                    check=check_artifacts,
                )
                result = info.commit_url + (f"\ntagged {args.tag} -> {info.oid}" if args.tag else "")
            else:
                result = str(
                    pull(
                        args.repo_id,
                        revision=args.revision,
                        subfolder=args.subfolder,
                        local_dir=args.local_dir,
                        cache_dir=args.cache_dir,
                        local_files_only=args.offline,
                        endpoint=args.endpoint,
                        check=check_artifacts,
                    )
                )
    except (ArtifactError, HubError) as e:
        print(f"interventions hub {args.hub_command}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"interventions hub {args.hub_command}: {note.message}", file=sys.stderr)
    print(result)
    return 0


def _run(args: argparse.Namespace) -> int:
    available = recipes()
    if args.recipe is None:
        if not available:
            print("no recipes are registered yet")
        for name, (_, text) in sorted(available.items()):
            print(f"{name:24s} {text}")
        return 0
    if args.recipe not in available:
        names = ", ".join(sorted(available)) or "none yet"
        print(f"interventions run: unknown recipe {args.recipe!r} (available: {names})", file=sys.stderr)
        return 2
    code = _load(available[args.recipe][0])(list(args.args))
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interventions`` console script; returns the exit code."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["demo"]:  # its own parser (recipes.demo.cli), imported only when it runs
        return int(_load("recipes.demo.cli:main")(argv[1:]) or 0)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hub":
        return _hub(args)
    if args.command == "run":
        return _run(args)
    if args.command == "distributed":
        from .distributed.cli import main as distributed

        return distributed(args.args)
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
