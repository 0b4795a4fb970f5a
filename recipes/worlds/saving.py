"""What a saved world checkpoint must not carry: ``save_pretrained`` records in each config the
folder the model was loaded from (``_name_or_path``), a path on the machine that trained it."""

from __future__ import annotations

import json
from pathlib import Path


def drop_source_paths(folder: str | Path) -> None:
    """Remove ``_name_or_path`` from every ``config.json`` under ``folder`` (loading ignores it)."""
    for config in Path(folder).rglob("config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
