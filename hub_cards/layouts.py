"""On-disk layouts of the artifacts we publish: SAEs (SAELens >= 6), steering vectors, torch models.

Each artifact is one folder holding a ``cfg.json`` and one safetensors file; a Hub repo holds one or
more such folders next to its ``README.md`` card::

    <repo>/README.md
    <repo>/<site>/cfg.json                       SAE: SAELens >= 6 config, our keys inside "metadata"
    <repo>/<site>/sae_weights.safetensors        W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec
                                                 (+ threshold [d_sae] for jumprelu)
    <repo>/<vector>/cfg.json                     steering vector: base_model, sites, layout, method, ...
    <repo>/<vector>/steering_vector.safetensors  direction.<site> or direction.<site>.step<k>

The SAE layout is SAELens' own, so ``sae_lens.SAE.from_pretrained("<repo>", "<site>")`` and
``SAE.load_from_disk("<repo>/<site>")`` load what :func:`save_sae` writes, unchanged. SAELens reads
a config without ``metadata.sae_lens_version >= 6`` as its old flat format (and drops the metadata),
so :func:`save_sae` always writes one. SAELens 6 has no inference class for ``batchtopk``: a
BatchTopK SAE applies a per-token top-k at inference, which is SAELens' ``topk``, so it is written
as ``topk`` with ``metadata.interventions_architecture = "batchtopk"`` and read back as
``batchtopk``.

Only JSON and safetensors are ever read: a folder that holds a pickle (``*.pt``, ``*.bin``,
``*.pkl``, ``*.ckpt``) instead is refused with :class:`ArtifactError`, never unpickled.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ArtifactError",
    "CFG_NAME",
    "PICKLE_SUFFIXES",
    "SAE_ARCHITECTURES",
    "SAE_LENS_VERSION",
    "SAE_WEIGHTS_NAME",
    "STEERING_VECTOR_NAME",
    "check_safetensors",
    "find_pickles",
    "load_sae",
    "load_steering_vector",
    "read_safetensors",
    "save_sae",
    "save_steering_vector",
    "sdk_version",
]

CFG_NAME = "cfg.json"
SAE_WEIGHTS_NAME = "sae_weights.safetensors"
STEERING_VECTOR_NAME = "steering_vector.safetensors"
#: The SAELens config format version we write (>= 6.0.0 switches SAELens to the nested-metadata format).
SAE_LENS_VERSION = "6.5.0"
#: Architectures we write; "batchtopk" is stored as SAELens "topk" (see the module docstring).
SAE_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")
_DTYPES = ("float32", "float64", "float16", "bfloat16")
_NORMALIZE = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
_RESHAPE = ("none", "hook_z")
_BRANCHES = ("cond", "uncond", "all")
#: Files that hold pickles; refused wherever safetensors are expected.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
_BATCHTOPK_KEY = "interventions_architecture"
_MAX_HEADER = 100_000_000


def sdk_version() -> str:
    """The installed ``interventions`` version, read from the distribution (never imports the package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interventions")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def find_pickles(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (relative to ``folder``, sorted) of every pickle-format file under ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)


# --------------------------------------------------------------------------------------------- safetensors


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Raise :class:`ArtifactError` unless ``path`` is a complete safetensors file (reads the header only).

    A truncated file (an interrupted upload or download) gets a message with the sizes rather than
    a parser error.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path} is truncated or not a safetensors file: {size} bytes, shorter than its header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise ArtifactError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but the file has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is not a safetensors file: its header is not a JSON object")
    ends = []
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if key != "__metadata__" and isinstance(entry, dict) else [0, 0]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(i, int) for i in offsets)):
            raise ArtifactError(f"{path} is not a safetensors file: data_offsets of {key!r} is not [begin, end]")
        ends.append(offsets[1])
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        raise ArtifactError(
            f"{path} is truncated: it has {size} bytes but its header describes {needed} "
            "(an interrupted upload or download?); publish or download it again"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{path} is not a valid safetensors file: {e}") from None


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or :class:`ArtifactError` saying why the file is unusable."""
    check_safetensors(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise ArtifactError(f"{path} is not a valid safetensors file: {e}") from None


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    plain = {name: t.detach().cpu().clone().contiguous() for name, t in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def _json_copy(cfg: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """A deep copy of ``cfg`` as it will read back from JSON (tuples become lists)."""
    try:
        return dict(json.loads(json.dumps(dict(cfg), allow_nan=False)))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"the config for {folder} cannot be written as JSON: {e}") from None


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cfg(folder: Path, weights_name: str, kind: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder: expected a {kind} folder with {CFG_NAME} and {weights_name}")
    pickles = find_pickles(folder)
    if not (folder / weights_name).is_file():
        present = sorted(p.name for p in folder.iterdir())
        if pickles:
            raise ArtifactError(
                f"{folder} holds a pickle ({', '.join(pickles)}) instead of {weights_name}: interventions loads "
                "only safetensors and never unpickles; convert the weights with safetensors.torch.save_file"
            )
        raise ArtifactError(f"{folder} has no {weights_name} (it holds {present or 'nothing'})")
    cfg_path = folder / CFG_NAME
    if not cfg_path.is_file():
        raise ArtifactError(f"{folder} has no {CFG_NAME} next to {weights_name}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


# ------------------------------------------------------------------------------------------- validation


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


class _Problems:
    """Collects every problem of a config so that one error lists them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def field(
        self, d: Mapping[str, Any], key: str, types: tuple[type, ...], *, where: str = "", required: bool = True
    ) -> Any:
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
            self.add(f"{name!r} must be {_type_name(types)}, got {type(value).__name__} {value!r}")
            return None
        return value

    def choice(self, d: Mapping[str, Any], key: str, choices: tuple[str, ...], *, where: str = "") -> Any:
        value = self.field(d, key, (str,), where=where)
        if value is not None and value not in choices:
            self.add(f"{where}{key!r} must be one of {list(choices)}, got {value!r}")
        return value

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise ArtifactError(f"{what}:\n  - " + "\n  - ".join(self.items))


def _check_steps(p: _Problems, d: Mapping[str, Any], *, where: str = "") -> None:
    steps = p.field(d, "steps", (list, type(None)), where=where, required=False)
    if isinstance(steps, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        p.add(f"{where}'steps' must be a list of step indices (int) or null, got {steps!r}")


def _check_branch(p: _Problems, d: Mapping[str, Any], *, where: str = "") -> None:
    branch = p.field(d, "branch", (str, type(None)), where=where, required=False)
    if isinstance(branch, str) and branch not in _BRANCHES:
        p.add(f"{where}'branch' must be one of {list(_BRANCHES)} or null, got {branch!r}")


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if m is None:
        return False
    return tuple(int(g or 0) for g in m.groups()) >= minimum


def _check_sae_cfg(cfg: Mapping[str, Any], what: str) -> None:
    p = _Problems()
    arch = p.field(cfg, "architecture", (str,))
    if arch is not None and arch not in SAE_ARCHITECTURES:
        p.add(f"'architecture' must be one of {list(SAE_ARCHITECTURES)}, got {arch!r}")
    d_in = p.field(cfg, "d_in", (int,))
    d_sae = p.field(cfg, "d_sae", (int,))
    for key, value in (("d_in", d_in), ("d_sae", d_sae)):
        if value is not None and value <= 0:
            p.add(f"{key!r} must be positive, got {value}")
    p.choice(cfg, "dtype", _DTYPES)
    p.field(cfg, "device", (str,))
    p.field(cfg, "apply_b_dec_to_input", (bool,))
    p.choice(cfg, "normalize_activations", _NORMALIZE)
    p.choice(cfg, "reshape_activations", _RESHAPE)
    if arch in ("topk", "batchtopk"):
        k = p.field(cfg, "k", (int,))
        if k is not None and not (0 < k <= (d_sae or k)):
            p.add(f"'k' must be in 1..d_sae={d_sae}, got {k}")
        p.field(cfg, "rescale_acts_by_decoder_norm", (bool,), required=False)
    meta = p.field(cfg, "metadata", (dict,))
    if meta is not None:
        w = "metadata."
        version = p.field(meta, "sae_lens_version", (str,), where=w)
        if version is not None and not _version_at_least(version, (6, 0, 0)):
            p.add(
                f"'metadata.sae_lens_version' must be >= 6.0.0, got {version!r} "
                "(SAELens would read the old flat format and drop the metadata)"
            )
        p.field(meta, "hook_name", (str,), where=w)
        p.field(meta, "model_name", (str,), where=w)
        for key in ("site", "layout", "base_model", "method", "sdk_version"):
            p.field(meta, key, (str, type(None)), where=w, required=False)
        _check_steps(p, meta, where=w)
        _check_branch(p, meta, where=w)
    p.raise_if_any(f"{what} is not a valid SAELens >= 6 SAE config")


def _sae_shapes(cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if cfg["architecture"] == "jumprelu":
        shapes["threshold"] = (d_sae,)
    return shapes


def _check_sae_tensors(
    cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], what: str, *, allow_extra: bool
) -> None:
    p = _Problems()
    shapes = _sae_shapes(cfg)
    for name, shape in shapes.items():
        if name not in tensors:
            p.add(f"missing tensor {name!r} {list(shape)}")
        elif tuple(tensors[name].shape) != shape:
            p.add(
                f"tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)} "
                f"from d_in={cfg['d_in']}, d_sae={cfg['d_sae']}"
            )
        elif not tensors[name].is_floating_point():
            p.add(f"tensor {name!r} must be floating point, got {tensors[name].dtype}")
    extra = sorted(set(tensors) - set(shapes))
    if extra and not allow_extra:
        p.add(f"unexpected tensors {extra} (SAELens would refuse them; expected {sorted(shapes)})")
    p.raise_if_any(f"{what} does not match its config")


# ------------------------------------------------------------------------------------------------ SAEs


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def save_sae(folder: str | os.PathLike[str], *, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write an SAE in the SAELens >= 6 layout: ``<folder>/cfg.json`` + ``<folder>/sae_weights.safetensors``.

    ``cfg`` needs ``architecture`` (one of :data:`SAE_ARCHITECTURES`; ``k`` for the top-k ones) and
    ``metadata`` with at least ``site`` (or ``hook_name``) and ``base_model`` (or ``model_name``);
    our own keys (``site``, ``layout``, ``steps``, ``branch``, ``base_model``, ``method``,
    ``sdk_version``) go inside ``metadata``. Filled in when absent: ``d_in``/``d_sae``/``dtype`` from
    ``W_enc``, ``device="cpu"``, ``apply_b_dec_to_input=True``, ``normalize_activations="none"``,
    ``reshape_activations="none"``, ``metadata.sae_lens_version``, ``hook_name`` (= site),
    ``model_name`` (= base_model) and ``sdk_version``. ``tensors`` must be exactly ``W_enc``
    [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in] (+ ``threshold``
    [d_sae] for jumprelu), all of ``cfg["dtype"]``. Everything is validated as :func:`load_sae`
    would before anything is written. Returns the folder.
    """
    folder = Path(folder)
    out = _json_copy(cfg, folder)
    meta: dict[str, Any] = dict(out.get("metadata") or {})
    w_enc = tensors.get("W_enc")
    if w_enc is not None and w_enc.ndim == 2:
        out.setdefault("d_in", int(w_enc.shape[0]))
        out.setdefault("d_sae", int(w_enc.shape[1]))
        out.setdefault("dtype", _dtype_name(w_enc))
    out.setdefault("device", "cpu")
    out.setdefault("apply_b_dec_to_input", True)
    out.setdefault("normalize_activations", "none")
    out.setdefault("reshape_activations", "none")
    meta.setdefault("sae_lens_version", SAE_LENS_VERSION)
    if "site" in meta:
        meta.setdefault("hook_name", meta["site"])
    if "base_model" in meta:
        meta.setdefault("model_name", meta["base_model"])
    meta.setdefault("sdk_version", sdk_version())
    out["metadata"] = meta
    what = f"SAE config for {folder}"
    _check_sae_cfg(out, what)
    _check_sae_tensors(out, tensors, f"SAE tensors for {folder}", allow_extra=False)
    bad = {n: _dtype_name(t) for n, t in tensors.items() if _dtype_name(t) != out["dtype"]}
    if bad:
        raise ArtifactError(f"{what}: tensors {bad} differ from cfg dtype {out['dtype']!r}; cast them first")
    if out["architecture"] == "batchtopk":
        out["architecture"] = "topk"
        meta[_BATCHTOPK_KEY] = "batchtopk"
    first = ("architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations")
    out = {k: out[k] for k in first} | {k: v for k, v in out.items() if k not in first and k != "metadata"}
    out["metadata"] = meta
    folder.mkdir(parents=True, exist_ok=True)
    _write_safetensors(folder / SAE_WEIGHTS_NAME, {n: tensors[n] for n in _sae_shapes(out)})
    _write_json(folder / CFG_NAME, out)
    return folder


def load_sae(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate an SAE folder in the SAELens >= 6 layout; returns ``(cfg, tensors)``.

    Refused with :class:`ArtifactError`: a folder with a pickle instead of
    ``sae_weights.safetensors``, a truncated or corrupt safetensors file, a ``cfg.json`` with missing
    or wrongly typed fields (or ``sae_lens_version`` < 6), tensors whose names or shapes disagree
    with ``d_in``/``d_sae``. Tensors keep the dtype they were stored in. SAEs that SAELens itself
    published (standard, topk, jumprelu) load too; extra tensors (``scaling_factor``...) are returned
    as they are.
    """
    folder = Path(folder)
    cfg = _read_cfg(folder, SAE_WEIGHTS_NAME, "SAE")
    what = str(folder / CFG_NAME)
    _check_sae_cfg(cfg, what)
    tensors = read_safetensors(folder / SAE_WEIGHTS_NAME)
    _check_sae_tensors(cfg, tensors, str(folder / SAE_WEIGHTS_NAME), allow_extra=True)
    meta = cfg["metadata"]
    if cfg["architecture"] == "topk" and meta.get(_BATCHTOPK_KEY) == "batchtopk":
        cfg["architecture"] = "batchtopk"
        del meta[_BATCHTOPK_KEY]
    return cfg, tensors


# ------------------------------------------------------------------------------------- steering vectors

_STEP_RE = re.compile(r"^(?P<site>.+)\.step(?P<step>\d+)$")


def _parse_direction_name(name: str, sites: list[str]) -> tuple[str, int | None] | None:
    if not name.startswith("direction."):
        return None
    rest = name[len("direction.") :]
    if rest in sites:
        return rest, None
    m = _STEP_RE.match(rest)
    if m and m["site"] in sites:
        return m["site"], int(m["step"])
    return None


def _check_sv_cfg(cfg: Mapping[str, Any], what: str) -> None:
    p = _Problems()
    p.field(cfg, "base_model", (str,))
    sites = p.field(cfg, "sites", (list,))
    if sites is not None and (not sites or not all(isinstance(s, str) and s for s in sites)):
        p.add(f"'sites' must be a non-empty list of site names (str), got {sites!r}")
    elif sites is not None and len(set(sites)) != len(sites):
        p.add(f"'sites' has duplicates: {sites!r}")
    p.field(cfg, "layout", (str, type(None)))
    p.field(cfg, "method", (str,))
    p.field(cfg, "default_scale", (float,))
    p.field(cfg, "normalized", (bool,))
    if "steps" not in cfg:
        p.add("missing 'steps' (list of int or null)")
    _check_steps(p, cfg)
    if "branch" not in cfg:
        p.add("missing 'branch' ('cond', 'uncond', 'all' or null)")
    _check_branch(p, cfg)
    p.field(cfg, "sdk_version", (str,))
    p.raise_if_any(f"{what} is not a valid steering-vector config")


def _check_sv_tensors(cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], what: str) -> None:
    p = _Problems()
    sites: list[str] = cfg["sites"]
    shapes: dict[str, tuple[int, ...]] = {}
    steps = cfg.get("steps")
    for name in sorted(tensors):
        parsed = _parse_direction_name(name, sites)
        if parsed is None:
            p.add(f"tensor {name!r} is not 'direction.<site>' or 'direction.<site>.step<k>' for a site in {sites}")
            continue
        site, step = parsed
        t = tensors[name]
        if not t.is_floating_point() or t.ndim == 0:
            p.add(f"tensor {name!r} must be a floating-point vector, got {t.dtype} of shape {list(t.shape)}")
            continue
        if step is not None and isinstance(steps, list) and step not in steps:
            p.add(f"tensor {name!r} is for step {step}, which is not in the config's steps {steps}")
        shape = shapes.setdefault(site, tuple(t.shape))
        if tuple(t.shape) != shape:
            p.add(f"tensor {name!r} has shape {list(t.shape)}, other directions of site {site!r} have {list(shape)}")
    missing = [s for s in sites if s not in shapes]
    if missing:
        p.add(f"no direction tensor for sites {missing}")
    p.raise_if_any(f"{what} does not match its config")


def save_steering_vector(
    folder: str | os.PathLike[str], *, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``<folder>/cfg.json`` + ``<folder>/steering_vector.safetensors``.

    ``cfg`` needs ``base_model``, ``sites`` (list of site names) and ``method``; filled in when
    absent: ``layout=None``, ``default_scale=1.0``, ``normalized=False``, ``steps=None`` (all
    steps), ``branch="all"``, ``sdk_version``. Tensors are named ``direction.<site>`` (every step)
    or ``direction.<site>.step<k>`` (step ``k`` only), one or more per site, one shape per site.
    Validated as :func:`load_steering_vector` would before anything is written. Returns the folder.
    """
    folder = Path(folder)
    out = _json_copy(cfg, folder)
    out.setdefault("layout", None)
    out.setdefault("default_scale", 1.0)
    out.setdefault("normalized", False)
    out.setdefault("steps", None)
    out.setdefault("branch", "all")
    out.setdefault("sdk_version", sdk_version())
    what = f"steering-vector config for {folder}"
    _check_sv_cfg(out, what)
    _check_sv_tensors(out, tensors, f"steering-vector tensors for {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    _write_safetensors(folder / STEERING_VECTOR_NAME, tensors)
    _write_json(folder / CFG_NAME, out)
    return folder


def load_steering_vector(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate a steering-vector folder; returns ``(cfg, tensors)``.

    Refused with :class:`ArtifactError` like :func:`load_sae`: a pickle instead of safetensors, a
    truncated file, missing or wrongly typed ``cfg.json`` fields, tensors named for sites the config
    does not list, sites without a tensor, or directions of one site with different shapes.
    """
    folder = Path(folder)
    cfg = _read_cfg(folder, STEERING_VECTOR_NAME, "steering-vector")
    _check_sv_cfg(cfg, str(folder / CFG_NAME))
    tensors = read_safetensors(folder / STEERING_VECTOR_NAME)
    _check_sv_tensors(cfg, tensors, str(folder / STEERING_VECTOR_NAME))
    return cfg, tensors
