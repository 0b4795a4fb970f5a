"""``attach()``: resolve every site, register torch hooks, compose hooks in order, and remove
every one of them on exit, on an exception and on KeyboardInterrupt.

Torch hooks are global state on the modules; a session is the only owner of the handles it
creates, and ``remove()`` is idempotent, so an interrupted notebook cell never leaves a hook
behind. Sessions nest: an inner session's hooks run after the outer one's on the same site.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import adapters as _adapters
from .adapters.base import Adapter, Undo
from .context import ALL_ROWS, BRANCHES, Context, RunState, as_when, check_branch
from .errors import (
    CompiledModelError,
    HookError,
    InterventionError,
    ShapeMismatchError,
    SiteNeverFiredError,
    SiteNeverFiredWarning,
)
from .groups import with_suffix
from .hooks import Cache, Hook
from .layout import check_layout
from .sites import Site, SiteError, SiteNotFoundError, resolve
from .tree import ModuleTree
from .values import get as _get
from .values import put as _put

HookSpec = Hook | Sequence[Hook]
_UNSET = object()


@dataclass(slots=True)
class _Entry:
    site: Site
    name: str
    module: nn.Module
    hooks: list[Hook]
    ctx: Context
    layout_fixed: bool
    params: list[str] = field(default_factory=list)
    fired: int = 0
    whole: bool = False  # every hook acts on each row alike (or caches): no CFG split needed


def _hook_failed(e: _Entry, h: Hook | None, ctx: Context, exc: Exception) -> HookError:
    return HookError(f"{type(h).__name__} at site {e.name!r} ({ctx!r}) raised {type(exc).__name__}: {exc}")


def _wrong_output(e: _Entry, h: Hook, x: torch.Tensor, out: Any) -> ShapeMismatchError:
    what = f"{type(h).__name__} at site {e.name!r}"
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return ShapeMismatchError(f"{what} returned {got}; the activation has shape {tuple(x.shape)}")
    if out.dtype != x.dtype:
        return ShapeMismatchError(
            f"{what} returned dtype {out.dtype} but the activation is {x.dtype}; convert the result with .to({x.dtype})"
        )
    return ShapeMismatchError(
        f"{what} returned a tensor on {out.device} but the activation is on {x.device}; "
        f"move the result with .to('{x.device}')"
    )


def _fits(out: Any, x: torch.Tensor) -> bool:
    """Whether a hook's result can stand in for the site's tensor: same shape, dtype, device."""
    return isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


class Session:
    """A set of hooks attached to a model; a context manager and a handle with ``remove()``.

    Build it with :func:`attach`. ``session.branch("cond")`` labels the calls inside it as one
    CFG branch (for loops that run the branches as separate passes by hand), and
    ``session.new_run()`` restarts step counting for a bare denoiser.
    """

    def __init__(
        self,
        target: Any,
        hooks: Mapping[str, HookSpec],
        *,
        adapter: Adapter | None = None,
        cfg: Sequence[str] | None = None,
        layouts: Mapping[str, str] | None = None,
        on_unfired: str = "warn",
    ) -> None:
        if on_unfired not in ("warn", "error", "ignore"):
            raise ValueError(f"on_unfired must be 'warn', 'error' or 'ignore', got {on_unfired!r}")
        self.adapter = adapter if adapter is not None else _adapters.detect(target, cfg=cfg)
        self.on_unfired = on_unfired
        self.state = RunState()
        self._handles: list[Any] = []
        self._undo: list[Undo] = []
        self._active = False
        self.tree = ModuleTree(self.adapter.components())
        self.entries = self._resolve(hooks, _checked_layouts(layouts))
        _refuse_compiled(self.tree, [e.site.module for e in self.entries] + [self.adapter.denoiser or ""])
        self._register()

    # -- building ------------------------------------------------------------------------------
    def _resolve(self, hooks: Mapping[str, HookSpec], layouts: dict[str, str]) -> list[_Entry]:
        if not isinstance(hooks, Mapping):
            raise TypeError("attach(model, hooks): hooks is a dict {site pattern: hook or [hooks]}")
        by_site: dict[Site, _Entry] = {}
        for pattern, spec in hooks.items():
            hook_list: list[Hook] = [spec] if not isinstance(spec, (list, tuple)) else list(spec)  # type: ignore[list-item]
            for h in hook_list:
                if not callable(h):
                    raise TypeError(f"site {pattern!r}: {h!r} is not a hook (a callable hook(x, ctx))")
                as_when(getattr(h, "when", None))
            for site, module in self._expand(pattern):
                entry = by_site.get(site)
                if entry is None:
                    name = str(site)
                    layout = layouts.get(name, layouts.get(site.module, _UNSET))
                    entry = _Entry(site, name, module, [], Context(name, self.state), layout is not _UNSET)
                    if layout is not _UNSET:
                        entry.ctx.layout = layout  # type: ignore[assignment]
                    if site.direction == "input":
                        entry.params = _param_names(entry.module)
                        _refuse_negative_input(site, entry.params)
                    by_site[site] = entry
                entry.hooks.extend(hook_list)
        for entry in by_site.values():
            entry.whole = all(
                h.when is None and (isinstance(h, Cache) or getattr(h, "rowwise", False)) for h in entry.hooks
            )
        return list(by_site.values())

    def _expand(self, pattern: str) -> list[tuple[Site, nn.Module]]:
        """Sites for a pattern with their modules: a literal path is looked up directly, a glob or
        a group (``@cross_attn``) is matched against every module path."""
        if pattern.startswith("@"):
            groups = self.adapter.groups()
            name, _, suffix = pattern[1:].partition(":")
            if name not in groups:
                raise SiteNotFoundError(
                    f"site group {pattern!r} is not defined for the {self.adapter.name} adapter; "
                    f"groups: {sorted(groups) or 'none'}"
                )
            out: list[tuple[Site, nn.Module]] = []
            for p in groups[name]:
                out += self._expand(with_suffix(p, suffix))
            return list(dict.fromkeys(out))
        site = Site.parse(pattern)
        if not site.is_glob:
            module = self.tree.get(site.module)
            if module is not None:
                return [(site, module)]
        table = self.tree.paths()
        return [(s, table[s.module]) for s in resolve(site, list(table))]

    def _register(self) -> None:
        try:
            self._undo += self.adapter.install(self.state)
            den = self.adapter.denoiser
            tracked = self.tree.get(den) if den is not None else None
            if den is not None and tracked is None:
                raise InterventionError(f"{self.adapter.name} adapter: denoiser {den!r} is not in the model")
            if tracked is not None:
                self._handles.append(
                    tracked.register_forward_pre_hook(self._enter_denoiser, with_kwargs=True, prepend=True)
                )
            else:
                for root in self.adapter.roots():
                    module = self.tree.get(root)
                    assert module is not None
                    self._handles.append(module.register_forward_pre_hook(self._enter_call, prepend=True))
            for e in self.entries:
                if e.site.direction == "output":
                    self._handles.append(e.module.register_forward_hook(self._output_hook(e)))
                else:
                    self._handles.append(e.module.register_forward_pre_hook(self._input_hook(e), with_kwargs=True))
            if tracked is not None:  # registered last: it runs after this session's output hooks
                self._handles.append(tracked.register_forward_hook(self._exit_denoiser, always_call=True))
            self._active = True
        except BaseException:
            self.remove()
            raise

    # -- tracking ------------------------------------------------------------------------------
    def _enter_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.state.call += 1

    def _enter_denoiser(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = self.adapter.read_timestep(module, args, kwargs)
        batch = self.adapter.batch_of(args, kwargs) or 0
        segments = self.adapter.segments(module, args, kwargs, batch)
        self.state.enter_denoiser(t, segments)

    def _exit_denoiser(self, module: nn.Module, args: Any, output: Any) -> None:
        self.state.exit_denoiser()

    # -- firing --------------------------------------------------------------------------------
    def _output_hook(self, e: _Entry) -> Any:
        key, run = e.site.key, self._run
        if not key:  # the common case: the module's output is the tensor

            def plain(module: nn.Module, args: Any, output: Any) -> Any:
                return run(e, output)

            return plain

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            new = run(e, _get(output, key, e.name, module))
            return None if new is None else _put(output, key, new, e.name, module)

        return hook

    def _input_hook(self, e: _Entry) -> Any:
        key = e.site.key

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            where, idx = _locate_input(key[0], args, kwargs, e)
            holder = args[idx] if where == "args" else kwargs[idx]  # type: ignore[index]
            x = _get(holder, key[1:], e.name)
            new = self._run(e, x)
            if new is None:
                return None
            value = _put(holder, key[1:], new, e.name)
            if where == "args":
                args = (*args[: int(idx)], value, *args[int(idx) + 1 :])
            else:
                kwargs = {**kwargs, str(idx): value}
            return args, kwargs

        return hook

    def _run(self, e: _Entry, x: Any) -> torch.Tensor | None:
        """Run a site's hooks on ``x``, one branch's rows at a time; the new tensor or None."""
        if not isinstance(x, torch.Tensor):
            raise InterventionError(
                f"site {e.name!r} carries a {type(x).__name__}, not a tensor; pick a tensor element (e.g. {e.name}:output.0)"
            )
        e.fired += 1
        ctx = e.ctx
        if not e.layout_fixed:
            ctx.layout = self.adapter.layout(e.site.module, x.ndim)
            e.layout_fixed = True
        segments = self.state.segments
        if len(segments) > 1 and (not x.ndim or x.shape[0] != segments[-1][1].stop):
            segments = ALL_ROWS  # not batch-major at this site: no row split possible
        if len(segments) == 1:
            ctx.branch = segments[0][0]
            return self._apply(e, x, ctx)
        if e.whole:
            ctx.branch = None
            return self._apply_whole(e, x, ctx, segments)
        pieces, changed = [], False
        for branch, rows in segments:
            ctx.branch, ctx.rows = branch, rows
            part = x[rows]
            out = self._apply(e, part, ctx)
            changed |= out is not None
            pieces.append(part if out is None else out)
        ctx.rows = slice(None)
        # re-joined also when unchanged but tracked: a hook may have hooked the gradient of the
        # very rows it got (Grads), which reaches it only if those rows feed the model
        if changed or (x.requires_grad and torch.is_grad_enabled()):
            return torch.cat(pieces, dim=0)
        return None

    def _apply_whole(self, e: _Entry, x: torch.Tensor, ctx: Context, segments: Any) -> torch.Tensor | None:
        """Hooks that act on each row alike run once on the whole CFG batch; caches store each
        branch's rows under its own key (one copy, no split and re-join)."""
        changed = False
        for h in e.hooks:
            if isinstance(h, Cache):
                h.whole_batch(x, ctx, segments)
                continue
            out = self._call(e, h, x, ctx)
            if out is not None:
                x, changed = out, True
        return x if changed else None

    def _apply(self, e: _Entry, x: torch.Tensor, ctx: Context) -> torch.Tensor | None:
        # the per-fire hot path: _call's checks are inlined (one Python call less per hook)
        changed = False
        selector: tuple[Any, ...] | None = None
        h: Hook | None = None
        try:
            for h in e.hooks:
                when = h.when
                if when is not None:
                    if selector is None:
                        selector = (ctx.step, ctx.timestep, ctx.branch, self.state.call)
                    if not when.allows(*selector):
                        continue
                out = h(x, ctx)
                if out is not None:
                    if not _fits(out, x):
                        raise _wrong_output(e, h, x, out)
                    x, changed = out, True
        except InterventionError:
            raise
        except Exception as exc:
            raise _hook_failed(e, h, ctx, exc) from exc
        return x if changed else None

    @staticmethod
    def _call(e: _Entry, h: Hook, x: torch.Tensor, ctx: Context) -> torch.Tensor | None:
        try:
            out = h(x, ctx)
        except InterventionError:
            raise
        except Exception as exc:
            raise _hook_failed(e, h, ctx, exc) from exc
        if out is not None and not _fits(out, x):
            raise _wrong_output(e, h, x, out)
        return out

    # -- user controls -------------------------------------------------------------------------
    @contextmanager
    def branch(self, name: str) -> Iterator[None]:
        """Label every call inside the block as CFG branch ``name`` (sequential CFG by hand)."""
        check_branch(name, "session.branch(...)", BRANCHES)
        previous = self.state.forced
        self.state.forced = name
        self.state.segments = ((name, slice(None)),)
        try:
            yield
        finally:
            self.state.forced = previous
            self.state.segments = ((previous, slice(None)),) if previous else ALL_ROWS

    def new_run(self) -> None:
        """Restart step counting (the next distinct timestep is step 0)."""
        self.state.new_run()

    @property
    def fired(self) -> dict[str, int]:
        """How many times each site fired."""
        return {e.name: e.fired for e in self.entries}

    # -- removal -------------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and wrapper this session added. Safe to call twice."""
        while self._handles:
            self._handles.pop().remove()
        while self._undo:
            self._undo.pop()()
        self._active = False

    def report_unfired(self) -> None:
        unfired = [e.name for e in self.entries if e.fired == 0]
        if not unfired or self.on_unfired == "ignore":
            return
        msg = (
            f"{len(unfired)} hooked site(s) never fired during the session: {unfired[:10]}. "
            "The module was not called (another branch of the model, or a different model object?)"
        )
        if self.on_unfired == "error":
            raise SiteNeverFiredError(msg)
        warnings.warn(msg, SiteNeverFiredWarning, stacklevel=3)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.remove()
        if exc_type is None:
            self.report_unfired()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<Session {state}, {self.adapter.name} adapter, {len(self.entries)} sites>"


