"""The errors ``hub_cards`` raises: one for artifacts it refuses, one for Hub requests that failed."""

from __future__ import annotations


class ArtifactError(ValueError):
    """An artifact folder or Hub repo that is missing, malformed or unsafe to load.

    Raised for a folder or repo that holds a pickle (``*.pt``, ``*.bin``, ...) where safetensors are
    expected, a truncated or corrupt safetensors file, a ``cfg.json`` with missing or wrongly typed
    fields, tensors whose names or shapes disagree with the config, and files that lead outside the
    folder. The message names the file and every problem found, so one read tells the user what to fix.
    """


class HubError(RuntimeError):
    """A Hub request that cannot succeed as asked: no such repo or revision, a tag that exists,
    an offline cache that lacks the files, an unreachable server. The message says what to do."""
