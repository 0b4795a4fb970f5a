"""The SAE format: an :class:`~interventions.sae.SAE` <-> a folder in the SAELens >= 6 layout.

One owner, both directions, one architecture table (:data:`SAELENS_ARCH`)::

    <folder>/cfg.json                  {architecture, d_in, d_sae, dtype, device, apply_b_dec_to_input,
                                        normalize_activations, reshape_activations, [k],
                                        metadata: {sae_lens_version, hook_name, model_name,
                                                   site, layout, steps, branch, base_model, method,
                                                   dataset, metrics, sdk_version, ...}}
    <folder>/sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec (+ threshold)

so ``sae_lens.SAE.load_from_disk`` / ``from_pretrained`` load what we write, and we load what
SAELens writes. SAELens 6 has no inference class for BatchTopK (which is per-token top-k at
inference): it is written as ``topk`` with ``metadata.interventions_architecture = "batchtopk"``.
Metadata keys we do not use (SAELens' own, a user's) are kept in ``SAEInfo.extra`` and written
back; ``hook_name`` / ``model_name`` stand for the site and base model when ours are absent (a
folder saved with SAELens' defaults has neither: it loads with no site).

Loading never changes what an SAE computes: SAELens settings this SAE cannot compute
(activation normalisation, ``hook_z`` reshaping, other architectures, extra tensors) are refused
by name; a TopK SAE with ``rescale_acts_by_decoder_norm=True`` (SAELens' TopK training default) is
loaded with the decoder norms folded into the weights, the same maths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .artifact_fields import check_metrics, check_text, check_version, check_weights, check_window, version_tuple

if TYPE_CHECKING:
    from hub_cards.layouts import Problems

    from .sae import SAE

#: Our kind -> SAELens architecture; read back by the inverse (batchtopk through its metadata marker).
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "topk", "jumprelu": "jumprelu"}
_KIND_OF = {arch: kind for kind, arch in SAELENS_ARCH.items() if kind != "batchtopk"}
#: The SAELens config format version we write (>= 6.0.0 switches SAELens to the nested-metadata format).
SAE_LENS_VERSION = "6.5.0"
_MARKER = "interventions_architecture"
_DTYPES = ("float32", "float64", "float16", "bfloat16")
#: SAELens settings this SAE does not compute, with the one value it does.
_ONLY = {"normalize_activations": "none", "reshape_activations": "none"}
#: Metadata keys that are SAEInfo fields.
_INFO = ("site", "layout", "base_model", "steps", "branch", "method", "dataset", "metrics")
#: Metadata that describes the writer, rewritten on every save.
_WRITER = ("sae_lens_version", "sdk_version", _MARKER)


@dataclass
class SAESpec:
    """What :func:`read` found: constructor arguments, SAEInfo fields and the tensors to copy in."""

    d_in: int
    d_sae: int
    kind: str
    k: int
    dtype: torch.dtype
    apply_b_dec_to_input: bool
    info: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)


def _names(kind: str) -> list[str]:
    return ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if kind == "jumprelu" else [])


def to_files(sae: SAE) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(cfg, tensors)`` of ``sae`` in the SAELens >= 6 layout."""
    from hub_cards.layouts import sdk_version

    info = sae.info
    extra = dict(info.extra)
    meta: dict[str, Any] = {"sae_lens_version": SAE_LENS_VERSION}
    hook_name, model_name = extra.pop("hook_name", info.site or None), extra.pop("model_name", info.base_model or None)
    meta |= {k: v for k, v in (("hook_name", hook_name), ("model_name", model_name)) if v}
    meta |= {k: getattr(info, k) for k in _INFO if k != "metrics"}
    meta |= {"metrics": dict(info.metrics)} if info.metrics else {}
    meta |= {_MARKER: "batchtopk"} if sae.kind == "batchtopk" else {}
    meta |= {"sdk_version": sdk_version()} | {k: v for k, v in extra.items() if k not in _WRITER}
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCH[sae.kind],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        **_ONLY,
        **({"k": sae.k} if sae.kind in ("topk", "batchtopk") else {}),
        "metadata": meta,
    }
    return cfg, {n: getattr(sae, n).detach().contiguous() for n in _names(sae.kind)}


def _check_meta(p: Problems, meta: dict[str, Any]) -> None:
    w = "metadata."
    version = check_version(p, meta, "sae_lens_version", where=w)
    if version is not None and version_tuple(version) < (6,):
        p.add(
            f"'metadata.sae_lens_version' must be >= 6.0.0, got {version!r} "
            "(SAELens would read the old flat format and drop the metadata)"
        )
    check_version(p, meta, "sdk_version", where=w)
    for key in ("hook_name", "model_name", "site", "base_model", "method", "dataset"):
        check_text(p, meta, key, where=w)
    check_window(p, meta, where=w)
    check_metrics(p, meta, where=w)
    p.field(meta, _MARKER, (str,), where=w, required=False)


