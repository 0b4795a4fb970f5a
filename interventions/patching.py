"""Activation-patching sweeps: patch a source run's activations into a target run, one site (or
set of sites) at a time and one denoising-step window at a time, and tabulate what a metric does.

This is the localisation step of TADA and of causal tracing: ``rows x columns`` forwards, each
patching one row's sites from the source (clean) run during one column's steps, scored by
``metric(target output)``. :func:`interventions.activation_patching` is the single-column case
split further by token or head; this sweep keeps the sites whole and splits by step instead, and
a row may patch several sites together (TADA patches one cross-attention layer's conditioning:
``...attn2:input.encoder_hidden_states``, with its mask where the model takes one).

>>> import torch
>>> from interventions.patching import patching_sweep
>>> _ = torch.manual_seed(0)  # an unlucky draw could make both runs' outputs equal (all ReLUs off)
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
>>> clean, corrupt = torch.ones(1, 3), torch.zeros(1, 3)
>>> table = patching_sweep(model, ["0", "2"], clean, corrupt, metric=lambda y: y.sum(), progress=False)
>>> bool(table.normalized()[1, 0] == 1.0)  # patching the output layer restores the clean output
True
>>> table.to_rows()[0]["site"], table.steps
('0', ('all',))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .context import When, check_branch
from .errors import InterventionError
from .hooks import Cache, Patch
from .metric_runs import Inputs, run_model, scalar_metric
from .session import attach
from .store import Store

__all__ = ["PatchingTable", "StepWindow", "patching_sweep", "step_label"]

Tensor = torch.Tensor
#: one column of a sweep: a step, a window of steps (range or indices), or None for every step
StepWindow = int | range | Sequence[int] | None
SiteRow = str | Sequence[str]  # a pattern (one row per site it names) or sites patched together


def step_label(window: StepWindow) -> str:
    """Column name of a step window: ``"3"``, ``"0-4"`` (a contiguous window), ``"1,5"``, ``"all"``."""
    if window is None:
        return "all"
    if isinstance(window, int):
        return str(window)
    steps = list(window)
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ",".join(map(str, steps))


@dataclass(frozen=True)
class PatchingTable:
    """What :func:`patching_sweep` returns: ``values[i, j]`` is the metric of the target run with
    row ``i``'s sites patched from the source during column ``j``'s steps. ``baseline`` is the
    unpatched target run's metric and ``source_value`` the source run's (None when the source
    was given as a cache: then :meth:`normalized` is not defined)."""

    sites: tuple[str, ...]  # row labels: a site, or sites patched together joined by " + "
    steps: tuple[str, ...]  # column labels (:func:`step_label`)
    values: Tensor  # [rows, columns], float
    baseline: float
    source_value: float | None = None

    @property
    def effects(self) -> Tensor:
        """``values - baseline``: how far each patch moved the metric (the heat map)."""
        return self.values - self.baseline

    def normalized(self) -> Tensor:
        """Effects as a share of the source-minus-target gap: 1 = the patch restores the source
        run's metric, 0 = no effect (the usual "fraction of the effect recovered")."""
        if self.source_value is None:
            raise InterventionError(
                "normalized() needs the source run's metric: give the sweep the source inputs instead of a cache"
            )
        gap = self.source_value - self.baseline
        if gap == 0:
            raise InterventionError("the source and target runs score the same: there is no gap to normalise by")
        return self.effects / gap

    def column(self, step: str | int | None) -> Tensor:
        """Effects of one column, by label (``"all"``, ``3``)."""
        label = step_label(step) if not isinstance(step, str) else step
        if label not in self.steps:
            raise KeyError(f"no column {label!r}; columns: {', '.join(self.steps)}")
        return self.effects[:, self.steps.index(label)]

    def top_sites(self, k: int = 1, step: str | int | None = None) -> list[str]:
        """The ``k`` rows with the largest effect in column ``step`` (default: the ``"all"``
        column if there is one, else the sum over columns): the localised layers."""
        if step is None and "all" not in self.steps:
            score = self.effects.sum(1)
        else:
            score = self.column("all" if step is None else step)
        order = torch.argsort(score, descending=True, stable=True)
        return [self.sites[int(i)] for i in order[:k]]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per cell: ``site``, ``step``, ``value``, ``effect`` (and ``normalized``)."""
        norm = self.normalized() if self.source_value not in (None, self.baseline) else None
        rows = []
        for i, site in enumerate(self.sites):
            for j, step in enumerate(self.steps):
                row = {
                    "site": site,
                    "step": step,
                    "value": float(self.values[i, j]),
                    "effect": float(self.effects[i, j]),
                }
                if norm is not None:
                    row["normalized"] = float(norm[i, j])
                rows.append(row)
        return rows

    def __str__(self) -> str:
        width = max(len(s) for s in self.sites)
        head = " " * width + "".join(f"{s:>9}" for s in self.steps)
        lines = [head] + [
            f"{site:<{width}}" + "".join(f"{float(v):9.3f}" for v in row)
            for site, row in zip(self.sites, self.effects, strict=True)
        ]
        lines.append(f"(effects: metric - {self.baseline:.4g} of the unpatched target)")
        return "\n".join(lines)


def _noop(x: Tensor, ctx: Any) -> None:
    return None


def _rows(model: Any, sites: Iterable[SiteRow], attach_kw: dict[str, Any]) -> list[tuple[str, ...]]:
    """Concrete site tuples per row: a string pattern (glob, group) gives one row per site it
    names, a sequence one row of sites patched together."""
    rows: list[tuple[str, ...]] = []
    for row in sites:
        patterns = [row] if isinstance(row, str) else list(row)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"a row of sites is a site pattern or a non-empty list of them, got {row!r}")
        session = attach(model, dict.fromkeys(patterns, _noop), **attach_kw)  # resolves; refuses unknown names
        names = tuple(e.name for e in session.entries)
        session.remove()
        rows.extend([(n,) for n in names] if isinstance(row, str) else [names])
    if not rows:
        raise ValueError("patching_sweep needs at least one site")
    return rows


def _check_source(cache: Cache, rows: list[tuple[str, ...]], windows: list[StepWindow]) -> None:
    """Every site and every asked step is in the source before the first patched run."""
    for row in rows:
        for site in row:
            found = cache.entries(site)
            if not found:
                raise InterventionError(
                    f"patching_sweep: the source holds nothing for site {site!r}; cache it in the source run "
                    f"(sites cached: {sorted({k[0] for k in cache.keys()})[:6]})"
                )
            have = {k[0] for k in found}
            for w in windows:
                want = {w} if isinstance(w, int) else set(w) if w is not None else set()
                if want - have:
                    raise InterventionError(
                        f"patching_sweep: the source has no step {sorted(want - have)} for {site!r} "
                        f"(cached steps: {sorted(s for s in have if s is not None)}); run both with the same step count"
                    )


def patching_sweep(
    model: Any,
    sites: Iterable[SiteRow],
    source: Inputs | Cache | Store,
    target: Inputs,
    metric: Callable[[Any], Tensor | float],
    *,
    steps: Iterable[StepWindow] | None = None,
    branch: str = "all",
    progress: bool = True,
    **attach_kw: Any,
) -> PatchingTable:
    """Patch ``source`` activations into the ``target`` run, row by row and step window by step
    window, and return the :class:`PatchingTable` of ``metric(target output)``.

    ``model``: a module or a diffusers pipeline (what :func:`interventions.attach` takes).
    ``sites``: per row a site pattern (``"@cross_attn"``, ``"unet.**.attn2:input.encoder_hidden_states"``:
    one row per site it names) or a list of sites patched together as one row. ``source``: the
    clean run's inputs (a tensor, tuple, dict or zero-argument function, as in
    :func:`~interventions.activation_patching`; it is run once with a cache at every site and
    scored too), or a :class:`Cache` / store already holding them. ``target``: the corrupt run's
    inputs; a function must start from the same noise each call (seed its generator inside).
    ``steps``: the columns: step indices, windows (``range(0, 5)``) and ``None`` (every step);
    default ``[None]``, the only choice for a model without denoising steps. ``branch``: the CFG
    rows patched (``"cond"``, ``"uncond"`` or ``"all"``). Costs ``rows x columns + 1`` target
    runs (+1 source run), shown with a progress bar. ``metric`` is called in a fixed order (a
    metric that records more than its scalar can rely on it): the source run (when given as
    inputs), the unpatched target, then the cells row by row.

    Example (TADA's localisation on a diffusers pipeline)::

        run = lambda prompt: lambda: pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="pt")
        table = patching_sweep(pipe, ["@cross_attn:input.encoder_hidden_states"], run("a red circle"),
                               run("a blue circle"), metric=redness, steps=[*range(10), None])
        table.top_sites(2)  # the layers where the prompt's colour enters
    """
    windows: list[StepWindow] = list(steps) if steps is not None else [None]
    if not windows:
        raise ValueError("steps is empty: give step indices, windows, or None for every step")
    for w in windows:
        if not (w is None or isinstance(w, int | range) or (isinstance(w, Sequence) and not isinstance(w, str))):
            raise TypeError(f"a step window is an int, a range, a list of ints or None, got {w!r}")
    check_branch(branch, "patching_sweep(branch=...)")
    rows = _rows(model, sites, attach_kw)
    source_value = None
    with torch.no_grad():
        if isinstance(source, Cache):
            cache = source
        elif hasattr(source, "get") and hasattr(source, "keys_of"):  # a store (MemoryStore, DiskStore)
            cache = Cache(source)
        else:
            cache = Cache(on_repeat="replace")
            with attach(model, dict.fromkeys({s for row in rows for s in row}, cache), **attach_kw):
                source_value = float(scalar_metric(torch.as_tensor(metric(run_model(model, source)))))
        _check_source(cache, rows, windows)
        bar = tqdm(total=len(rows) * len(windows) + 1, desc="patching sweep", disable=not progress)
        baseline = float(scalar_metric(torch.as_tensor(metric(run_model(model, target)))))
        bar.update()
        values = torch.empty(len(rows), len(windows))
        for i, row in enumerate(rows):
            for j, w in enumerate(windows):
                when = When(steps=w, branch=branch) if w is not None or branch != "all" else None
                with attach(model, {s: Patch(cache, when=when) for s in row}, **attach_kw):
                    values[i, j] = float(scalar_metric(torch.as_tensor(metric(run_model(model, target)))))
                bar.update()
        bar.close()
    labels = tuple(" + ".join(r) for r in rows)
    return PatchingTable(labels, tuple(step_label(w) for w in windows), values, baseline, source_value)