def attach(
    target: Any,
    hooks: Mapping[str, HookSpec],
    *,
    adapter: Adapter | None = None,
    cfg: Sequence[str] | None = None,
    layouts: Mapping[str, str] | None = None,
    on_unfired: str = "warn",
) -> Session:
    """Attach hooks to a model or a diffusers pipeline.

    ``hooks`` maps site patterns (``"blocks.*.attn"``, ``"unet.mid_block:output"``, a group
    such as ``"@cross_attn"``) to a hook or a list of hooks that run in order. Every site is
    resolved before anything is registered. ``cfg`` declares a batched CFG layout for a bare
    denoiser (e.g. ``("uncond", "cond")``); pipelines are detected by their adapter.
    ``layouts`` overrides the activation layout of a site (``{"blocks.0": "BCT"}``; one of
    ``layout.KNOWN_LAYOUTS`` or None, checked here).
    ``on_unfired``: what to do when a site never fired: "warn" (default), "error", "ignore".
    A hook's result must keep the shape, dtype and device of the site's tensor (else
    :class:`ShapeMismatchError` names the site and the hook).

    >>> import torch
    >>> from interventions import attach, Cache
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    >>> with attach(model, {"*": Cache()}) as session:
    ...     _ = model(torch.randn(2, 3))
    >>> session.fired
    {'0': 1, '1': 1}
    """
    return Session(target, hooks, adapter=adapter, cfg=cfg, layouts=layouts, on_unfired=on_unfired)