def spec(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], what: str) -> SAESpec:
    """Validate ``(cfg, tensors)`` as read from (or about to be written to) a folder; refuses
    (``hub_cards.ArtifactError``, every problem listed) anything that would compute something else."""
    from hub_cards.layouts import Problems

    p = Problems()
    arch = p.field(cfg, "architecture", (str,))
    if arch is not None and arch not in _KIND_OF:
        p.add(f"architecture {arch!r} is not supported: interventions computes {sorted(_KIND_OF)} (and batchtopk)")
    d_in, d_sae = p.field(cfg, "d_in", (int,)), p.field(cfg, "d_sae", (int,))
    for key, value in (("d_in", d_in), ("d_sae", d_sae)):
        if value is not None and value <= 0:
            p.add(f"{key!r} must be positive, got {value}")
    dtype = p.choice(cfg, "dtype", _DTYPES)
    check_text(p, cfg, "device")
    centred = p.field(cfg, "apply_b_dec_to_input", (bool,), required=False)
    for key, only in _ONLY.items():
        value = p.field(cfg, key, (str,), required=False)
        if value not in (None, only):
            p.add(f"{key}={value!r} (only {only!r} is supported): this SAE would compute something else")
    rescale = p.field(cfg, "rescale_acts_by_decoder_norm", (bool,), required=False)
    k = 0
    if arch == "topk":
        k = p.field(cfg, "k", (int,)) or 0
        if k and not 0 < k <= (d_sae or k):
            p.add(f"'k' must be in 1..d_sae={d_sae}, got {k}")
    elif rescale:
        p.add(f"rescale_acts_by_decoder_norm=True on a {arch!r} SAE (only TopK SAEs rescale)")
    meta = p.field(cfg, "metadata", (dict,), required=False) or {}
    _check_meta(p, meta)
    kind = "batchtopk" if arch == "topk" and meta.get(_MARKER) == "batchtopk" else _KIND_OF.get(arch or "", "")
    if kind and d_in and d_sae:
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        shapes |= {"threshold": (d_sae,)} if kind == "jumprelu" else {}
        for name, shape in shapes.items():
            got = tensors.get(name)
            if got is None:
                p.add(f"missing tensor {name!r} {list(shape)}")
            elif tuple(got.shape) != shape:
                p.add(
                    f"tensor {name!r} has shape {list(got.shape)}, expected {list(shape)} from d_in={d_in}, d_sae={d_sae}"
                )
        extra = sorted(set(tensors) - set(shapes))
        if extra:
            p.add(f"tensors {extra} that this SAE would ignore")
    check_weights(p, tensors)
    w_dec = tensors.get("W_dec")
    if rescale and w_dec is not None and w_dec.ndim == 2 and bool((w_dec.norm(dim=-1) == 0).any()):
        p.add("rescale_acts_by_decoder_norm=True with decoder rows of norm 0 (the rescaling divides by them)")
    p.raise_if_any(f"{what} is not an SAE that interventions can compute exactly")
    info = {key: meta[key] for key in _INFO if meta.get(key) is not None}
    info.setdefault("site", meta.get("hook_name") or "")
    info.setdefault("base_model", meta.get("model_name") or "")
    kept = {k: v for k, v in meta.items() if k not in (*_INFO, *_WRITER)}
    for ours, theirs in (("site", "hook_name"), ("base_model", "model_name")):
        if kept.get(theirs) == info[ours]:
            del kept[theirs]
    info["extra"] = kept
    tensors = dict(tensors)
    if rescale:
        tensors = _fold_decoder_norms(tensors)
    assert d_in is not None and d_sae is not None and dtype is not None
    return SAESpec(d_in, d_sae, kind, k, getattr(torch, dtype), centred is not False, info, tensors)


def _fold_decoder_norms(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens' TopK with ``rescale_acts_by_decoder_norm`` computes ``topk((x W_enc + b_enc) * n)`` and
    decodes ``(z / n) W_dec``, with ``n`` the decoder row norms: the same maths with ``n`` folded
    into ``W_enc``, ``b_enc`` and ``W_dec`` (as SAELens' own ``fold_W_dec_norm``)."""
    n = t["W_dec"].norm(dim=-1)
    return t | {"W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n, "W_dec": t["W_dec"] / n[:, None]}


def save(sae: SAE, folder: str | os.PathLike[str]) -> None:
    """Write ``sae`` to ``folder``; validated as :func:`read` would first, so nothing is written on refusal."""
    from hub_cards.layouts import SAE_WEIGHTS_NAME, write_artifact

    cfg, tensors = to_files(sae)
    spec(cfg, tensors, f"the SAE for {os.fspath(folder)}")
    write_artifact(folder, SAE_WEIGHTS_NAME, cfg, tensors)


def read(folder: str | os.PathLike[str]) -> SAESpec:
    """Read and validate an SAE folder (ours or SAELens'); see the module docstring for what is refused."""
    from hub_cards.layouts import CFG_NAME, SAE_WEIGHTS_NAME, read_artifact

    cfg, tensors = read_artifact(folder, SAE_WEIGHTS_NAME, "SAE")
    return spec(cfg, tensors, os.path.join(os.fspath(folder), CFG_NAME))
