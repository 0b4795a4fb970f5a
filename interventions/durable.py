"""Writes that survive a crash or a power loss: a file (or a folder of files) is written under a
temporary name and pushed to the disk, then renamed into place, and the rename itself pushed to
the disk, so a reader finds the old version or the new one, never a half-written one. Shared by
DiskStore's shards, a distributed harvest's manifests and the SAE trainer's checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: Path) -> None:
    """Push a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Move the written ``tmp`` (a file, or a folder whose files were each :func:`fsync`-ed) to
    ``final`` durably: ``tmp`` pushed to the disk, renamed over ``final``, the rename pushed too."""
    fsync(tmp)
    os.replace(tmp, final)
    fsync(final.parent)
