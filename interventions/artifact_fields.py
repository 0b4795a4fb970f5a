"""Checks of the fields every artifact records (site, layout, steps, branch, versions, metrics, weights).

Shared by the SAE and steering-vector formats so that both accept the same window vocabulary
(the core's :data:`~interventions.context.BRANCHES`) and refuse the same hostile values: NaN or
Infinity, versions thousands of digits long, weights that are not finite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .context import BRANCHES

if TYPE_CHECKING:
    import torch

    from hub_cards.layouts import Problems

#: Branch values an artifact may record: "all" (or null, read as "all") and every branch an adapter labels.
BRANCH_VALUES = ("all", *BRANCHES)
_VERSION = re.compile(r"\d{1,6}(\.\d{1,6}){0,3}([.+-][0-9A-Za-z.+-]{0,40})?")
_MAX_TEXT = 1000


def check_text(p: Problems, d: Mapping[str, Any], key: str, *, where: str = "", required: bool = False) -> Any:
    """A short string field (null allowed unless ``required``); over 1,000 characters is refused."""
    value = p.field(d, key, (str,) if required else (str, type(None)), where=where, required=required)
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        p.add(f"'{where}{key}' is {len(value)} characters long; at most {_MAX_TEXT} are accepted")
        return None
    return value


def check_version(p: Problems, d: Mapping[str, Any], key: str, *, where: str = "", required: bool = False) -> Any:
    """A version string like ``6.5.0`` (bounded, so that comparing it can never parse a huge integer)."""
    value = p.field(d, key, (str,), where=where, required=required)
    if isinstance(value, str) and not _VERSION.fullmatch(value):
        shown = value if len(value) <= 40 else f"{value[:20]}... ({len(value)} characters)"
        p.add(f"'{where}{key}' must be a version like '6.5.0', got {shown!r}")
        return None
    return value


def version_tuple(version: str) -> tuple[int, ...]:
    """``"6.5.0rc1"`` -> ``(6, 5, 0)``, for a version that :func:`check_version` accepted."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def check_window(p: Problems, d: Mapping[str, Any], *, where: str = "") -> None:
    """``layout``, ``steps`` (step indices or null) and ``branch`` (:data:`BRANCH_VALUES` or null)."""
    check_text(p, d, "layout", where=where)
    steps = p.field(d, "steps", (list, type(None)), where=where, required=False)
    if isinstance(steps, list) and not all(type(s) is int and s >= 0 for s in steps):
        p.add(f"'{where}steps' must be a list of step indices (int >= 0) or null, got {steps!r}")
    branch = p.field(d, "branch", (str, type(None)), where=where, required=False)
    if isinstance(branch, str) and branch not in BRANCH_VALUES:
        p.add(f"'{where}branch' must be one of {list(BRANCH_VALUES)} or null, got {branch!r}")


def check_metrics(p: Problems, d: Mapping[str, Any], *, where: str = "") -> None:
    """``metrics``: an object of finite numbers (a training report's FVU, L0...), or absent."""
    metrics = p.field(d, "metrics", (dict,), where=where, required=False)
    if metrics and not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()
    ):
        p.add(f"'{where}metrics' must map names to finite numbers, got {metrics!r}")


def check_weights(p: Problems, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every tensor floating point and finite: NaN or Infinity in weights would poison every output."""
    import torch

    for name in sorted(tensors):
        t = tensors[name]
        if not t.is_floating_point():
            p.add(f"tensor {name!r} must be floating point, got {t.dtype}")
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            p.add(f"tensor {name!r} has {bad} non-finite values (NaN or Infinity) of {t.numel()}")
