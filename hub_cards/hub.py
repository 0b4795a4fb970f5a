"""Push artifact folders to the Hugging Face Hub and pull them back, safetensors and JSON only.

``push`` checks the folder (every file as the loaders would, plus the caller's ``check`` for the
formats it knows) and refuses pickles, files ``pull`` would not fetch back, symlinks leading out of
the folder and a tag that already exists, all before it creates anything; a folder without a
``README.md`` gets a card written from its artifacts' own metadata. Then ``create_repo(exist_ok)``
+ ``upload_folder`` (one commit) and the optional ``create_tag``. ``pull`` is ``snapshot_download``
restricted to ``*.json``, ``*.safetensors`` and ``*.md`` (a pickle in the repo is never
downloaded); what it fetched is checked the same way, and a refused pull removes every file it
added. Hub failures (no such repo or revision, an offline cache without the files, no network)
are a :class:`HubError` that says what to do.

The Hub is ``endpoint=`` when given, else ``$HF_ENDPOINT`` read at call time (``huggingface_hub``
reads it only once, at import), else huggingface.co. ``huggingface_hub`` is imported inside the
functions so that ``import hub_cards`` stays fast.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .cards import write_card
from .errors import ArtifactError, HubError
from .layouts import (
    CFG_NAME,
    PICKLE_SUFFIXES,
    SAE_WEIGHTS_NAME,
    STEERING_VECTOR_NAME,
    check_safetensors,
    find_pickles,
    outside_links,
    read_json,
    walk_files,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = ["PULL_PATTERNS", "check_folder", "pull", "push", "resolve_endpoint"]

#: What ``pull`` downloads and ``push`` uploads; everything else in a repo (pickles above all) stays on the Hub.
PULL_PATTERNS = ("*.json", "*.safetensors", "*.md")
#: Folders that ``upload_folder`` skips anyway: git internals and huggingface_hub's local-dir metadata.
_SKIPPED = (".git", ".cache/huggingface")
#: A format check: raises ArtifactError for a folder its loaders would refuse.
Check = Callable[[Path], Any]


def _files(root: Path) -> list[str]:
    """Every file under ``root`` that ``upload_folder`` would upload (relative POSIX paths, sorted)."""
    out = []
    for path in walk_files(root):
        rel = path.relative_to(root).as_posix()
        if not any(f"/{d}/" in f"/{rel}" for d in _SKIPPED):
            out.append(rel)
    return out


def resolve_endpoint(endpoint: str | None = None) -> str | None:
    """``endpoint``, else ``$HF_ENDPOINT`` as it is now, else None (huggingface_hub's default)."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def check_folder(folder: str | os.PathLike[str], check: Check | None = None) -> dict[str, list[str]]:
    """Validate everything ``push`` would upload; returns ``{"sae": [...], "steering_vector": [...],
    "safetensors": [...]}`` (paths relative to ``folder``).

    Refuses (:class:`ArtifactError`) a missing or empty folder, any pickle or other file that is not
    safetensors, JSON or markdown, a symlink that leads outside the folder, a JSON file or a
    safetensors file that cannot be read safely, and whatever ``check(folder)`` refuses (the formats'
    own validation: ``interventions.artifacts.check_artifacts``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder")
    if not any(root.iterdir()):
        raise ArtifactError(f"{root} is empty: nothing to push")
    pickles = find_pickles(root)
    if pickles:
        raise ArtifactError(
            f"{root} holds pickles ({', '.join(pickles)}): interventions publishes only safetensors and JSON; "
            "convert them with safetensors.torch.save_file or move them out of the folder"
        )
    links = outside_links(root)
    if links:
        raise ArtifactError(
            f"{root} holds symlinks that lead outside it ({', '.join(links)}): the upload would publish their "
            "targets; copy the files into the folder or remove the links"
        )
    files = _files(root)
    others = [f for f in files if not any(fnmatch(PurePosixPath(f).name, p) for p in PULL_PATTERNS)]
    if others:
        raise ArtifactError(
            f"{root} holds files that are not safetensors, JSON or markdown ({', '.join(others)}): pull would never "
            "fetch them back, and interventions publishes nothing else; move them out of the folder"
        )
    found = _check_contents(root, files)
    if check is not None:
        check(root)
    return found


def _check_contents(root: Path, files: list[str]) -> dict[str, list[str]]:
    """Read every JSON file and safetensors header among ``files`` as a loader would; what is where."""
    found: dict[str, list[str]] = {"sae": [], "steering_vector": [], "safetensors": []}
    kinds = {SAE_WEIGHTS_NAME: "sae", STEERING_VECTOR_NAME: "steering_vector"}
    for rel in files:
        path = root / rel
        if path.suffix == ".json":
            read_json(path, root=root)
        elif path.suffix == ".safetensors":
            check_safetensors(path, root=root)
            kind = kinds.get(path.name) if (path.parent / CFG_NAME).is_file() else None
            found[kind or "safetensors"].append(path.parent.relative_to(root).as_posix() if kind else rel)
    return found


def _card_kind(found: dict[str, list[str]]) -> str:
    return "sae" if found["sae"] else "steering_vector" if found["steering_vector"] else "model"


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, endpoint: str | None, *, offline: bool = False) -> Iterator[None]:
    """Turn ``huggingface_hub`` failures into a :class:`HubError` that says what to do."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    hub = endpoint or "the Hub"
    try:
        yield
    except RepositoryNotFoundError:
        raise HubError(
            f"{repo_id}: no such repo on {hub} (or it is private and your token cannot see it); check the name, "
            "or log in with `hf auth login`"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{repo_id}: no branch, tag or commit {revision!r}; list them with HfApi().list_repo_refs({repo_id!r})"
        ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise HubError(
                f"{where} is not (completely) in the Hub cache and the network is off; pull it once without "
                "--offline / local_files_only (or unset HF_HUB_OFFLINE)"
            ) from None
        raise HubError(f"cannot reach {hub} for {where}: check the network, --endpoint or $HF_ENDPOINT") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HubError(f"{hub} refused the request for {where} (HTTP {status}): {str(e).splitlines()[0]}") from None
    except OSError as e:  # connection refused, DNS, timeouts (httpx errors are not OSErrors: see below)
        raise HubError(f"cannot reach {hub} for {where}: {e}; check the network, --endpoint or $HF_ENDPOINT") from None
    except Exception as e:
        if type(e).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):  # httpx2 too
            raise HubError(
                f"cannot reach {hub} for {where}: {e}; check the network, --endpoint or $HF_ENDPOINT"
            ) from None
        raise


def push(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    tag: str | None = None,
    commit_message: str = "Upload artifacts with interventions",
    token: str | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
    repo_type: str = "model",
    check: Check | None = None,
) -> CommitInfo:
    """Upload ``folder`` to ``repo_id`` in one commit; returns the ``huggingface_hub.CommitInfo``.

    The repo is created if needed; ``revision`` is a branch (created from ``main`` if missing);
    ``tag`` tags the new commit. Everything is checked first (:func:`check_folder` with ``check``,
    and that ``tag`` does not exist yet), so a refused push changes nothing on the Hub. A folder
    without ``README.md`` gets one written from its artifacts' metadata (with a warning).
    """
    from huggingface_hub import HfApi

    root = Path(folder)
    found = check_folder(root, check)
    ep = resolve_endpoint(endpoint)
    api = HfApi(endpoint=ep, token=token)
    with _hub_errors(repo_id, revision, ep):
        if tag is not None:
            _refuse_existing_tag(api, repo_id, tag, repo_type)
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if not (root / "README.md").exists():
            card = write_card(root, _card_kind(found), repo_id=repo_id)
            warnings.warn(f"{root} had no README.md: wrote a card from the artifacts' metadata to {card}", stacklevel=2)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(root),
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=list(PULL_PATTERNS),
        )
        if tag is not None:
            api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type=repo_type)
    return info


