"""``attach()``: resolve every site, register torch hooks, compose hooks in order, and remove
every one of them on exit, on an exception and on KeyboardInterrupt.

Torch hooks are global state on the modules; a session is the only owner of the handles it
creates, and ``remove()`` is idempotent, so an interrupted notebook cell never leaves a hook
behind. Sessions nest: an inner session's hooks run after the outer one's on the same site.

A session belongs to one thread: its run state (step, call, CFG rows) describes one forward at a
time, so a call from a second thread is refused with an error (attach one session per thread).
"""

from __future__ import annotations

import inspect
import operator
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import adapters as _adapters
from .adapters.base import Adapter, Undo, looks_like, wrap_attribute
from .context import ALL_ROWS, BRANCHES, EVERY_ROW, Context, RunState, When, check_branch
from .errors import (
    CompiledModelError,
    HookError,
    InterventionError,
    SelectorError,
    ShapeMismatchError,
    SiteNeverFiredError,
    SiteNeverFiredWarning,
    StopForward,
)
from .groups import with_suffix
from .hooks import Hook
from .layout import check_layout
from .resolution import Resolution, recall, remember
from .sites import Site, SiteError, SiteNotFoundError, resolve
from .torch_hooks import HookSet
from .tree import ModuleTree
from .values import get as _get
from .values import not_a_tensor
from .values import put as _put

HookSpec = Hook | Callable[..., Any] | Sequence[Hook | Callable[..., Any]]
_UNSET = object()


class _Entry:
    """One hooked site of a session: its module, its hooks in order, its context and counters."""

    __slots__ = (
        "site",
        "name",
        "module",
        "hooks",
        "ctx",
        "layout_fixed",
        "params",
        "fired",
        "whole",
        "epoch",
        "applied",
    )

    def __init__(self, site: Site, name: str, module: nn.Module, ctx: Context, layout_fixed: bool) -> None:
        self.site = site
        self.name = name
        self.module = module
        self.hooks: list[tuple[Hook, When | None, int, bool]] = []  # (hook, its When, its slot in applied, fits)
        self.ctx = ctx
        self.layout_fixed = layout_fixed
        self.params: Sequence[str] = ()  # an input site's parameter names (set at attach)
        self.fired = 0
        self.whole = True  # every hook acts on each row alike (or caches): no CFG split needed
        self.epoch = -1  # the state's epoch at the last firing (for the invocation index)
        self.applied: list[bool] = []  # per hook: did it ever apply (a hook without a When always does)

    def count(self, epoch: int) -> None:
        """Count a firing; its invocation index restarts with each call of any component (a new
        ``epoch``) and counts the module's further runs within one."""
        self.fired += 1
        if self.epoch != epoch:
            self.epoch, self.ctx.invocation = epoch, 0
        else:
            self.ctx.invocation += 1


def _hook_failed(e: _Entry, h: Hook | None, ctx: Context, exc: Exception) -> HookError:
    return HookError(f"{_name(h)} at site {e.name!r} ({ctx!r}) raised {type(exc).__name__}: {exc}")


def _name(h: Any) -> str:
    return getattr(h, "__name__", None) or type(h).__name__


def _wrong_output(e: _Entry, h: Hook, x: torch.Tensor, out: Any) -> ShapeMismatchError:
    what = f"{_name(h)} at site {e.name!r}"
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


def _unlabelled(e: _Entry, h: Hook, when: When) -> SelectorError:
    return SelectorError(
        f"{_name(h)} at site {e.name!r} selects When(branch={when.branch!r}), but the rows here carry no CFG "
        f"branch ({e.ctx!r}): the hook would never apply. Declare the batch layout with attach(..., "
        "cfg=('uncond', 'cond')) for a bare denoiser, label sequential passes with session.branch('cond'), "
        "or drop branch= for a site outside the denoiser (a text encoder, a VAE: select calls with When(calls=...))"
    )


