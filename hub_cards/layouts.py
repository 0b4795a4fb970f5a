"""Artifact folders on disk: a ``cfg.json`` next to one safetensors file, read and written safely.

``hub_cards`` owns files, not formats: what a config means (an SAE in the SAELens >= 6 layout, a
steering vector) belongs to the object that the format stores (``interventions.sae_format``,
``interventions.steering_format``); here every file is checked for what makes it unsafe or
unreadable whatever it holds::

    <repo>/README.md
    <repo>/<site>/cfg.json + sae_weights.safetensors          an SAE (SAELens >= 6 layout)
    <repo>/<vector>/cfg.json + steering_vector.safetensors    a steering vector
    <repo>/config.json + model.safetensors                    a trained torch model

Only JSON and safetensors are ever read: a folder that holds a pickle (``*.pt``, ``*.bin``,
``*.pkl``, ``*.ckpt``) instead is refused with :class:`ArtifactError`, never unpickled. Untrusted
files are bounded before they are parsed: a safetensors header over :data:`MAX_HEADER_BYTES` or a
JSON file over :data:`MAX_JSON_BYTES` is refused unread, JSON nested deeper than
:data:`MAX_JSON_DEPTH` or holding NaN / Infinity is refused naming the place, and a file that is a
symlink to something outside its folder is refused (the Hub cache's links into its own ``blobs``
are fine). Writes go through a temporary file and a rename, so a planted symlink is replaced, not
written through, and a refused write leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CFG_NAME",
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "PICKLE_SUFFIXES",
    "SAE_WEIGHTS_NAME",
    "STEERING_VECTOR_NAME",
    "ArtifactError",
    "Problems",
    "atomic_write",
    "check_safetensors",
    "find_pickles",
    "outside_links",
    "read_artifact",
    "read_json",
    "read_safetensors",
    "sdk_version",
    "walk_files",
    "write_artifact",
    "write_text",
]

CFG_NAME = "cfg.json"
SAE_WEIGHTS_NAME = "sae_weights.safetensors"
STEERING_VECTOR_NAME = "steering_vector.safetensors"
#: Files that hold pickles; refused wherever safetensors are expected.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
#: Largest safetensors header read (about 80,000 tensors); safetensors itself allows 100 MB.
MAX_HEADER_BYTES = 8 << 20
#: Largest JSON file read (a config, an index).
MAX_JSON_BYTES = 4 << 20
#: Deepest nesting of lists and objects accepted in a JSON file or a safetensors header.
MAX_JSON_DEPTH = 32


def sdk_version() -> str:
    """The installed ``interventions`` version, read from the distribution (never imports the package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interventions")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# ------------------------------------------------------------------------------------------ folders


def walk_files(root: Path) -> Iterator[Path]:
    """Every file or symlink under ``root``, sorted, without following symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in sorted(filenames + links):
            yield Path(dirpath) / name


def find_pickles(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (relative to ``folder``, sorted) of every pickle-format file under ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in walk_files(root) if p.suffix.lower() in PICKLE_SUFFIXES)


def _allowed_roots(root: Path) -> list[Path]:
    """Where the files of ``root`` may live: inside it, and for a Hub cache snapshot, its ``blobs``."""
    roots = [root.resolve()]
    for parent in root.absolute().parents:
        if parent.name == "snapshots" and (parent.parent / "blobs").is_dir():
            roots.append((parent.parent / "blobs").resolve())
            break
    return roots


def outside_links(folder: str | os.PathLike[str]) -> list[str]:
    """``"path -> target"`` for every symlink under ``folder`` that leads outside it (sorted)."""
    root = Path(folder)
    roots = _allowed_roots(root)
    out = []
    for path in walk_files(root):
        if path.is_symlink():
            target = path.resolve()
            if not any(target.is_relative_to(r) for r in roots):
                out.append(f"{path.relative_to(root).as_posix()} -> {target}")
    return out


def _check_inside(path: Path, root: Path) -> None:
    """Refuse ``path`` when it (or a folder on the way) is a symlink that leads outside ``root``."""
    target = path.resolve()
    if not any(target.is_relative_to(r) for r in _allowed_roots(root)):
        raise ArtifactError(
            f"{path} is a symlink to {target}, outside {root}: interventions reads nothing outside an "
            "artifact's folder; replace the link with the file itself"
        )


# --------------------------------------------------------------------------------------------- JSON


def _check_tree(value: Any, what: str) -> None:
    """Refuse NaN / Infinity and nesting deeper than MAX_JSON_DEPTH, naming where (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ArtifactError(f"{what}: {where or 'the value'} is {v}; only finite numbers are accepted")
        if isinstance(v, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise ArtifactError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels at {where or 'the top'}")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((x, f"{where}[{k!r}]" if where or isinstance(k, int) else str(k), depth + 1) for k, x in items)


def loads_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` that refuses, as :class:`ArtifactError`, what no config of ours holds."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ArtifactError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} is not valid JSON: {e}") from None
    _check_tree(value, what)
    return value


def read_json(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> Any:
    """A JSON file, bounded (:data:`MAX_JSON_BYTES`, :data:`MAX_JSON_DEPTH`, finite numbers only)."""
    path = Path(path)
    _check_inside(path, Path(root) if root is not None else path.parent)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ArtifactError(f"{path} has {size} bytes; JSON files of artifacts are read up to {MAX_JSON_BYTES}")
    return loads_json(path.read_bytes(), str(path))


# -------------------------------------------------------------------------------------- safetensors


#: Bytes per element of every safetensors dtype.
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2}
_ITEMSIZE |= {"U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8}


def _check_entry(path: Path, key: str, entry: Any) -> None:
    """One tensor's header entry: a known dtype, a shape, and offsets spanning exactly its bytes."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(i) is int and i >= 0 for i in offsets)):
        raise ArtifactError(f"{path} is not a safetensors file: data_offsets of {key!r} is not [begin, end]")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if dtype not in _ITEMSIZE or not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ArtifactError(f"{path} is not a safetensors file: {key!r} has dtype {dtype!r} and shape {shape!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
        raise ArtifactError(
            f"{path} is not a safetensors file: {key!r} ({dtype} {shape}) spans bytes {offsets[0]}..{offsets[1]}"
        )


def check_safetensors(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The header of a complete safetensors file, or :class:`ArtifactError` saying why it is unusable.

    Reads the header only, once, bounded by :data:`MAX_HEADER_BYTES`; a truncated file (an
    interrupted upload or download) gets a message with the sizes rather than a parser error.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    _check_inside(path, Path(root) if root is not None else path.parent)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path} is truncated or not a safetensors file: {size} bytes, shorter than its header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise ArtifactError(
                f"{path}: its header claims {n} bytes; interventions reads safetensors headers up to "
                f"{MAX_HEADER_BYTES} bytes (this file is not one of its artifacts, or is damaged)"
            )
        if n > size - 8:
            raise ArtifactError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but the file has {size}"
            )
        raw = f.read(n)
    header = loads_json(raw, f"{path} is not a safetensors file: its header") if raw.strip() else None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is not a safetensors file: its header is not a JSON object")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        _check_entry(path, key, entry)
        end = max(end, entry["data_offsets"][1])
    if size < 8 + n + end:
        raise ArtifactError(
            f"{path} is truncated: it has {size} bytes but its header describes {8 + n + end} "
            "(an interrupted upload or download?); publish or download it again"
        )
    return header


def read_safetensors(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file checked by :func:`check_safetensors`."""
    check_safetensors(path, root=root)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{path} is not a valid safetensors file: {e}") from None


# ------------------------------------------------------------------------------------------- writing


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the new one, a symlink at
    ``path`` is replaced (never written through), and the file gets the user's umask."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # created with the user's umask
    mode = tmp.stat().st_mode & 0o777
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors' writer recreates the file 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_artifact(
    folder: str | os.PathLike[str], weights_name: str, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``<folder>/cfg.json`` (strict JSON) and ``<folder>/<weights_name>``; returns the folder.

    The config is serialised before anything touches the disk, so a config that JSON cannot hold
    (NaN, an object) is refused with nothing written.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    try:
        text = json.dumps(dict(cfg), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"the config for {folder} cannot be written as JSON: {e}") from None
    plain = {name: t.detach().cpu().clone().contiguous() for name, t in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / weights_name, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))
    write_text(folder / CFG_NAME, text)
    return folder


def read_artifact(
    folder: str | os.PathLike[str], weights_name: str, kind: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(cfg, tensors)`` of an artifact folder, every file checked as the module docstring says.

    Refused: no folder, a pickle instead of ``weights_name``, a missing ``cfg.json``, a config that
    is not a bounded JSON object, a truncated or corrupt safetensors file, a file linked from outside.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder: expected a {kind} folder with {CFG_NAME} and {weights_name}")
    weights = folder / weights_name
    if not weights.is_file():
        pickles = find_pickles(folder)
        if pickles:
            raise ArtifactError(
                f"{folder} holds a pickle ({', '.join(pickles)}) instead of {weights_name}: interventions loads "
                "only safetensors and never unpickles; convert the weights with safetensors.torch.save_file"
            )
        present = sorted(p.name for p in folder.iterdir())
        raise ArtifactError(f"{folder} has no {weights_name} (it holds {present or 'nothing'})")
    cfg_path = folder / CFG_NAME
    if not cfg_path.is_file():
        raise ArtifactError(f"{folder} has no {CFG_NAME} next to {weights_name}")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg, read_safetensors(weights)


# ---------------------------------------------------------------------------------------- validation


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


class Problems:
    """Collects every problem of a config so that one :class:`ArtifactError` lists them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def field(
        self, d: Mapping[str, Any], key: str, types: tuple[type, ...], *, where: str = "", required: bool = True
    ) -> Any:
        """``d[key]`` when it has one of ``types`` (an int counts as a float; a bool as neither), else None."""
        name = f"{where}{key}"
        if key not in d:
            if required:
                self.add(f"missing {name!r} ({_type_name(types)})")
            return None
        value = d[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            self.add(f"{name!r} must be {_type_name(types)}, got {type(value).__name__} {shown}")
            return None
        return value

    def choice(self, d: Mapping[str, Any], key: str, choices: tuple[str, ...], *, where: str = "") -> Any:
        value = self.field(d, key, (str,), where=where)
        if value is not None and value not in choices:
            self.add(f"'{where}{key}' must be one of {list(choices)}, got {value!r}")
            return None
        return value

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise ArtifactError(f"{what}:\n  - " + "\n  - ".join(self.items))
