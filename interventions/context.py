"""What a hook knows when it fires: the site, the call, and for denoisers the step, timestep and
classifier-free-guidance branch of the rows it sees; and ``When``, which restricts a hook to some
of them without the user counting calls.

The step index counts denoiser evaluations since the run began (a run begins when the pipeline's
scheduler sets its timesteps, or when the session starts). A call starts a new step when its
timestep differs from the previous call's, or, in a pipeline, when the scheduler's ``step()`` ran
since the previous call: so every evaluation of a second-order solver is its own step (Heun's
``[999, 666, 666, ...]`` gives as many steps as ``scheduler.timesteps`` has entries), while a
second pass before the update, as in sequential CFG, stays in the same step. A bare denoiser
called by hand has no scheduler to watch: its steps follow the timestep alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Rows = slice
StoreKey = tuple[str, int | None, str | None] | tuple[str, int | None, str | None, int]
Segments = tuple[tuple[str | None, Rows], ...]
EVERY_ROW: Rows = slice(None)
ALL_ROWS: Segments = ((None, EVERY_ROW),)
# every branch name an adapter labels rows with (InstructPix2Pix batches an image-only block,
# the PAG pipelines a perturbed-attention block, SD3 runs a skip-layer-guidance pass)
BRANCHES = ("cond", "uncond", "image_cond", "perturbed", "skip_layers")


class RunState:
    """Tracking state of one session. The session is its only writer: adapters and the session's
    own torch hooks report what they see through these methods (a run began, the scheduler
    stepped, a component's call began, a denoiser call began with this timestep and these
    row blocks) and never set its fields.

    ``calls`` counts the calls of each component (a pipeline's text encoder, VAE, denoisers; the
    root of a plain model) since the run began; ``epoch`` counts calls of every component, so that
    a site knows whether it already fired during the current call (its invocation index).
    """

    __slots__ = (
        "calls", "run", "step", "timestep", "segments", "depth", "epoch", "_last_t", "_stepped", "forced", "open",
    )  # fmt: skip

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.run = 0
        self.step: int | None = None
        self.timestep: float | None = None
        self.segments: Segments = ALL_ROWS
        self.depth = 0  # nesting of denoiser calls: > 0 inside one
        self.epoch = 0
        self._last_t: float | None = None
        self._stepped = False  # the scheduler updated the sample since the last denoiser call
        self.forced: str | None = None  # branch set by ``session.branch(name)``
        self.open = False  # a pipeline call under way

    def new_run(self) -> None:
        """A new run (a pipeline call, a ``generate`` call): steps and call indices restart."""
        self.run += 1
        self.calls.clear()
        self.restart_steps()

    def pipeline_call_began(self) -> None:
        """A pipeline's ``__call__`` began (its ``check_inputs``): a new run, under way until it ends."""
        self.new_run()
        self.open = True

    def timesteps_set(self) -> None:
        """A pipeline's scheduler set its timesteps: the denoising loop begins (steps restart), also
        in a pipeline whose ``__call__`` never runs its ``check_inputs``."""
        self.restart_steps()
        self.open = True

    def pipeline_call_ended(self) -> None:
        """The pipeline call ended (its ``maybe_free_model_hooks``): what it set on the pipeline, its
        CFG flag, no longer describes a denoiser call made by hand after it."""
        self.open = False

    def restart_steps(self) -> None:
        """The scheduler set its timesteps: the next denoiser call is step 0. No denoiser call is
        open any more: one interrupted by KeyboardInterrupt never ran its exit hook (torch runs
        ``always_call`` hooks on exceptions only), and would leave every later call nested."""
        self.step = None
        self._last_t = None
        self._stepped = False
        self.depth = 0
        self.segments = self._between_calls()

    def scheduler_stepped(self) -> None:
        """The pipeline's scheduler updated the sample: the next denoiser call is a new step even
        at the same timestep (a second-order solver's correction evaluation)."""
        self._stepped = True

    def begin_call(self, component: str) -> None:
        """A call of ``component`` began (not nested in another call of it)."""
        self.calls[component] = self.calls.get(component, -1) + 1
        self.epoch += 1

    def enter_denoiser(self, component: str, timestep: float | None, segments: Segments) -> None:
        self.depth += 1
        if self.depth > 1:  # a denoiser run inside another: same step, same rows
            return
        self.begin_call(component)
        if self.step is None:
            self.step = 0
        elif self._stepped or (timestep is not None and timestep != self._last_t):
            self.step += 1
        self._stepped = False
        if timestep is not None:
            self._last_t = timestep
        self.timestep = timestep
        self.segments = ((self.forced, slice(None)),) if self.forced else segments

    def _between_calls(self) -> Segments:
        """The rows' labels outside any denoiser call: the forced branch, else none."""
        return ((self.forced, slice(None)),) if self.forced else ALL_ROWS

    def exit_denoiser(self, *hook_args: Any) -> None:
        """A denoiser call ended; registered as the denoiser's forward hook itself (its arguments,
        module, inputs and output, are not needed: a call less per step)."""
        self.depth = max(self.depth - 1, 0)
        if not self.depth:
            self.segments = self._between_calls()


