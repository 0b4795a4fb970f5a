"""Artifact folders as a whole: validate every SAE and steering vector in a folder before it is
pushed to, or after it is pulled from, the Hub (``hub_cards`` checks files; the formats' meaning is
checked here, by their owners :mod:`~interventions.sae_format` and :mod:`~interventions.steering_format`):
``hub_cards.push(folder, repo_id, check=check_artifacts)``, as ``interventions hub push`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import sae_format, steering_format


def check_artifacts(folder: str | os.PathLike[str]) -> None:
    """Load every SAE and steering vector under ``folder`` as :meth:`SAE.load` / :meth:`SteeringVector.load`
    would (without building modules); raises ``hub_cards.ArtifactError`` for the first one refused."""
    from hub_cards.layouts import CFG_NAME, SAE_WEIGHTS_NAME, STEERING_VECTOR_NAME, walk_files

    readers = {SAE_WEIGHTS_NAME: sae_format.read, STEERING_VECTOR_NAME: steering_format.read}
    for path in walk_files(Path(folder)):
        read = readers.get(path.name)
        if read is not None and (path.parent / CFG_NAME).is_file():
            read(path.parent)
