"""The one error ``hub_cards`` raises for artifacts it refuses to write or read."""

from __future__ import annotations


class ArtifactError(ValueError):
    """An artifact folder or Hub repo that is missing, malformed or unsafe to load.

    Raised for a folder or repo that holds a pickle (``*.pt``, ``*.bin``, ...) where safetensors are
    expected, a truncated or corrupt safetensors file, a ``cfg.json`` with missing or wrongly typed
    fields, and tensors whose names or shapes disagree with the config. The message names the file
    and every problem found, so one read tells the user what to fix.
    """
