"""Push artifact folders to the Hugging Face Hub and pull them back, safetensors and JSON only.

``push`` checks every artifact in the folder (as the loaders would) and refuses pickles and any
other file that ``pull`` would not fetch back before it creates anything, then runs
``create_repo(exist_ok=True)`` + ``upload_folder`` (one commit) and an
optional ``create_tag``. ``pull`` is ``snapshot_download`` restricted to ``*.json``,
``*.safetensors`` and ``*.md``: a pickle in the repo is never downloaded, and a repo (or subfolder)
without safetensors is an :class:`ArtifactError` that names what the repo holds instead.

The Hub is ``endpoint=`` when given, else ``$HF_ENDPOINT`` read at call time (``huggingface_hub``
reads it only once, at import), else huggingface.co. ``huggingface_hub`` is imported inside the
functions so that ``import hub_cards`` stays fast.
"""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import ArtifactError
from .layouts import (
    CFG_NAME,
    PICKLE_SUFFIXES,
    SAE_WEIGHTS_NAME,
    STEERING_VECTOR_NAME,
    check_safetensors,
    find_pickles,
    load_sae,
    load_steering_vector,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = ["PULL_PATTERNS", "check_folder", "pull", "push", "resolve_endpoint"]

#: What ``pull`` downloads and ``push`` uploads; everything else in a repo (pickles above all) stays on the Hub.
PULL_PATTERNS = ("*.json", "*.safetensors", "*.md")
#: Folders that ``upload_folder`` skips anyway: git internals and huggingface_hub's local-dir metadata.
_SKIPPED = (".git", ".cache/huggingface")


def _files(root: Path) -> list[str]:
    """Every file under ``root`` that ``upload_folder`` would upload (relative POSIX paths, sorted)."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(f"/{d}/" in f"/{rel}" for d in _SKIPPED):
            out.append(rel)
    return out


def resolve_endpoint(endpoint: str | None = None) -> str | None:
    """``endpoint``, else ``$HF_ENDPOINT`` as it is now, else None (huggingface_hub's default)."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def check_folder(folder: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Validate everything ``push`` would upload; returns ``{"sae": [...], "steering_vector": [...],
    "safetensors": [...]}`` (paths relative to ``folder``).

    Refuses (:class:`ArtifactError`) a missing or empty folder, any pickle or other file that is not
    safetensors, JSON or markdown, an SAE or steering-vector folder that its loader refuses, and any
    other truncated or corrupt safetensors file.
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
    others = [f for f in _files(root) if not any(fnmatch(PurePosixPath(f).name, p) for p in PULL_PATTERNS)]
    if others:
        raise ArtifactError(
            f"{root} holds files that are not safetensors, JSON or markdown ({', '.join(others)}): pull would never "
            "fetch them back, and interventions publishes nothing else; move them out of the folder"
        )
    found: dict[str, list[str]] = {"sae": [], "steering_vector": [], "safetensors": []}
    for path in sorted(root.rglob("*.safetensors")):
        rel = path.parent.relative_to(root).as_posix()
        if path.name == SAE_WEIGHTS_NAME and (path.parent / CFG_NAME).is_file():
            load_sae(path.parent)
            found["sae"].append(rel)
        elif path.name == STEERING_VECTOR_NAME and (path.parent / CFG_NAME).is_file():
            load_steering_vector(path.parent)
            found["steering_vector"].append(rel)
        else:
            check_safetensors(path)
            found["safetensors"].append(path.relative_to(root).as_posix())
    return found


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
) -> CommitInfo:
    """Upload ``folder`` to ``repo_id`` in one commit; returns the ``huggingface_hub.CommitInfo``.

    The repo is created if needed; ``revision`` is a branch (created from ``main`` if missing);
    ``tag`` tags the new commit (an existing tag is an error). The folder is checked with
    :func:`check_folder` first, so nothing reaches the Hub that our loaders would refuse.
    """
    from huggingface_hub import HfApi

    check_folder(folder)
    api = HfApi(endpoint=resolve_endpoint(endpoint), token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
        allow_patterns=list(PULL_PATTERNS),
    )
    if tag is not None:
        api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type=repo_type)
    return info


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
) -> Path:
    """Download the JSON, safetensors and Markdown files of ``repo_id`` (or of one ``subfolder``).

    Returns the local folder (the snapshot in the Hub cache, or ``local_dir``), joined with
    ``subfolder``. ``local_files_only=True`` (or ``HF_HUB_OFFLINE=1``) reads the Hub cache only.
    Raises :class:`ArtifactError` when the result holds no safetensors file, naming what the repo
    holds instead (a pickle is listed, never downloaded).
    """
    from huggingface_hub import snapshot_download

    sub = subfolder.strip("/") if subfolder else None
    patterns = [f"{sub}/{p}" for p in PULL_PATTERNS] + ["README.md"] if sub else list(PULL_PATTERNS)
    ep = resolve_endpoint(endpoint)
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
    if path.is_dir() and any(path.rglob("*.safetensors")):
        return path
    where = f"{repo_id}@{revision or 'main'}" + (f" subfolder {sub!r}" if sub else "")
    files = _remote_files(repo_id, revision, repo_type, token, ep) if not local_files_only else None
    if files is None:
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
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
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return sorted(
            HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision, repo_type=repo_type)
        )
    except Exception:  # the listing only improves the message; the download already told what matters
        return None