# -- helpers -----------------------------------------------------------------------------------
def _refuse_compiled(tree: ModuleTree, paths: list[str]) -> None:
    """Refuse hooks below a module that torch.compile already traced (they would be ignored)."""
    compiled = set()
    for path in paths:
        for depth, m in enumerate(tree.chain(path)):
            if type(m).__name__ == "OptimizedModule" or m.__dict__.get("_compiled_call_impl") is not None:
                parts = path.split(".")[: depth if "" in tree.components else depth + 1]
                compiled.add(".".join(parts) or type(m).__name__)
    if not compiled:
        return
    import torch._dynamo.config as dynamo_config  # only now: importing dynamo costs seconds

    if not getattr(dynamo_config, "skip_nnmodule_hook_guards", True):
        return  # hooks are guarded: adding one recompiles instead of being ignored
    raise CompiledModelError(
        f"cannot attach hooks under {sorted(compiled)[:3]}: already compiled with torch.compile, so hooks "
        "added now would be silently ignored. Attach before compiling, attach to the original "
        "module (compiled._orig_mod) and call it, or set "
        "torch._dynamo.config.skip_nnmodule_hook_guards = False to recompile on hook changes."
    )


def _checked_layouts(layouts: Mapping[str, str] | None) -> dict[str, str]:
    """Layout overrides, each a known layout (a typo would fail at the first fire, far away)."""
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise TypeError(f"attach(layouts=...) takes a dict {{site: layout}}, got {type(layouts).__name__}")
    for site, layout in layouts.items():
        check_layout(layout, where=f"attach(layouts=...), site {site!r}: ")
    return dict(layouts)