class Context:
    """Passed to every hook call. Cheap: one per site, reading the session's live state.

    ``component`` is the pipeline component (or ``""``, the model) the site lies in; ``stepped``
    whether that component is a denoiser; ``invocation`` counts the site's earlier firings in the
    same call (a module run twice in one forward: 0, then 1).
    """

    __slots__ = ("site", "layout", "_state", "branch", "rows", "component", "stepped", "invocation")

    def __init__(
        self, site: str, state: RunState, layout: str | None = None, component: str = "", stepped: bool = False
    ) -> None:
        self.site = site
        self.layout = layout
        self._state = state
        self.branch: str | None = None
        self.rows: Rows = EVERY_ROW  # one shared slice: a context is made per site at every attach
        self.component = component
        self.stepped = stepped
        self.invocation = 0

    @property
    def step(self) -> int | None:
        """Denoising step index (one per denoiser evaluation of the solver, CFG passes included),
        or None outside a denoiser call (and for plain models)."""
        return self._state.step if self.stepped and self._state.depth else None

    @property
    def timestep(self) -> float | None:
        return self._state.timestep if self.stepped and self._state.depth else None

    @property
    def call(self) -> int:
        """Index of the current call of this site's component (the model, a pipeline's text
        encoder, VAE or denoiser) within the run; -1 before its first call."""
        return self._state.calls.get(self.component, -1)

    @property
    def run(self) -> int:
        return self._state.run

    @property
    def key(self) -> StoreKey:
        """The store key of this firing: (site, step or call, branch), plus the invocation index
        when the site already fired in this call."""
        state = self._state
        step = state.step if self.stepped and state.depth else state.calls.get(self.component, -1)
        if self.invocation:
            return (self.site, step, self.branch, self.invocation)
        return (self.site, step, self.branch)

    def __repr__(self) -> str:
        inv = f", invocation={self.invocation}" if self.invocation else ""
        return (
            f"Context(site={self.site!r}, step={self.step}, t={self.timestep}, "
            f"branch={self.branch!r}, call={self.call}{inv})"
        )


StepSpec = int | range | slice | Iterable[int] | Callable[[int], bool] | None


