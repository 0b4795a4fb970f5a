"""Load SAEs saved by EleutherAI's sparsify, and SAeUron's (a fork of it), as an :class:`~interventions.sae.SAE`.

Their layout is a folder per hookpoint::

    <hookpoint>/cfg.json           {d_in, k, num_latents, expansion_factor, activation, ...}
    <hookpoint>/sae.safetensors    encoder.weight [M, d_in], encoder.bias [M], W_dec [M, d_in], b_dec [d_in]

and both compute ``z = topk(relu(W_enc (x - b_dec) + b_enc))``, ``x_hat = z W_dec + b_dec``, which
is our ``topk`` SAE with ``W_enc = encoder.weight.T``. Only safetensors and JSON are read (bounded,
through :mod:`hub_cards`). Training-only settings are accepted (``normalize_decoder``,
``multi_topk``; SAeUron's ``batch_topk`` and ``sample_topk``, which its own loader switches off for
inference); settings that change what the SAE computes are refused by name: ``transcode``,
``skip_connection`` (``W_skip``), ``activation="groupmax"``, sparsify's older ``signed``, SAeUron's
``input_unit_norm`` (per-token standardisation), any key we do not know, and a folder saved
without its decoder. Why our own reader: sparsify needs ``simple_parsing``, ``natsort``,
``datasets`` and ``accelerate`` to load a file that is two tensors and a dict.

Example, for SAeUron's SD 1.5 style SAE (its hookpoint folder from the Hub)::

    sae = load_sparsify(folder / "unet.up_blocks.1.attentions.1", site="unet.up_blocks.1.attentions.1:output.0", layout="BCHW")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .sae import SAE, SAEInfo

__all__ = ["SPARSIFY_WEIGHTS", "load_sparsify"]

SPARSIFY_WEIGHTS = "sae.safetensors"
#: settings that do not change inference, with the value of each that is always fine
_TRAINING_ONLY = {"normalize_decoder": None, "multi_topk": None, "batch_topk": None, "sample_topk": None}
#: settings we compute only at one value
_ONLY = {"activation": "topk", "transcode": False, "skip_connection": False, "signed": False, "input_unit_norm": False}
_SIZES = ("d_in", "k", "num_latents", "expansion_factor")
_TENSORS = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}


def _int(cfg: dict[str, Any], key: str, where: str, minimum: int) -> int:
    value = cfg.get(key, 0 if key in ("num_latents", "expansion_factor") else None)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _error(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _error(message: str) -> Exception:
    from hub_cards import ArtifactError

    return ArtifactError(message)


def _check_settings(cfg: dict[str, Any], where: str) -> None:
    unknown = sorted(set(cfg) - set(_TRAINING_ONLY) - set(_ONLY) - set(_SIZES))
    if unknown:
        raise _error(f"{where}: unknown sparsify setting(s) {unknown}; refusing an SAE that may compute something else")
    wrong = [f"{k}={cfg[k]!r} (only {v!r} is supported)" for k, v in _ONLY.items() if k in cfg and cfg[k] != v]
    if wrong:
        raise _error(f"{where}: this SAE cannot be computed here: {', '.join(wrong)}")


def load_sparsify(folder: str | os.PathLike[str], *, site: str | None = None, layout: str | None = None) -> SAE:
    """The SAE in a sparsify / SAeUron hookpoint folder, computing exactly what sparsify's
    ``SparseCoder.encode``/``decode`` compute (top-k per token).

    ``site`` defaults to the folder's name (sparsify names it after the hookpoint, a module path;
    a module returning a tuple needs ``:output.0``); ``layout`` is how the site's tensor becomes
    tokens (``"BCHW"`` for SAeUron's UNet blocks). Raises ``hub_cards.ArtifactError`` naming what
    is wrong or unsupported.
    """
    from hub_cards.layouts import read_artifact

    folder = Path(folder)
    cfg, tensors = read_artifact(folder, SPARSIFY_WEIGHTS, "sparsify SAE")
    where = str(folder / "cfg.json")
    _check_settings(cfg, where)
    d_in, k = _int(cfg, "d_in", where, 1), _int(cfg, "k", where, 1)
    num_latents = _int(cfg, "num_latents", where, 0) or d_in * _int(cfg, "expansion_factor", where, 1)
    if k > num_latents:
        raise _error(f"{where}: k={k} exceeds the {num_latents} latents")
    if "W_dec" not in tensors and "encoder.weight" in tensors:
        raise _error(
            f"{folder / SPARSIFY_WEIGHTS}: no W_dec (saved with decoder=False): an encoder alone cannot reconstruct"
        )
    if set(tensors) != _TENSORS:
        raise _error(f"{folder / SPARSIFY_WEIGHTS}: expected tensors {sorted(_TENSORS)}, found {sorted(tensors)}")
    expected = {
        "encoder.weight": (num_latents, d_in),
        "encoder.bias": (num_latents,),
        "W_dec": (num_latents, d_in),
        "b_dec": (d_in,),
    }
    bad = [f"{n} {tuple(tensors[n].shape)} (expected {s})" for n, s in expected.items() if tuple(tensors[n].shape) != s]
    dtypes = {t.dtype for t in tensors.values()}
    if bad or len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        why = ", ".join(bad) if bad else f"mixed or non-float dtypes {sorted(map(str, dtypes))}"
        raise _error(
            f"{folder / SPARSIFY_WEIGHTS}: tensors do not match cfg.json (d_in={d_in}, num_latents={num_latents}): {why}"
        )
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise _error(f"{folder / SPARSIFY_WEIGHTS}: non-finite weights")
    info = SAEInfo(
        site=site if site is not None else folder.name,
        layout=layout,
        method="sparsify TopK SAE",
        extra={"sparsify_cfg": cfg},
    )
    sae = SAE(d_in, num_latents, "topk", k, info=info, dtype=dtypes.pop())
    with torch.no_grad():
        sae.W_enc.copy_(tensors["encoder.weight"].t())
        sae.b_enc.copy_(tensors["encoder.bias"])
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_dec.copy_(tensors["b_dec"])
    return sae.eval()