def _refuse_negative_input(site: Site, params: list[str]) -> None:
    """A negative input index would count back from whichever arguments a call passes by
    position (the others come as keywords), so it has no fixed meaning: refuse it."""
    k = site.key[0]
    if isinstance(k, int) and k < 0:
        name = params[k] if -len(params) <= k else None
        hint = f"'{site.module}:input.{len(params) + k}' or '{site.module}:input.{name}'" if name else "an index >= 0"
        raise SiteError(
            f"site {str(site)!r}: a negative input index is ambiguous (calls pass arguments by position "
            f"or by keyword); name the argument by its index from the start or by name, e.g. {hint}"
        )


def _param_names(module: nn.Module) -> list[str]:
    try:
        return [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):
        return []


def _locate_input(key: int | str, args: tuple[Any, ...], kwargs: dict[str, Any], e: _Entry) -> tuple[str, int | str]:
    if isinstance(key, int):
        if key < len(args):
            return "args", key
        name = e.params[key] if key < len(e.params) else None
        if name is not None and name in kwargs:
            return "kwargs", name
    else:
        if key in kwargs:
            return "kwargs", key
        if key in e.params and e.params.index(key) < len(args):
            return "args", e.params.index(key)
    raise InterventionError(
        f"site {e.name!r}: the call passed no argument {key!r} "
        f"({len(args)} positional, keywords {sorted(kwargs)}); parameters: {e.params[:8]}"
    )