@dataclass(frozen=True)
class When:
    """Restrict a hook to some denoising steps, a timestep interval, a CFG branch, some calls or
    some invocations of a module that runs more than once per call.

    ``steps``: an index, a ``range``/``slice``, an iterable of indices or a predicate;
    ``t``: inclusive ``(lo, hi)`` interval on the timestep (or sigma) the denoiser received;
    ``branch``: ``"all"`` or one of :data:`BRANCHES` (``"cond"``, ``"uncond"``, and the extra
    blocks some pipelines batch); a name outside these raises here, since a misspelt branch would
    match no rows and silently do nothing. ``calls``: like ``steps`` on the call index of the
    site's component, for models without steps (the generation step of a language model: call
    indices restart with each ``generate()``). ``invocations``: like ``steps`` on the invocation
    index (a shared layer run three times per forward fires as invocations 0, 1, 2).

    ``steps`` and ``t`` on a site that has no denoising steps, and ``branch`` on rows that carry no
    CFG label, are errors (at attach, or when the hook first meets such rows), never a hook that
    silently does nothing. Slices take indices from 0 with a positive step: a negative bound
    would count from an end the run has not reached yet.

    >>> When(steps=range(0, 10), branch="cond").allows(step=3, t=500.0, branch="cond", call=0)
    True
    """

    steps: StepSpec = None
    t: tuple[float, float] | None = None
    branch: str = "all"
    calls: StepSpec = None
    invocations: StepSpec = None
    _steps: Callable[[int], bool] | None = field(init=False, repr=False, compare=False)
    _calls: Callable[[int], bool] | None = field(init=False, repr=False, compare=False)
    _invocations: Callable[[int], bool] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.t is not None and (len(self.t) != 2 or self.t[0] > self.t[1]):
            raise ValueError(f"When(t=...) takes an interval (lo, hi) with lo <= hi, got {self.t}")
        if not isinstance(self.branch, str):
            raise TypeError(f"When(branch=...) takes a string such as 'cond', got {self.branch!r}")
        check_branch(self.branch, "When(branch=...)")
        object.__setattr__(self, "_steps", _predicate(self.steps, "steps"))
        object.__setattr__(self, "_calls", _predicate(self.calls, "calls"))
        object.__setattr__(self, "_invocations", _predicate(self.invocations, "invocations"))

    @property
    def needs_steps(self) -> bool:
        """Whether the selector reads denoising steps or timesteps (meaningless on a plain model)."""
        return self._steps is not None or self.t is not None

    def allows(self, step: int | None, t: float | None, branch: str | None, call: int, invocation: int = 0) -> bool:
        if self._steps is not None and (step is None or not self._steps(step)):
            return False
        if self.t is not None and (t is None or not self.t[0] <= t <= self.t[1]):
            return False
        if self.branch != "all" and branch != self.branch:
            return False
        if self._invocations is not None and not self._invocations(invocation):
            return False
        return self._calls is None or self._calls(call)


def check_branch(name: str, where: str, valid: tuple[str, ...] = ("all", *BRANCHES)) -> None:
    """Refuse a branch name outside ``valid``: one vocabulary for labelling rows (``attach(cfg=)``,
    ``session.branch``) and selecting them (``When``), so that a typo cannot match nothing."""
    if name in valid:
        return
    import difflib  # only on the error path: ``import interventions`` stays fast

    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"{where} got branch {name!r}{hint}: it names no CFG branch, so hooks selecting rows by branch "
        f"would silently miss them. Valid branches: {', '.join(map(repr, valid))}"
    )


def _predicate(spec: StepSpec, name: str) -> Callable[[int], bool] | None:
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise TypeError(f"When({name}=...) takes indices, not a bool")
    if isinstance(spec, int):
        _non_negative(spec, name)
        return lambda i: i == spec
    if isinstance(spec, slice):
        lo, hi, st = spec.start or 0, spec.stop, 1 if spec.step is None else spec.step
        for bound in (lo, hi):
            if bound is not None:
                _non_negative(bound, name)
        if st <= 0:
            raise ValueError(f"When({name}=slice(...)) needs a positive step, got {st}")
        return lambda i: i >= lo and (hi is None or i < hi) and (i - lo) % st == 0
    if isinstance(spec, range):
        if spec.start < 0 or spec.stop < -1:
            raise ValueError(f"When({name}=range(...)) takes indices from 0, got {spec}")
        return spec.__contains__
    if callable(spec):
        return spec
    values = frozenset(spec)
    for v in values:
        _non_negative(v, name)
    return values.__contains__


def _non_negative(index: int, name: str) -> None:
    if not isinstance(index, int) or index < 0:
        raise ValueError(
            f"When({name}=...) takes indices from 0, got {index!r}: a negative index would count from an end "
            "the run has not reached when the hook fires; write the indices out (e.g. range(n - 3, n))"
        )
