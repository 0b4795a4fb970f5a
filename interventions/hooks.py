"""The hooks: one operation each on the tensor at a site, composable in order.

Every hook is a small dataclass called as ``hook(x, ctx) -> tensor | None`` (None: unchanged),
with an optional ``when=When(...)`` that restricts it to some steps, timesteps or CFG branch.
The session hands a hook only the rows of the branch it is called for, with ``ctx.branch`` set,
so a hook never needs to know how a pipeline lays out its CFG batch. The one exception is a hook
that acts on every row alike and reads no branch (a Cache, or a hook whose ``rowwise`` is true,
such as one vector added to every row): without a ``when`` it gets the whole CFG batch at once,
with ``ctx.branch`` None, so the batch is not split and re-joined.

>>> import torch
>>> from interventions import attach, Cache, AddVector
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
>>> cache = Cache()
>>> with attach(model, {"0": [cache, AddVector(torch.ones(4), scale=2.0)]}):
...     _ = model(torch.zeros(1, 4))
>>> cache["0"].shape
torch.Size([1, 4])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from jaxtyping import Float

from .context import Context, When
from .errors import InterventionError, ShapeMismatchError
from .heads import head_mask
from .layout import along_features, feature_dim, from_tokens, to_tokens, token_mask
from .store import DiskStore, MemoryStore, Store, StoreKey, normal_key, store_key, with_branch

Tensor = torch.Tensor


class Hook(Protocol):
    """The hook contract: ``hook(x, ctx) -> tensor | None`` (None: unchanged). A plain function
    is a hook. Optional attributes the engine reads when present:

    - ``when``: a :class:`When` restricting the hook to some steps, branches, calls, invocations;
    - ``rowwise``: true if the hook treats every row alike and reads no branch, so that it may get
      a whole batched CFG call at once (no split and re-join);
    - ``whole_batch(x, ctx, segments)``: the entry used instead of ``__call__`` for such a call,
      with the row blocks of each branch (``Cache`` stores each branch's rows under its own key);
    - ``result_fits``: true if the hook's result has the shape, dtype and device of ``x`` by
      construction (it checked what it combines ``x`` with), so the engine skips its own check.

    The result must keep the shape, dtype and device of ``x``: the engine checks it (naming the
    site and both shapes) unless the hook declares ``result_fits``.
    """

    def __call__(self, x: Tensor, ctx: Context) -> Tensor | None: ...


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target`` (plain Python: torch's check costs µs)."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


class _Memo:
    """One cached value per hook, valid while its key (activation shape, dtype, device, layout and
    the hook's own parameters) is unchanged: validation and reshaping run once, not per call.
    Never holds a tensor that autograd tracks: a graph must not outlive its backward pass."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None


def _edits_of(value: Any) -> Any:
    """What changes when a mask or token list is edited in place: a tensor's version counter, a
    sequence's items (cheap: masks and token lists are set rarely and are short)."""
    if value is None:
        return None
    return value._version if isinstance(value, Tensor) else tuple(value)


def _with_norms_of(x: Tensor, out: Tensor, dim: int) -> Tensor:
    """``out`` rescaled so that each token keeps the norm it had in ``x`` (along ``dim``)."""
    return out * (x.norm(dim=dim, keepdim=True) / out.norm(dim=dim, keepdim=True).clamp_min(1e-12))


def _no_batch(mask: Tensor | None) -> bool:
    return mask is None or mask.ndim < 2 or mask.shape[0] == 1


def _memo_field() -> Any:
    return field(default_factory=_Memo, init=False, repr=False, compare=False)


def _check_fits(what: str, site: str, src: Tensor, x: Tensor, *, broadcast: bool) -> None:
    ok = _broadcasts_to(tuple(src.shape), tuple(x.shape)) if broadcast else src.shape == x.shape
    if not ok:
        raise ShapeMismatchError(
            f"{what} at site {site!r}: shape {tuple(src.shape)} does not fit the activation's shape {tuple(x.shape)}"
        )
    if src.dtype != x.dtype:
        raise ShapeMismatchError(
            f"{what} at site {site!r}: dtype {src.dtype} differs from the activation's {x.dtype}; "
            f"convert it with .to({x.dtype})"
        )
    if src.device != x.device:
        raise ShapeMismatchError(
            f"{what} at site {site!r}: tensor is on {src.device} but the activation is on "
            f"{x.device}; move it with .to('{x.device}')"
        )


def _feature_vector(what: str, v: Tensor, x: Tensor, ctx: Context) -> Tensor:
    """A 1-D per-feature vector placed on the site's feature axis, or a broadcastable tensor."""
    if v.ndim == 1:
        dim = feature_dim(ctx.layout, x.ndim)
        if v.shape[0] != x.shape[dim]:
            raise ShapeMismatchError(
                f"{what} at site {ctx.site!r}: vector shape {tuple(v.shape)} does not fit the "
                f"activation's shape {tuple(x.shape)} ({x.shape[dim]} features on dim {dim}, "
                f"layout {ctx.layout or 'features last'})"
            )
        v = along_features(v, x, ctx.layout)
    _check_fits(what, ctx.site, v, x, broadcast=True)
    return v


def _unit(v: Tensor, x: Tensor, ctx: Context) -> Tensor:
    """A direction placed on the site's feature axis, scaled to unit norm along it (the axis counted
    from the end: a per-feature vector on the last axis stays 1-D)."""
    return v / v.norm(dim=feature_dim(ctx.layout, x.ndim) - x.ndim, keepdim=True).clamp_min(1e-12)


def _mask_for(x: Tensor, ctx: Context, mask: Tensor | None, tokens: Any, channels: Any) -> Tensor | None:
    """Combine a broadcastable bool mask, token positions and channel indices into one mask."""
    out: Tensor | None = None
    if mask is not None:
        _check_fits("mask", ctx.site, mask.to(torch.bool), x.bool(), broadcast=True)
        out = mask.to(torch.bool)
    if tokens is not None:
        t = token_mask(x, ctx.layout, torch.as_tensor(tokens))
        out = t if out is None else out & t
    if channels is not None:
        flat = torch.zeros(x.shape[feature_dim(ctx.layout, x.ndim)], dtype=torch.bool)
        flat[torch.as_tensor(channels)] = True
        c = along_features(flat.to(x.device), x, ctx.layout)
        out = c if out is None else out & c
    return out


@dataclass(eq=False)
class Cache:
    """Record the site's tensor in a store under (site, step, branch).

    ``clone=True`` copies the tensor so that a later in-place op in the model (an inplace ReLU)
    cannot change what was recorded; ``clone=False`` saves a copy when that cannot happen. Where
    it can after all, reading the entry (or a :class:`DiskStore` writing it) is refused, not a
    later value returned: the tensor's version counter is checked (outside
    ``torch.inference_mode``, whose tensors keep no version).
    ``detach=False`` records the tensor with its autograd graph, for a loss computed from it
    afterwards (a classifier head on a denoiser's features, a guidance gradient): the store then
    keeps the graph alive as long as it holds the tensor (a :class:`DiskStore` cannot: refused).

    A second call of the model (another prompt through the pipeline) records under the same keys.
    ``on_repeat`` says what then happens: ``"append"`` keeps every call (``store.get`` concatenates
    the calls along the batch, ``store.parts`` yields them one by one: activations of many prompts
    for an SAE), ``"replace"`` keeps only the latest (a cache that a ``Patch`` reads), ``"warn"``
    (default) replaces and warns once, since losing earlier calls unnoticed is the costly mistake.

    >>> from interventions import attach
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> cache = Cache(on_repeat="append")
    >>> for batch in (torch.randn(4, 3), torch.randn(5, 3)):  # e.g. one pipeline call per prompt
    ...     with attach(model, {"0": cache}):
    ...         _ = model(batch)
    >>> cache.get("0", step=0).shape  # both runs' first call, one after the other
    torch.Size([9, 2])
    """

    rowwise: ClassVar[bool] = True  # without a When, a batched CFG call goes to whole_batch whole
    result_fits: ClassVar[bool] = True  # returns None: nothing for the engine to check
    store: Store = field(default_factory=MemoryStore)
    clone: bool = True
    when: When | None = None
    on_repeat: Literal["warn", "replace", "append"] = "warn"
    detach: bool = True
    _warned: bool = field(default=False, init=False, repr=False)
    # clone=False: each stored key's tensors (weakly) with their version when recorded
    _uncopied: dict[StoreKey, list[tuple[Any, int]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.on_repeat not in ("warn", "replace", "append"):
            raise ValueError(f"Cache on_repeat must be 'warn', 'replace' or 'append', got {self.on_repeat!r}")
        if not self.detach and isinstance(self.store, DiskStore):
            raise ValueError(
                "Cache(detach=False) keeps the autograd graph of what it records, but a DiskStore writes tensors "
                "to files without it; use a MemoryStore (the default) to keep the graph"
            )

    def __call__(self, x: Tensor, ctx: Context) -> None:
        # one frame per fire: this runs for every cached site at every call; a tensor outside any
        # graph (inference, no_grad) needs no detached alias (~0.7 us, a fifth of a small clone)
        t = x.detach() if self.detach and x.requires_grad else x
        key, store = ctx.key, self.store
        if self.clone:
            t = t.clone()
        else:
            self._remember_version(key, t)
        if self.on_repeat == "append":
            store.append(key, t)
            return
        if store.put(key, t) and not self._warned and self.on_repeat == "warn":
            self._warn_replaced(key)

    def whole_batch(self, x: Tensor, ctx: Context, segments: Sequence[tuple[str | None, slice]]) -> None:
        """Store each CFG branch's rows of a batched call under its own key, copying once."""
        t = x.detach() if self.detach and x.requires_grad else x
        key = ctx.key
        if self.clone:
            t = t.clone()
        else:
            for branch, _ in segments:
                self._remember_version(with_branch(key, branch), t)
        if self.on_repeat == "append":
            for branch, rows in segments:
                self.store.append(with_branch(key, branch), t[rows])
            return
        replaced = self.store.put_rows(key, t, segments)
        if replaced is not None and not self._warned and self.on_repeat == "warn":
            self._warn_replaced(replaced)

    def _remember_version(self, key: StoreKey, t: Tensor) -> None:
        """Keep ``t``'s version for :meth:`_assert_unchanged` where the store may hold ``t`` itself
        (a :class:`MemoryStore`, also one with a ``device``: moving to the device ``t`` is on is no
        copy; a :class:`DiskStore` checks what it buffers itself)."""
        if not isinstance(self.store, MemoryStore) or t.is_inference():
            return
        key, entry = normal_key(key), (weakref.ref(t), t._version)
        if self.on_repeat == "append":
            self._uncopied.setdefault(key, []).append(entry)
        else:
            self._uncopied[key] = [entry]

    def _assert_unchanged(self, key: StoreKey) -> None:
        """Refuse an entry that ``clone=False`` recorded and the model then changed in place."""
        for ref, version in self._uncopied.get(normal_key(key), ()):
            t = ref()
            if t is not None and t._version != version:
                raise InterventionError(
                    f"Cache(clone=False) at {key} (site, step, branch): the recorded tensor was changed in place "
                    f"after the site produced it (its version went from {version} to {t._version}): by the model "
                    "(an nn.ReLU(inplace=True) or an `h += ...` after the site) or by code that changed a tensor "
                    "read from this cache. The cache holds a later value, not the site's output: record it with "
                    "Cache(clone=True) (the default)"
                )

    def _warn_replaced(self, key: StoreKey) -> None:
        import warnings

        self._warned = True
        warnings.warn(
            f"Cache replaced what it held for {key} (site, step, branch): the model was called again with the "
            "same cache, and only the latest call is kept. To keep every call (e.g. activations of many prompts), "
            "use Cache(..., on_repeat='append'); to keep only the latest without this warning, on_repeat='replace'",
            UserWarning,
            stacklevel=2,
        )

    def keys(self) -> list[StoreKey]:
        return self.store.keys()

    def get(self, site: str, step: int | None = 0, branch: str | None = None, invocation: int = 0) -> Tensor:
        """The tensor cached at ``site`` for a step (or call index), branch and invocation (the
        n-th run of the module within that call, for a module used more than once)."""
        key = store_key(site, step, branch, invocation)
        if self._uncopied:
            self._assert_unchanged(key)
        return self.store.get(key)

    def entries(self, site: str) -> dict[tuple[int | None, str | None] | tuple[int | None, str | None, int], Tensor]:
        """All cached tensors of one site, keyed by (step, branch), plus the invocation for a
        module's later runs within one call."""
        keys = self.store.keys_of(site)
        if self._uncopied:
            for k in keys:
                self._assert_unchanged(k)
        return {k[1:]: self.store.get(k) for k in keys}

    def __getitem__(self, site: str) -> Tensor:
        found = self.entries(site)
        if len(found) != 1:
            sites = sorted({k[0] for k in self.store.keys()})
            raise KeyError(
                f"site {site!r} has {len(found)} cached entries (cached sites: {sites[:8]}); "
                "use cache.get(site, step=..., branch=...) or cache.entries(site)"
            )
        return next(iter(found.values()))

    def __len__(self) -> int:
        return len(self.store)


PatchSource = Cache | Store | Tensor | Callable[[Tensor, Context], Tensor]


@dataclass(eq=False)
class Patch:
    """Replace the site's tensor with a source: a Cache/Store (same key, or ``site=`` another
    site's), a tensor, or ``fn(x, ctx) -> tensor``. ``alpha`` interpolates (1: full patch, exact);
    ``mask``/``tokens``/``channels`` restrict which elements are patched.
    """

    source: PatchSource
    site: str | None = None
    alpha: float = 1.0
    mask: Tensor | None = None
    tokens: Sequence[int] | Tensor | None = None
    channels: Sequence[int] | Tensor | None = None
    when: When | None = None
    heads: Sequence[int] | Tensor | None = None  # only these heads: interventions.heads.head_mask
    n_heads: int | None = None  # per-head values: the last axis splits into n_heads

    @property
    def rowwise(self) -> bool:
        """A fixed tensor without a batch axis patches every row alike."""
        src = self.source
        return isinstance(src, Tensor) and (src.ndim < 2 or src.shape[0] == 1) and _no_batch(self.mask)

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        src = self._source(x, ctx)
        _check_fits("Patch", ctx.site, src, x, broadcast=not isinstance(self.source, Cache))
        mask = _mask_for(x, ctx, self.mask, self.tokens, self.channels)
        if self.heads is not None:
            hm = head_mask(x, self.heads, self.n_heads, ctx.site)
            mask = hm if mask is None else mask & hm
        if self.alpha != 1.0:
            patched = torch.lerp(x, src, self.alpha)
        elif mask is None:  # a copy, so the model never writes into the source in place
            return src.expand_as(x).clone()
        else:
            patched = src
        return patched if mask is None else torch.where(mask, patched, x)

    def _source(self, x: Tensor, ctx: Context) -> Tensor:
        src = self.source
        if isinstance(src, Tensor):
            return src
        store = src.store if isinstance(src, Cache) else src
        if hasattr(store, "get") and hasattr(store, "put"):
            key = ctx.key
            if self.site is not None:
                key = (self.site, *key[1:])  # type: ignore[assignment]
            if isinstance(src, Cache) and src._uncopied:
                src._assert_unchanged(key)
            return store.get(key).to(x.device)  # type: ignore[union-attr]
        if callable(src):
            out = src(x, ctx)
            if not isinstance(out, Tensor):
                raise InterventionError(
                    f"Patch at site {ctx.site!r}: the source function returned {type(out).__name__}, not a tensor"
                )
            return out
        raise TypeError(f"Patch source must be a Cache, store, tensor or callable, got {type(src).__name__}")


@dataclass(eq=False)
class AddVector:
    """``h <- h + scale * v`` along the feature axis; ``unit`` normalises ``v`` first;
    ``restore_norm`` rescales each token to its old norm: ``(h + a v) |h| / |h + a v|``.
    A vector that requires grad gets its gradient: with grad enabled it is prepared anew on each
    call (a memoised one would belong to an earlier graph, or to none)."""

    result_fits: ClassVar[bool] = True  # the prepared vector and mask were checked against x
    vector: Float[Tensor, "..."]
    scale: float = 1.0
    unit: bool = False
    restore_norm: bool = False
    mask: Tensor | None = None
    tokens: Sequence[int] | Tensor | None = None
    when: When | None = None
    _memo: _Memo = _memo_field()
    # the plain case (no mask, tokens or norm restoring) once prepared: (shape, dtype, layout,
    # vector version, delta); checked field by field, it costs half of building the general key
    _plain: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def rowwise(self) -> bool:
        return (self.vector.ndim < 2 or self.vector.shape[0] == 1) and _no_batch(self.mask)

    def __setattr__(self, name: str, value: Any) -> None:
        # a changed parameter (scale, vector, mask, ...) invalidates the prepared vector, so the
        # per-call key only holds what the activation and in-place edits of vector, mask and tokens change
        object.__setattr__(self, name, value)
        if name != "_memo" and name != "_plain" and "_memo" in self.__dict__:
            self._memo.key = None
            object.__setattr__(self, "_plain", None)

    def __call__(self, x: Tensor, ctx: Context) -> Tensor | None:
        plain, v = self._plain, self.vector
        if (
            plain is not None
            and x.shape == plain[0]
            and x.dtype is plain[1]
            and ctx.layout == plain[2]
            and v._version == plain[3]
            and not v.requires_grad
        ):
            return x + plain[4]  # the per-fire hot path: a steering vector on every call
        return self._general(x, ctx)

    def _general(self, x: Tensor, ctx: Context) -> Tensor | None:
        if self.scale == 0:
            return None
        v, m, tk = self.vector, self.mask, self.tokens
        if v.requires_grad and torch.is_grad_enabled():  # a trained vector: a fresh graph per call
            delta, mask = self._prepare(x, ctx)
        else:
            edits = None if m is None and tk is None else (_edits_of(m), _edits_of(tk))
            # no device in the key (reading and comparing it is a third of this hook's own cost): a
            # prepared vector or mask on another device than x makes torch raise below, loudly
            key = (x.shape, x.dtype, ctx.layout, v._version, edits)
            memo = self._memo
            if memo.key != key:
                memo.key, memo.value = key, self._prepare(x, ctx)
            delta, mask = memo.value
            if m is None and tk is None and not self.restore_norm and not v.requires_grad:
                object.__setattr__(self, "_plain", (x.shape, x.dtype, ctx.layout, v._version, delta))
        out = x + delta
        if self.restore_norm:
            out = _with_norms_of(x, out, feature_dim(ctx.layout, x.ndim))
        return out if mask is None else torch.where(mask, out, x)

    def _prepare(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor | None]:
        """The vector to add, checked and placed on the feature axis, and the token mask."""
        vec = _feature_vector("AddVector", self.vector, x, ctx)
        if self.unit:
            vec = _unit(vec, x, ctx)
        # a tensor times a Python scalar costs ~10 us on the CPU: skip it for scale 1
        return (vec if self.scale == 1 else vec * self.scale), _mask_for(x, ctx, self.mask, self.tokens, None)


@dataclass(eq=False)
class Ablate:
    """``"zero"``: h <- 0; ``"mean"``: h <- value (default: the mean over all but the feature
    axis); with v the unit ``direction``, ``"project_out"``: h <- h - strength * <h, v> v (the
    component along v removed, whatever its sign) and ``"project_positive"``:
    h <- h - strength * max(0, <h, v>) v (only a positive component removed: TADA's concept
    removal, which leaves tokens pointing away from the concept alone). ``restore_norm`` rescales
    each token to its old norm after a projection.

    >>> from interventions.context import RunState
    >>> h = torch.tensor([[2.0, 1.0], [-2.0, 1.0]])
    >>> v = torch.tensor([1.0, 0.0])
    >>> Ablate("project_out", direction=v)(h, Context("s", RunState())).tolist()
    [[0.0, 1.0], [0.0, 1.0]]
    >>> Ablate("project_positive", direction=v)(h, Context("s", RunState())).tolist()
    [[0.0, 1.0], [-2.0, 1.0]]
    """

    mode: Literal["zero", "mean", "project_out", "project_positive"] = "zero"
    direction: Tensor | None = None
    value: Tensor | None = None
    strength: float = 1.0
    restore_norm: bool = False
    mask: Tensor | None = None
    tokens: Sequence[int] | Tensor | None = None
    channels: Sequence[int] | Tensor | None = None
    when: When | None = None
    heads: Sequence[int] | Tensor | None = None  # only these heads: interventions.heads.head_mask
    n_heads: int | None = None  # per-head values: the last axis splits into n_heads

    def __post_init__(self) -> None:
        if self.mode == "project":
            raise ValueError(
                "Ablate('project') is ambiguous: use 'project_out' (removes the component along the direction, "
                "h - <h,v> v) or 'project_positive' (removes only a positive component, h - max(0, <h,v>) v, "
                "as TADA removes a concept)"
            )
        if self.mode not in ("zero", "mean", "project_out", "project_positive"):
            raise ValueError(
                f"Ablate mode must be 'zero', 'mean', 'project_out' or 'project_positive', got {self.mode!r}"
            )
        if self.mode.startswith("project") and self.direction is None:
            raise ValueError(f"Ablate({self.mode!r}) needs direction=<a per-feature vector>")
        if self.restore_norm and not self.mode.startswith("project"):
            raise ValueError(f"Ablate restore_norm applies to mode='project' only, not {self.mode!r}")

    @property
    def rowwise(self) -> bool:
        """Everything but a mean taken over the batch itself acts on each row alike."""
        return (self.mode != "mean" or self.value is not None) and _no_batch(self.mask)

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        dim = feature_dim(ctx.layout, x.ndim)
        if self.mode == "zero":
            out = torch.zeros_like(x)
        elif self.mode == "mean":
            if self.value is None:
                out = x.mean(dim=[d for d in range(x.ndim) if d != dim], keepdim=True).expand_as(x)
            else:
                out = _feature_vector("Ablate(mean)", self.value, x, ctx).expand_as(x)
        else:
            assert self.direction is not None
            v = _unit(_feature_vector("Ablate(project)", self.direction, x, ctx), x, ctx)
            coef = (x * v).sum(dim=dim, keepdim=True)
            if self.mode == "project_positive":
                coef = coef.clamp_min(0)
            out = x - self.strength * coef * v
            if self.restore_norm:
                out = _with_norms_of(x, out, dim)
        mask = _mask_for(x, ctx, self.mask, self.tokens, self.channels)
        if self.heads is not None:
            hm = head_mask(x, self.heads, self.n_heads, ctx.site)
            mask = hm if mask is None else mask & hm
        return out if mask is None else torch.where(mask, out, x)


class Autoencoder(Protocol):
    def encode(self, x: Tensor) -> Tensor: ...
    def decode(self, z: Tensor) -> Tensor: ...


@dataclass(eq=False)
class SAEEdit:
    """Encode the site's tokens, edit the latents, decode, and keep the SAE's error term:
    ``x + dec(edit(z)) - dec(z)``. With no edit the result is ``x`` itself.

    ``edit(z, ctx) -> z'`` works on ``[num_tokens, d_sae]`` latents; with ``stage="pre"`` it
    edits the pre-activations before the SAE's top-k / threshold (needs ``sae.pre_acts`` and
    ``sae.activate``). ``tokens`` restricts the edit to some positions. Any object with
    ``encode``/``decode`` works for ``stage="post"``. The edit may read ``ctx.branch``, so under
    batched CFG it gets each branch's latents separately, as in sequential CFG.
    """

    sae: Autoencoder
    edit: Callable[[Tensor, Context], Tensor] | None = None
    stage: Literal["post", "pre"] = "post"
    tokens: Sequence[int] | Tensor | None = None
    when: When | None = None

    @property
    def rowwise(self) -> bool:
        """Only without an edit: an edit function may depend on the branch (and a batch top-k SAE
        on which rows it encodes together)."""
        return self.edit is None

    def __post_init__(self) -> None:
        if self.stage not in ("post", "pre"):
            raise ValueError(f"SAEEdit stage must be 'post' or 'pre', got {self.stage!r}")
        if self.stage == "pre" and not (hasattr(self.sae, "pre_acts") and hasattr(self.sae, "activate")):
            raise TypeError("SAEEdit(stage='pre') needs an SAE with pre_acts() and activate()")

    def __call__(self, x: Tensor, ctx: Context) -> Tensor | None:
        if self.edit is None:
            return None
        tok = to_tokens(x, ctx.layout)
        weight = getattr(self.sae, "W_enc", None)
        if isinstance(weight, Tensor):
            if weight.device != tok.device:
                raise ShapeMismatchError(
                    f"SAE edit at site {ctx.site!r}: the SAE is on {weight.device}, the activation on {x.device}; "
                    f"move the SAE with sae.to('{x.device}')"
                )
            tok = tok.to(weight.dtype)  # encode in the SAE's precision (no copy if it is the same); cast back below
        if self.stage == "pre":
            pre = self.sae.pre_acts(tok)  # type: ignore[attr-defined]
            z = self.sae.activate(pre)  # type: ignore[attr-defined]
            z_edit = self.sae.activate(self._edited(pre, ctx))  # type: ignore[attr-defined]
        else:
            z = self.sae.encode(tok)
            z_edit = self._edited(z, ctx)
        delta = self.sae.decode(z_edit) - self.sae.decode(z)
        out = x + from_tokens(delta, x, ctx.layout).to(x.dtype)
        mask = _mask_for(x, ctx, None, self.tokens, None)
        return out if mask is None else torch.where(mask, out, x)

    def _edited(self, z: Tensor, ctx: Context) -> Tensor:
        assert self.edit is not None
        z_edit = self.edit(z, ctx)
        if not isinstance(z_edit, Tensor) or z_edit.shape != z.shape:
            got = tuple(z_edit.shape) if isinstance(z_edit, Tensor) else type(z_edit).__name__
            raise ShapeMismatchError(
                f"SAEEdit at site {ctx.site!r}: edit returned {got}, expected latents of shape {tuple(z.shape)}"
            )
        return z_edit


@dataclass(eq=False)
class WidthCheck:
    """Refuse a site whose feature width differs from what an artifact (SAE, vector) was made for."""

    width: int
    what: str
    when: When | None = None

    def __call__(self, x: Tensor, ctx: Context) -> None:
        dim = feature_dim(ctx.layout, x.ndim)
        if x.shape[dim] != self.width:
            raise ShapeMismatchError(
                f"{self.what}: site {ctx.site!r} has {x.shape[dim]} features (shape {tuple(x.shape)}), "
                f"the artifact expects {self.width}; it was made for another model or site"
            )


@dataclass(eq=False)
class Grads:
    """Collect d(loss)/d(site tensor) for a loss computed later, keyed like Cache.

    Works for input sites too (a text embedding): a tensor that does not require grad is
    replaced by an equal leaf that does. Under batched CFG each branch's rows get their own
    entry (the session keeps the rows it hands the hook in the graph, so their gradient arrives).
    Needs grad enabled where the model runs (diffusers pipelines' ``__call__`` runs under
    ``no_grad``: call the denoiser directly).
    """

    store: Store = field(default_factory=MemoryStore)
    when: When | None = None

    def __call__(self, x: Tensor, ctx: Context) -> Tensor | None:
        if not torch.is_grad_enabled():
            raise InterventionError(
                f"Grads at site {ctx.site!r}: gradients are disabled here (torch.no_grad or "
                "inference_mode); run the model under torch.enable_grad()"
            )
        key = ctx.key
        out = None
        if not x.requires_grad:
            out = x = x.detach().requires_grad_(True)

        def keep(g: Tensor) -> None:  # a tensor hook returns None, not the store's answer
            self.store.put(key, g.detach())

        x.register_hook(keep)
        return out

    def get(self, site: str, step: int | None = 0, branch: str | None = None, invocation: int = 0) -> Tensor:
        return self.store.get(store_key(site, step, branch, invocation))

    def __getitem__(self, site: str) -> Tensor:
        found = self.store.keys_of(site)
        if len(found) != 1:
            raise KeyError(f"site {site!r} has {len(found)} gradient entries; use grads.get(site, step, branch)")
        return self.store.get(found[0])


@dataclass(eq=False)
class EditGrad:
    """Edit the gradient that flows back through the site: ``scale`` multiplies it (0 blocks it,
    as gradient routing does), ``project_out`` removes its component along a per-feature
    direction, ``fn(grad, key) -> grad`` does anything else (``key`` is the firing's store key).
    Several may be given; they apply in that order.

    The edit belongs to the graph built inside the session (a backward run after the ``with``
    block still sees it, as ``Grads`` does); later forwards outside the session are untouched.

    >>> import torch
    >>> from interventions import attach
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> x = torch.ones(1, 2, requires_grad=True)
    >>> with attach(model, {"0": EditGrad(scale=0.0)}):
    ...     model(x).sum().backward()
    >>> x.grad
    tensor([[0., 0.]])
    """

    scale: float | None = None
    project_out: Tensor | None = None
    fn: Callable[[Tensor, StoreKey], Tensor] | None = None
    when: When | None = None

    def __post_init__(self) -> None:
        if self.scale is None and self.project_out is None and self.fn is None:
            raise ValueError("EditGrad needs scale=, project_out= (a direction) or fn=(grad, key) -> grad")

    def __call__(self, x: Tensor, ctx: Context) -> None:
        if not (torch.is_grad_enabled() and x.requires_grad):
            why = "gradients are disabled here" if not torch.is_grad_enabled() else "no gradient flows through it"
            raise InterventionError(
                f"EditGrad at site {ctx.site!r}: {why}, so the edit would never apply; run the model under "
                "torch.enable_grad() with a loss that depends on this site (for an input site, pass inputs "
                "with requires_grad=True)"
            )
        key = ctx.key
        direction = None
        if self.project_out is not None:  # the gradient has the site's shape: one feature axis for both
            v = _unit(_feature_vector("EditGrad(project_out)", self.project_out, x, ctx), x, ctx)
            direction = (v, feature_dim(ctx.layout, x.ndim))
        x.register_hook(lambda g: self._edit(g, key, direction))

    def _edit(self, g: Tensor, key: StoreKey, direction: tuple[Tensor, int] | None) -> Tensor:
        if self.scale is not None:
            g = g * self.scale
        if direction is not None:
            v, dim = direction
            g = g - (g * v).sum(dim=dim, keepdim=True) * v
        if self.fn is not None:
            out = self.fn(g, key)
            if not isinstance(out, Tensor) or out.shape != g.shape:
                raise ShapeMismatchError(
                    f"EditGrad at {key}: fn returned {type(out).__name__}, not a gradient of shape {tuple(g.shape)}"
                )
            g = out
        return g


@dataclass(eq=False)
class Lambda:
    """Any function ``fn(x, ctx) -> tensor | None``."""

    fn: Callable[[Tensor, Context], Tensor | None]
    when: When | None = None

    def __call__(self, x: Tensor, ctx: Context) -> Tensor | None:
        return self.fn(x, ctx)