def _refuse_existing_tag(api: Any, repo_id: str, tag: str, repo_type: str) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id, repo_type=repo_type).tags}
    except RepositoryNotFoundError:
        return  # a new repo has no tags
    if tag in tags:
        raise HubError(
            f"{repo_id} already has the tag {tag!r} (commit {tags[tag][:12]}); nothing was uploaded: choose another "
            f"tag, or delete it first with HfApi().delete_tag({repo_id!r}, tag={tag!r})"
        )


def _subfolder(subfolder: str | None) -> str | None:
    """``subfolder`` as a relative POSIX path inside the repo; ``..``, ``.`` and absolute paths are refused."""
    if not subfolder:
        return None
    parts = subfolder.rstrip("/").split("/")
    if "\\" in subfolder or any(p in ("", "..", ".") for p in parts):
        raise ArtifactError(
            f"subfolder {subfolder!r} must be a folder inside the repo (like 'saes/layer_3'), without '..', '.' "
            "or a leading '/'"
        )
    return "/".join(parts)


def _entries(folder: Path) -> set[Path]:
    """Every file, link and folder under ``folder`` (``folder`` included when it exists)."""
    if not folder.is_dir():
        return set()
    found = {folder}
    for dirpath, dirnames, filenames in os.walk(folder):
        found.update(Path(dirpath) / n for n in dirnames + filenames)
    return found


