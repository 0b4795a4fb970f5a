"""Errors the library raises. Each message names the site and says how to fix the input."""

from __future__ import annotations


class InterventionError(Exception):
    """Base class: a misuse that the library detected (never a bug in the user's model)."""


class ShapeMismatchError(InterventionError, ValueError):
    """A vector, patch or hook result whose shape, dtype or device does not fit the site."""


class HookError(InterventionError, RuntimeError):
    """A hook raised while the model ran; the original exception is the ``__cause__``."""


class SiteNeverFiredError(InterventionError, RuntimeError):
    """A site that the session hooked was never reached (raised with ``on_unfired="error"``)."""


class SiteNeverFiredWarning(UserWarning):
    """A site that the session hooked was never reached (the default report)."""


class CompiledModelError(InterventionError, RuntimeError):
    """Hooks added to a model that ``torch.compile`` already traced would be silently ignored."""


class AdapterError(InterventionError, ValueError):
    """The adapter cannot read the model (a timestep, a CFG layout, a component)."""


class StoreError(InterventionError, ValueError):
    """A store folder holds a file that claims to be a shard but cannot be read as one, or a key's
    parts cannot be joined."""


class SelectorError(InterventionError, ValueError):
    """A ``When`` that can never apply where it was attached (steps on a model without denoising
    steps, a branch on rows that carry no CFG label)."""


class StopForward(Exception):
    """Raised out of a model call by ``attach(..., stop=True)`` once every site has fired: the rest
    of the forward is skipped and nothing is returned (the ``with`` block of the session that
    raised it, ``session``, swallows it; an inner session's block lets it through)."""

    session: object = None
