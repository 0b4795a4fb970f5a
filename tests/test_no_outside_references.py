"""Comments and docs point at nothing outside the repository (a reader of a clone cannot follow a
path into the workspace it was written in)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# workspace paths and the workspace's notes, spelled as they were before being replaced by facts
OUTSIDE = re.compile(r"/work/|\bshared/|\bresearch/[\w-]+\.md|\bpapers/|\bDESIGN\.md")


def test_no_tracked_text_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if name == "tests/test_no_outside_references.py" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # binary: checkpoints, images
            continue
        hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "say the fact itself, or point inside the repository:\n" + "\n".join(hits)