def _remove_new(folder: Path, before: set[Path]) -> None:
    """Delete what a refused pull added under ``folder``: new files, then new folders left empty."""
    new = _entries(folder) - before
    for path in new:
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
    for path in sorted(new, key=lambda p: -len(p.parts)):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    repo_type: str = "model",
    check: Check | None = None,
) -> Path:
    """Download the JSON, safetensors and Markdown files of ``repo_id`` (or of one ``subfolder``).

    Returns the local folder (the snapshot in the Hub cache, or ``local_dir``), joined with
    ``subfolder``. ``local_files_only=True`` (or ``HF_HUB_OFFLINE=1``) reads the Hub cache only.
    What came down is checked as :func:`push` checks (with ``check`` for the formats); refused
    (:class:`ArtifactError`, naming what the repo holds instead of safetensors, a pickle listed but
    never downloaded), every file this call added is removed again.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    sub = _subfolder(subfolder)
    patterns = [f"{sub}/{p}" for p in PULL_PATTERNS] + ["README.md"] if sub else list(PULL_PATTERNS)
    ep = resolve_endpoint(endpoint)
    offline = local_files_only or constants.HF_HUB_OFFLINE
    target = (
        Path(local_dir)
        if local_dir is not None
        else Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    )
    before = _entries(target)
    try:
        with _hub_errors(repo_id, revision, ep, offline=offline):
            root = Path(
                snapshot_download(
                    repo_id,
                    repo_type=repo_type,
                    revision=revision,
                    cache_dir=None if cache_dir is None else Path(cache_dir),
                    local_dir=None if local_dir is None else Path(local_dir),
                    allow_patterns=patterns,
                    local_files_only=local_files_only,
                    token=token,
                    endpoint=ep,
                )
            )
        path = root / sub if sub else root
        if not (path.is_dir() and any(p.suffix == ".safetensors" for p in walk_files(path))):
            _refuse_empty(repo_id, revision, sub, root, offline, repo_type, token, ep)
        links = outside_links(path)
        if links:
            raise ArtifactError(f"{path} holds symlinks that lead outside it ({', '.join(links)}); nothing was kept")
        _check_contents(
            path, [f for f in _files(path) if any(fnmatch(PurePosixPath(f).name, p) for p in PULL_PATTERNS)]
        )
        if check is not None:
            check(path)
    except BaseException:
        _remove_new(target, before)
        raise
    return path


def _refuse_empty(
    repo_id: str,
    revision: str | None,
    sub: str | None,
    root: Path,
    offline: bool,
    repo_type: str,
    token: str | None,
    endpoint: str | None,
) -> None:
    where = f"{repo_id}@{revision or 'main'}" + (f" subfolder {sub!r}" if sub else "")
    files = None if offline else _remote_files(repo_id, revision, repo_type, token, endpoint)
    if files is None:
        files = sorted(p.relative_to(root).as_posix() for p in walk_files(root))
    inside = [f for f in files if not sub or f.startswith(sub + "/")]
    pickles = [f for f in inside if Path(f).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ArtifactError(
            f"{where} holds a pickle ({', '.join(pickles)}) instead of safetensors: interventions loads only "
            "safetensors and did not download it"
        )
    if sub and not inside:
        folders = sorted({f.rsplit("/", 1)[0] for f in files if "/" in f})
        raise ArtifactError(f"{where}: no such folder in the repo (folders: {folders or 'none'})")
    raise ArtifactError(f"{where} has no .safetensors file (it holds {inside or 'nothing'})")


def _remote_files(
    repo_id: str, revision: str | None, repo_type: str, token: str | None, endpoint: str | None
) -> list[str] | None:
    from huggingface_hub import HfApi

    try:
        return sorted(
            HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision, repo_type=repo_type)
        )
    except Exception:  # the listing only improves the message; the download already told what matters
        return None
