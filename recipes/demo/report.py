"""The demo's report: one self-contained ``index.html`` (inline style, no scripts, relative links
only) with the sections the steps add, the exact command and the versions that made it."""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Section", "versions"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { font-size: .85em; color: #555; }
.audio { display: inline-block; margin: .3em 1em .3em 0; font-size: .85em; }
code, pre { background: #f6f6f6; padding: .1em .3em; } pre { padding: .6em; overflow-x: auto; }
"""


def versions() -> dict[str, str]:
    """python, torch, diffusers, transformers and interventions versions of this process."""
    import torch

    import interventions

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    out["interventions"] = interventions.__version__
    return out


@dataclass
class Section:
    """A titled part of the report; its blocks render in the order they were added."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.blocks.append(f"<p>{html.escape(paragraph)}</p>")

    def image(self, src: str, caption: str) -> None:
        alt = html.escape(caption)
        self.blocks.append(f'<figure><img src="{html.escape(src)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>')

    def audio(self, clips: list[tuple[str, str]]) -> None:
        """Players for ``(label, src)`` WAV clips."""
        players = "".join(
            f'<span class="audio">{html.escape(label)}<br>'
            f'<audio controls preload="metadata" src="{html.escape(src)}"></audio></span>'
            for label, src in clips
        )
        self.blocks.append(f"<div>{players}</div>")

    def table(self, rows: list[dict[str, Any]], caption: str = "") -> None:
        if not rows:
            return
        heads = list(rows[0])
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(h)))}</td>" for h in heads) + "</tr>" for r in rows
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        self.blocks.append(f"<table>{cap}<tr>{head}</tr>{cells}</table>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


@dataclass
class Report:
    """Sections plus what made them; :meth:`write` renders ``index.html`` in ``folder``."""

    folder: Path
    command: str
    sections: list[Section] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def write(self) -> Path:
        body = [
            "<h1>interventions demo</h1>",
            "<p>Localize a concept with activation patching, steer it with a contrastive steering vector, "
            "unlearn a style with SAeUron, and the same localization and steering on audio.</p>",
            f"<p>Made by <code>{html.escape(self.command)}</code></p>",
        ]
        for s in self.sections:
            body.append(f"<h2>{html.escape(s.title)}</h2>")
            body.extend(s.blocks)
        made = Section("How this report was made")
        made.table([{"component": k, "version": v} for k, v in versions().items()], "versions")
        if self.timings:
            made.table([{"step": k, "seconds": round(v, 1)} for k, v in self.timings.items()], "wall time")
        made.blocks.append(f"<pre>{html.escape(self.command)}</pre>")
        body.append(f"<h2>{made.title}</h2>")
        body.extend(made.blocks)
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>interventions demo</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )
        path = self.folder / "index.html"
        path.write_text(page, encoding="utf-8")
        return path