class Session:
    """A set of hooks attached to a model; a context manager and a handle with ``remove()``.

    Build it with :func:`attach`. ``session.branch("cond")`` labels the calls inside it as one
    CFG branch (for loops that run the branches as separate passes by hand), and
    ``session.new_run()`` restarts step and call counting. A session that was removed (its
    ``with`` block ended) attaches its hooks again when entered again.
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
        stop: bool = False,
    ) -> None:
        if on_unfired not in ("warn", "error", "ignore"):
            raise ValueError(f"on_unfired must be 'warn', 'error' or 'ignore', got {on_unfired!r}")
        self.stop = bool(stop)
        self._stop_epoch = -1
        self._fired_now: set[str] = set()  # sites fired in the current call (for stop)
        self._target, self._cfg, self._detected = target, cfg, adapter is None
        self.adapter = adapter if adapter is not None else _adapters.detect(target, cfg=cfg)
        self.on_unfired = on_unfired
        self.state = RunState()
        self._hooks = HookSet()
        self._resolution: Resolution | None = None  # how the sites were found, if all were literal
        self._walked: list[nn.Module] | None = None  # the modules on its links, as this session found them
        self._undo: list[Undo] = []
        self._active = False
        self._in_block = False  # inside its own ``with`` block (a second one would remove its hooks at its end)
        self._thread: int | None = None
        self.tree = ModuleTree(self.adapter.components())
        self._denoisers = list(self.adapter.denoisers())
        self._denoiser_modules = [self._module_at(den) for den in self._denoisers]
        self._counted: list[str] = []  # the components whose calls are counted (not denoisers: their steps are)
        self.entries = self._resolve(hooks, _checked_layouts(layouts))
        _refuse_compiled(self.tree.compiled)
        self._register()

    # -- building ------------------------------------------------------------------------------
    def _module_at(self, denoiser: str) -> nn.Module:
        module = self.tree.get(denoiser)  # the walk also checks its chain for torch.compile
        if module is None:
            raise InterventionError(f"{self.adapter.name} adapter: denoiser {denoiser!r} is not in the model")
        return module

    def _resolve(self, hooks: Mapping[str, HookSpec], layouts: dict[str, str]) -> list[_Entry]:
        if not isinstance(hooks, Mapping):
            raise TypeError("attach(model, hooks): hooks is a dict {site pattern: hook or [hooks]}")
        hook_lists = [_hook_list(pattern, spec) for pattern, spec in hooks.items()]  # all checked first
        patterns = tuple(hooks)
        expansions = self._recalled(patterns) or self._walk(patterns)
        by_site: dict[str, _Entry] = {}  # by canonical name: a str hashes once, a Site at each lookup
        counted: dict[str, None] = {}  # the components whose calls are counted, in order
        state, denoisers, unit_of = self.state, self._denoisers, self._unit_of
        # one model that is the denoiser or has none (a UNet, an LM): every site's unit is the model
        whole_model = self.tree.single and not any(denoisers)
        for hook_list, found in zip(hook_lists, expansions, strict=True):
            for site, module in found:
                name = site.name
                entry = by_site.get(name)
                if entry is None:  # inlined, not a method: this runs for every site at every attach
                    component = "" if whole_model else unit_of(site.module)
                    ctx = Context(name, state, None, component, component in denoisers)
                    entry = by_site[name] = _Entry(site, name, module, ctx, False)
                    if layouts or site.direction == "input":
                        self._declare(entry, layouts)
                    if not ctx.stepped:
                        counted[component] = None
                hooked, applied = entry.hooks, entry.applied
                for h, when, rowwise, fits in hook_list:
                    if when is not None and when.needs_steps and not entry.ctx.stepped:
                        raise self._no_steps(entry, h, when)
                    hooked.append((h, when, len(applied), fits))
                    applied.append(when is None)
                    entry.whole = entry.whole and rowwise
        self._counted = list(counted)
        return list(by_site.values())

    def _walk(self, patterns: tuple[str, ...]) -> Sequence[Sequence[tuple[Site, nn.Module]]]:
        """Each pattern's sites found by walking the model; remembered for later sessions when
        every pattern named one module path."""
        expansions = [self._expand(pattern) for pattern in patterns]
        if patterns and all(self._is_literal(p, found) for p, found in zip(patterns, expansions, strict=True)):
            resolution = Resolution(list(self.tree.components), [found[0][0] for found in expansions], self.tree.single)
            self._walked = resolution.modules(self.tree.components)
            self._resolution = resolution
            remember(self._target, patterns, resolution)
        return expansions

    def _recalled(self, patterns: tuple[str, ...]) -> Sequence[Sequence[tuple[Site, nn.Module]]] | None:
        """The sites of ``patterns`` as an earlier session on this model found them, their links
        walked on the live model (see :mod:`interventions.resolution`); None if a link is gone."""
        remembered = recall(self._target, patterns)
        if remembered is None:
            return None
        modules = remembered.modules(self.tree.components)
        if modules is None:
            return None
        self._resolution, self._walked = remembered, modules
        return [((site, modules[i]),) for site, i in remembered.sites]

    def _is_literal(self, pattern: str, found: list[tuple[Site, nn.Module]]) -> bool:
        """Whether ``pattern`` named one module path that the walk found (no glob, no group):
        only those are remembered, a glob's matches depend on every module of the model."""
        return (
            not pattern.startswith("@")
            and not Site.parse(pattern).is_glob
            and len(found) == 1
            and self.tree.get(found[0][0].module) is found[0][1]
        )

    def _declare(self, entry: _Entry, layouts: dict[str, str]) -> None:
        """What an entry holds beyond the common case: a layout declared for its site, an input
        site's parameter names."""
        layout = layouts.get(entry.name, layouts.get(entry.site.module, _UNSET)) if layouts else _UNSET
        if layout is not _UNSET:
            entry.ctx.layout = layout  # type: ignore[assignment]
            entry.layout_fixed = True
        if entry.site.direction == "input":
            entry.params = _param_names(entry.module)
            _refuse_negative_input(entry.site, entry.params)

    def _unit_of(self, path: str) -> str:
        """What a site's call index counts: the denoiser it lies in (its calls are steps), else
        its component (a pipeline's text encoder or VAE, or the whole model)."""
        for den in self._denoisers:
            if not den or path == den or path.startswith(den + "."):
                return den
        return self.tree.component_of(path)

    def _no_steps(self, e: _Entry, h: Hook, when: When) -> SelectorError:
        """A step or timestep selector on a site that has no denoising steps: it would never
        apply, and the run would look fine."""
        where = f"component {e.ctx.component!r}" if e.ctx.component else "this model"
        return SelectorError(
            f"{_name(h)} at site {e.name!r} selects steps or timesteps ({when!r}), but {where} has no denoising "
            f"steps ({self.adapter.name} adapter; stepped components: {self._denoisers or 'none'}), so it would "
            "never apply. Select calls with When(calls=...), or, for a denoiser this adapter does not know, "
            "declare it with attach(..., cfg=('uncond', 'cond')) (or cfg=('cond',) without CFG)."
        )

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
        try:
            found = resolve(site, list(table))
        except SiteNotFoundError:  # the path passes a module torch.compile wrapped: say that, not "no module"
            _refuse_compiled(self.tree.compiled)
            raise
        for s in found:
            self.tree.get(s.module)  # a site found in the path table: check its chain for torch.compile
        return [(s, table[s.module]) for s in found]

    def _register(self) -> None:
        if not self.entries:  # no site: nothing to hook, no step or call to track
            self._active = True
            return
        try:
            self._undo += self.adapter.install(self.state)
            for den, module in zip(self._denoisers, self._denoiser_modules, strict=True):
                enter = self._denoiser_entry(den)
                self._hooks.forward_pre(module, enter, with_kwargs=True, prepend=True)
            for comp in self._counted:
                self._track_calls(comp)
            hooks = self._hooks
            # each hook is made here, not kept on its entry: a closure held by the session would tie
            # the session into a reference cycle that only the garbage collector frees (measured:
            # +15% on entering a session)
            outputs = []
            for e in self.entries:
                if e.site.direction == "output":
                    outputs.append((e.module, self._torch_hook(e)))
                else:
                    hooks.forward_pre(e.module, self._torch_hook(e), with_kwargs=True)
            hooks.forward_all(outputs)
            for module in self._denoiser_modules:  # registered last: they run after this session's output hooks
                hooks.forward(module, self.state.exit_denoiser, always_call=True)
            self._active = True
        except BaseException:
            self.remove()
            raise

    # -- tracking ------------------------------------------------------------------------------
    def _own_thread(self) -> None:
        """Refuse a second thread: the run state describes one forward at a time."""
        me = threading.get_ident()
        if self._thread is None:
            self._thread = me
        elif self._thread != me:
            raise InterventionError(
                "this session is already used by another thread: its step, call and branch state describe one "
                "forward at a time, so calls from two threads would be recorded under each other's keys. Attach "
                "a separate session in each thread (attach(model, hooks) inside the thread's function)."
            )

    def _track_calls(self, component: str) -> None:
        """Count the calls of a component that is not a denoiser (a text encoder, a VAE, a plain
        model): a pre-hook on ``forward``, or wrappers on the entry points the adapter names
        (a VAE runs through ``encode`` / ``decode``), of which nested ones count once."""
        state = self.state
        names = self.adapter.entry_points(component)
        module = self.tree.get(component)
        assert module is not None
        if not names:

            def begin(module: nn.Module, args: Any) -> None:
                self._own_thread()
                state.begin_call(component)

            self._hooks.forward_pre(module, begin, prepend=True)
            return
        depth = [0]

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def entry(*args: Any, **kwargs: Any) -> Any:
                if not depth[0]:
                    self._own_thread()
                    state.begin_call(component)
                depth[0] += 1
                try:
                    return original(*args, **kwargs)
                finally:
                    depth[0] -= 1

            return looks_like(entry, original)  # e.g. inspect.signature(vae.decode) as before

        self._undo += [wrap_attribute(module, n, make) for n in names]

    def _denoiser_entry(self, component: str) -> Callable[..., None]:
        """The pre-hook of a denoiser: a new step (or the same one) with its timestep and rows."""
        adapter, state = self.adapter, self.state

        def enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._own_thread()
            t = adapter.read_timestep(module, args, kwargs)
            batch = adapter.batch_of(args, kwargs) or 0
            segments = adapter.segments(module, args, kwargs, batch)
            if state.forced and len(segments) > 1 and not state.depth:
                raise _forced_on_batched(component, state.forced, segments)
            state.enter_denoiser(component, t, segments)

        return enter

    # -- firing --------------------------------------------------------------------------------
    def _torch_hook(self, e: _Entry) -> Callable[..., Any]:
        """The function registered on the site's module: a fused hook for one hook without a
        ``When`` on a module's whole output (the common case), else the general path."""
        key = e.site.key
        if e.site.direction == "input":
            fn = self._input_hook(e)
        elif not key and len(e.hooks) == 1 and e.hooks[0][1] is None:
            h, _, _, fits = e.hooks[0]
            whole = getattr(h, "whole_batch", None) if e.whole and e.ctx.stepped else None
            if not e.ctx.stepped:
                fn = self._one_hook(e, h, fits)
            elif whole is not None:
                fn = self._whole_batch_hook(e, h, whole, fits)
            else:
                fn = self._output_hook(e)
        else:
            fn = self._output_hook(e)
        return self._stopping(e, fn) if self.stop else fn

    def _output_hook(self, e: _Entry) -> Any:
        key, run = e.site.key, self._run
        if not key:  # the module's output is the tensor

            def plain(module: nn.Module, args: Any, output: Any) -> Any:
                if module is not e.module:
                    raise _copied(e)
                return run(e, output)

            return plain

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if module is not e.module:
                raise _copied(e)
            new = run(e, _get(output, key, e.name, module))
            return None if new is None else _put(output, key, new, e.name, module)

        return hook

    def _one_hook(self, e: _Entry, h: Hook, fits: bool) -> Any:
        """The output hook of a site outside any denoiser with one hook and no When (a cache or a
        steering vector on a language model): ``_run`` and ``_apply`` fused into one frame, since
        this runs at every fire. Anything else (a branch forced by ``session.branch``, the first
        fire, which fixes the layout, a non-tensor output) takes the general path."""

        # bound as defaults, not closure cells: a hook is made per site at every attach, and a
        # function with defaults costs about half of one with five cells to make
        def hook(
            module: nn.Module, args: Any, x: Any, e: _Entry = e, ctx: Context = e.ctx, state: RunState = self.state,
            run: Callable[..., Any] = self._run, h: Hook = h, fits: bool = fits,
        ) -> Any:  # fmt: skip
            if module is not e.module:
                raise _copied(e)
            if state.forced or not e.layout_fixed or not isinstance(x, torch.Tensor):
                return run(e, x)
            e.fired += 1  # e.count(state.epoch), inlined
            if e.epoch != state.epoch:
                e.epoch, ctx.invocation = state.epoch, 0
            else:
                ctx.invocation += 1
            ctx.branch = None
            try:
                out = h(x, ctx)
            except InterventionError:
                raise
            except Exception as exc:
                raise _hook_failed(e, h, ctx, exc) from exc
            if out is None or fits or _fits(out, x):
                return out
            raise _wrong_output(e, h, x, out)  # type: ignore[arg-type]

        return hook

    def _whole_batch_hook(self, e: _Entry, h: Hook, whole: Callable[..., None], fits: bool) -> Any:
        """The output hook of a denoiser site whose one hook takes a batched CFG call whole (a
        ``Cache`` on a denoiser): ``_run`` and ``_apply_whole`` fused, as in :meth:`_one_hook`; a
        call of one branch (no CFG, sequential CFG, a forced branch, unlabelled rows) gives the
        hook the whole tensor with that branch. The first fire and rows that are not batch-major
        take the general path."""

        def hook(
            module: nn.Module, args: Any, x: Any, e: _Entry = e, ctx: Context = e.ctx, state: RunState = self.state,
            run: Callable[..., Any] = self._run, h: Hook = h, whole: Callable[..., None] = whole, fits: bool = fits,
        ) -> Any:  # defaults, not cells: see _one_hook  # fmt: skip
            if module is not e.module:
                raise _copied(e)
            segments = state.segments
            if not e.layout_fixed or not isinstance(x, torch.Tensor):
                return run(e, x)
            split = len(segments) > 1
            if split and (not x.ndim or x.shape[0] != segments[-1][1].stop):
                return run(e, x)
            e.fired += 1  # e.count(state.epoch), inlined
            if e.epoch != state.epoch:
                e.epoch, ctx.invocation = state.epoch, 0
            else:
                ctx.invocation += 1
            if split:
                ctx.branch = None
                whole(x, ctx, segments)
                return None
            ctx.branch = segments[0][0]
            try:
                out = h(x, ctx)
            except InterventionError:
                raise
            except Exception as exc:
                raise _hook_failed(e, h, ctx, exc) from exc
            if out is None or fits or _fits(out, x):
                return out
            raise _wrong_output(e, h, x, out)  # type: ignore[arg-type]

        return hook

    def _input_hook(self, e: _Entry) -> Any:
        key = e.site.key

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if module is not e.module:
                raise _copied(e)
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

    def _stopping(self, e: _Entry, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, then end the forward once every site has fired in this call (``stop=True``)."""

        def hook(*args: Any) -> Any:
            out = fn(*args)
            if self._stop_epoch != self.state.epoch:
                self._stop_epoch, self._fired_now = self.state.epoch, set()
            self._fired_now.add(e.name)
            if len(self._fired_now) == len(self.entries):
                stop = StopForward(
                    f"attach(..., stop=True): every site fired ({len(self.entries)}), so the forward was ended "
                    "there; the model call returned nothing. Inside `with attach(...)` this ends the block quietly."
                )
                stop.session = self  # only this session's block swallows it (an inner one must not)
                raise stop
            return out

        return hook

    def _run(self, e: _Entry, x: Any) -> torch.Tensor | None:
        """Run a site's hooks on ``x``, one branch's rows at a time; the new tensor or None."""
        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(e.site, e.module, x)
        ctx, state = e.ctx, self.state
        e.count(state.epoch)
        if not e.layout_fixed:
            ctx.layout = self.adapter.layout(e.site.module, x.ndim)
            e.layout_fixed = True
        if not (ctx.stepped or state.forced):  # no CFG rows outside a denoiser: the common fast path
            ctx.branch = None
            return self._apply(e, x, ctx)
        segments = state.segments
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
        ctx.rows = EVERY_ROW
        # re-joined also when unchanged but tracked: a hook may have hooked the gradient of the
        # very rows it got (Grads), which reaches it only if those rows feed the model
        if changed or (x.requires_grad and torch.is_grad_enabled()):
            return torch.cat(pieces, dim=0)
        return None

    def _apply_whole(self, e: _Entry, x: torch.Tensor, ctx: Context, segments: Any) -> torch.Tensor | None:
        """Hooks that act on each row alike run once on the whole CFG batch; a hook with a
        ``whole_batch`` entry (a Cache: each branch's rows under its own key, one copy) gets the
        rows' labels with it."""
        changed = False
        for h, _, _, _ in e.hooks:
            whole = getattr(h, "whole_batch", None)
            if whole is not None:
                whole(x, ctx, segments)
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
            for h, when, slot, fits in e.hooks:
                if when is not None:
                    if selector is None:
                        selector = (ctx.step, ctx.timestep, ctx.branch, ctx.call, ctx.invocation)
                    if not when.allows(*selector):
                        if ctx.branch is None and when.branch != "all":
                            raise _unlabelled(e, h, when)
                        continue
                    e.applied[slot] = True
                out = h(x, ctx)
                if out is not None:
                    # _fits, inlined
                    if not fits and not (
                        isinstance(out, torch.Tensor)
                        and out.shape == x.shape
                        and out.dtype is x.dtype
                        and out.device == x.device
                    ):
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
        self._own_thread()
        previous = self.state.forced
        self.state.forced = name
        self.state.segments = ((name, slice(None)),)
        try:
            yield
        finally:
            self.state.forced = previous
            self.state.segments = ((previous, slice(None)),) if previous else ALL_ROWS

    def new_run(self) -> None:
        """Restart step and call counting (the next distinct timestep is step 0)."""
        self.state.new_run()

    @property
    def fired(self) -> dict[str, int]:
        """How many times each site fired."""
        return {e.name: e.fired for e in self.entries}

    # -- removal -------------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and wrapper this session added. Safe to call twice."""
        self._hooks.remove()
        while self._undo:
            self._undo.pop()()
        self._active = False

    def report_unfired(self) -> None:
        """Warn (or raise, with ``on_unfired="error"``) about sites that never fired and hooks whose
        ``When`` never matched: a result built on them would be built on a no-op."""
        if self.on_unfired == "ignore":
            return
        unfired = [e.name for e in self.entries if e.fired == 0]
        idle = [
            f"{_name(h)} at {e.name!r} ({when!r}, {e.fired} firings)"
            for e in self.entries
            if e.fired
            for h, when, slot, _ in e.hooks
            if not e.applied[slot]
        ]
        parts = []
        if unfired:
            parts.append(
                f"{len(unfired)} hooked site(s) never fired during the session: {unfired[:10]}. "
                "The module was not called (another branch of the model, or a different model object?)"
                + _compiled_hint()
            )
        if idle:
            parts.append(f"{len(idle)} hook(s) never applied, their When(...) matching none of the firings: {idle[:5]}")
        if not parts:
            return
        msg = " ".join(parts)
        if self.on_unfired == "error":
            raise SiteNeverFiredError(msg)
        warnings.warn(msg, SiteNeverFiredWarning, stacklevel=3)

    def __enter__(self) -> Session:
        if self._in_block:
            raise InterventionError(
                "this session is already inside its `with` block: a second `with session:` would remove its hooks "
                "when it ends, and the rest of the outer block would run without them. Use the one block, or "
                "attach a second session"
            )
        if not self._active:  # entered again after its block ended: attach the same hooks again
            # (its sites stay resolved, only checked unchanged: about 0.9x what registering raw hooks costs)
            self._check_unchanged()
            self.state.__init__()  # type: ignore[misc]  # in place: every context reads this object
            self._thread = None
            for e in self.entries:
                e.fired, e.epoch = 0, -1
                if not all(e.applied):
                    e.applied = [when is None for _, when, _, _ in e.hooks]
            self._register()
        self._in_block = True
        return self

    def _check_unchanged(self) -> None:
        """Before entering again: the adapter read anew from the model (a scheduler swapped since
        is the one whose steps are tracked), and every site and denoiser still the module it was
        resolved to (a module replaced since, e.g. by a LoRA wrapper that calls the old one inside,
        would leave hooks on the old one: they would miss the change, or never fire)."""
        if self._detected:
            self.adapter = _adapters.detect(self._target, cfg=self._cfg)
        tree = ModuleTree(self.adapter.components())
        now = {den: tree.get(den) for den in self.adapter.denoisers()}
        then = dict(zip(self._denoisers, self._denoiser_modules, strict=True))
        changed = [f"denoiser {d!r}" for d in [*now, *then] if now.get(d) is not then.get(d)]
        if not self._same_walk(tree.components):  # else every module on the sites' paths is the one hooked
            changed += [f"site {e.name!r}" for e in self.entries if tree.get(e.site.module) is not e.module]
        if changed:
            raise InterventionError(
                f"{changed[0]} holds a different module than when this session was built (the model was changed "
                "since, e.g. a layer replaced or wrapped): its hooks would act on the old module. Attach again: "
                "attach(model, hooks)"
            )
        _refuse_compiled(tree.compiled)
        self.tree = tree

    def _same_walk(self, components: dict[str, nn.Module]) -> bool:
        """Whether the remembered links of the sites' walk lead through the very modules they
        led through when this session was built."""
        if self._resolution is None or self._walked is None:
            return False
        now = self._resolution.modules(components)
        return now is not None and len(now) == len(self._walked) and all(map(operator.is_, now, self._walked))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._in_block = False
        self.remove()
        if exc_type is None:
            self.report_unfired()
        # a forward ended by stop=True ends the block: nothing after the model call in it runs, so
        # no partial output can be taken for a result
        return isinstance(exc, StopForward) and exc.session is self

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
    stop: bool = False,
) -> Session:
    """Attach hooks to a model or a diffusers pipeline.

    ``hooks`` maps site patterns (``"blocks.*.attn"``, ``"unet.mid_block:output"``, a group
    such as ``"@cross_attn"``) to a hook or a list of hooks that run in order; a hook is any
    ``fn(x, ctx) -> tensor | None`` (see :class:`interventions.Hook`). Every site is resolved
    before anything is registered. ``cfg`` declares a batched CFG layout for a bare
    denoiser (e.g. ``("uncond", "cond")``); pipelines are detected by their adapter.
    ``layouts`` overrides the activation layout of a site (``{"blocks.0": "BCT"}``; one of
    ``layout.KNOWN_LAYOUTS`` or None, checked here).
    ``on_unfired``: what to do when a site never fired or a hook's ``When`` never matched:
    "warn" (default), "error", "ignore". ``stop=True`` ends the forward as soon as every site
    has fired in a call (harvesting layer 6 of a 48-layer model pays for 6): the model call raises
    :class:`StopForward` instead of returning a partial output, and the ``with`` block swallows it
    and ends there (outside one, catch it).
    A hook's result must keep the shape, dtype and device of the site's tensor (else
    :class:`ShapeMismatchError` names the site and the hook).

    >>> import torch
    >>> from interventions import attach, Cache
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    >>> with attach(model, {"*": Cache(), "1": lambda x, ctx: 2 * x}) as session:
    ...     _ = model(torch.randn(2, 3))
    >>> session.fired
    {'0': 1, '1': 1}
    """
    return Session(target, hooks, adapter=adapter, cfg=cfg, layouts=layouts, on_unfired=on_unfired, stop=stop)


# -- helpers -----------------------------------------------------------------------------------
def _hook_list(pattern: Any, spec: Any) -> list[tuple[Hook, When | None, bool, bool]]:
    """The hooks given for one pattern, each with its ``When`` (a plain function has none),
    whether it acts on every row alike (no CFG split needed) and whether its result fits by
    construction (``Hook.result_fits``)."""
    if not isinstance(pattern, str):
        raise SiteError(
            f"attach(model, hooks): a site is a string such as 'blocks.0' or 'unet.mid_block', got "
            f"{type(pattern).__name__} {pattern!r}"
        )
    out = []
    for h in spec if isinstance(spec, (list, tuple)) else (spec,):
        if not callable(h):
            raise TypeError(f"site {pattern!r}: {h!r} is not a hook (a callable hook(x, ctx))")
        when = getattr(h, "when", None)
        if when is None:  # acts on every row alike (or caches a whole batch): no CFG split needed
            rowwise = getattr(h, "rowwise", False) or callable(getattr(h, "whole_batch", None))
        elif isinstance(when, When):
            rowwise = False
        else:
            raise TypeError(f"site {pattern!r}: when= takes a When(...), got {type(when).__name__}")
        out.append((h, when, rowwise, getattr(h, "result_fits", False)))
    return out


def _copied(e: _Entry) -> InterventionError:
    """A hook fired on a module that is not the one it was attached to: a copy of it made while
    the session was active (``copy.deepcopy`` copies a module's hooks), which would record into, or
    edit with, the original session."""
    return InterventionError(
        f"a copy of the module at site {e.name!r}, made while a session was attached to it, carries that "
        "session's hook (copy.deepcopy copies a module's hooks): it would record into the original session. "
        "Copy the model before attaching or after the session's block, and copy this one again"
    )


def _forced_on_batched(component: str, forced: str, segments: Any) -> InterventionError:
    """``session.branch`` labels whole calls; a call that batches CFG rows would be labelled
    ``forced`` in every row, the other branch's rows included."""
    blocks = ", ".join(f"{b} rows {r.start}:{r.stop}" for b, r in segments)
    return InterventionError(
        f"session.branch({forced!r}) labels every row of a denoiser call, but this call of "
        f"{component or 'the model'!r} batches CFG branches ({blocks}): the other branch's rows would be "
        f"recorded as {forced!r}. These rows are labelled already: drop session.branch here, and select rows "
        f"with When(branch={forced!r})."
    )


def _compiled_hint() -> str:
    """Why a site may not fire although its model ran: torch.compile code (compiled before the
    hooks were added, and guarding no hooks) runs without them. Read only if dynamo is loaded."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    compiled = dynamo is not None and sum(dynamo.counters["stats"].values()) > 0
    if not compiled:
        return ""
    return (
        " torch.compile has compiled code in this process: a model (or a function calling it) compiled before "
        "the hooks were attached runs without them. Attach before compiling, call the uncompiled module, or set "
        "torch._dynamo.config.skip_nnmodule_hook_guards = False so that adding hooks recompiles."
    )


def _refuse_compiled(compiled: set[str]) -> None:
    """Refuse hooks below a module that torch.compile already traced (they would be ignored)."""
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
