"""Save and load SAEs and steering vectors through ``hub_cards`` (SAELens >= 6 layout for SAEs).

The files say what an artifact was made for (site, layout, steps, branch, base model), and
loading validates everything before a module is built, so a foreign, truncated or pickled file
is refused without touching any model.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch

from .sae import SAE, SAELENS_ARCH, SAEInfo
from .steering import Key, SteeringVector

#: Written where the layout needs a site or base model that the SAE does not record; read back as "".
_UNKNOWN = "unknown"
_SAE_ARCH_BACK = {"standard": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu"}


def save_sae(sae: SAE, folder: str | os.PathLike[str]) -> None:
    from hub_cards.layouts import save_sae as write

    info = sae.info
    meta = {k: v for k, v in asdict(info).items() if k != "extra"} | dict(info.extra)
    meta["base_model"] = info.base_model or _UNKNOWN
    meta["site"] = info.site or _UNKNOWN
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCH[sae.kind],
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "metadata": meta,
    }
    if sae.kind in ("topk", "batchtopk"):
        cfg["k"] = sae.k
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if sae.kind == "jumprelu" else [])
    write(folder, cfg=cfg, tensors={n: getattr(sae, n).detach().contiguous() for n in names})


#: SAELens settings this SAE class does not compute, with the value it does.
_UNSUPPORTED = {"normalize_activations": "none", "reshape_activations": "none", "rescale_acts_by_decoder_norm": False}


def load_sae(folder: str | os.PathLike[str]) -> SAE:
    """An :class:`SAE` from a folder in the SAELens >= 6 layout (ours or SAELens'). Refused
    (``hub_cards.ArtifactError``) when its settings or tensors would make it compute something else."""
    from hub_cards.errors import ArtifactError
    from hub_cards.layouts import load_sae as read

    cfg, tensors = read(folder)
    odd = [f"{k}={cfg[k]!r} (only {v!r} is supported)" for k, v in _UNSUPPORTED.items() if cfg.get(k, v) != v]
    extra = sorted(set(tensors) - {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"})
    if extra:
        odd.append(f"tensors {extra} that this SAE would ignore")
    if odd:
        raise ArtifactError(
            f"{os.fspath(folder)}: cannot load as an interventions SAE without changing what it computes: "
            f"{'; '.join(odd)}"
        )
    meta = dict(cfg["metadata"])
    fields = {
        k: meta.pop(k) for k in ("site", "layout", "base_model", "steps", "branch", "method", "dataset") if k in meta
    }
    for k in ("sae_lens_version", "hook_name", "model_name", "sdk_version"):
        meta.pop(k, None)
    fields.update({k: "" for k in ("site", "base_model") if fields.get(k) == _UNKNOWN})
    kind = _SAE_ARCH_BACK[cfg["architecture"]]
    dtype = getattr(torch, cfg["dtype"])
    sae = SAE(
        cfg["d_in"],
        cfg["d_sae"],
        kind,  # type: ignore[arg-type]
        int(cfg.get("k", 1)),
        info=SAEInfo(**fields, extra=meta),
        dtype=dtype,
        apply_b_dec_to_input=cfg["apply_b_dec_to_input"],
    )
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            if name in tensors:
                getattr(sae, name).copy_(tensors[name])
    return sae.eval()


def _tensor_name(key: Key) -> str:
    return f"direction.{key}" if isinstance(key, str) else f"direction.{key[0]}.step{key[1]}"


def save_steering_vector(vector: SteeringVector, folder: str | os.PathLike[str]) -> None:
    from hub_cards.layouts import save_steering_vector as write

    steps = sorted({k[1] for k in vector.directions if isinstance(k, tuple)}) or None
    cfg = {
        "base_model": vector.base_model or _UNKNOWN,
        "sites": vector.sites,
        "layout": vector.layout,
        "method": vector.method,
        "default_scale": vector.default_scale,
        "normalized": vector.normalized,
        "steps": steps,
        "branch": vector.branch,
        **({"extra": vector.extra} if vector.extra else {}),
    }
    write(folder, cfg=cfg, tensors={_tensor_name(k): v.detach().contiguous() for k, v in vector.directions.items()})


def load_steering_vector(folder: str | os.PathLike[str]) -> SteeringVector:
    from hub_cards.layouts import load_steering_vector as read

    cfg, tensors = read(folder)
    directions: dict[Key, torch.Tensor] = {}
    for site in sorted(cfg["sites"], key=len, reverse=True):  # longest first: 'a.1' before 'a'
        for name in list(tensors):
            rest = name.removeprefix(f"direction.{site}")
            if rest == name:
                continue
            if rest == "":
                directions[site] = tensors.pop(name)
            elif rest.startswith(".step") and rest[5:].isdigit():
                directions[(site, int(rest[5:]))] = tensors.pop(name)
    return SteeringVector(
        directions,
        base_model=cfg["base_model"],
        layout=cfg.get("layout"),
        method=cfg["method"],
        branch=cfg.get("branch", "all"),
        normalized=bool(cfg.get("normalized", False)),
        default_scale=float(cfg.get("default_scale", 1.0)),
        extra=dict(cfg.get("extra") or {}),
    )
