"""The site grammar: where a tensor flows in a module tree, and how a pattern resolves to sites.

A site is written ``path`` (the module's output), ``path:output.0`` (a tuple element),
``path:output.sample`` (a field of an output object), ``path:input`` (the first positional
argument, canonically ``path:input.0``), ``path:input.2`` or ``path:input.encoder_hidden_states``
(a keyword argument). The root module has the empty path, written ``:output`` or ``:input.0``.

In patterns, ``*`` matches exactly one path segment and ``**`` any number (zero included), and
segments may use ``fnmatch`` wildcards (``down_blocks.*.attn?``). The root module is only
addressed by the empty path, never by a glob. A pattern that matches nothing raises
:class:`SiteNotFoundError`, naming the closest real module paths.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .errors import InterventionError

Direction = Literal["output", "input"]
Key = tuple[int | str, ...]

_GLOB_CHARS = re.compile(r"[*?\[]")


class SiteError(InterventionError, ValueError):
    """A site string that does not follow the grammar."""


class SiteNotFoundError(InterventionError, KeyError):
    """A site pattern that matches no module; the message lists the closest real paths."""

    def __str__(self) -> str:  # KeyError would repr() the message and show quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Site:
    """One concrete place a tensor flows: a module path, a direction and a key into it."""

    module: str
    direction: Direction = "output"
    key: Key = field(default=())

    def __post_init__(self) -> None:
        if self.direction not in ("output", "input"):
            raise SiteError(f"direction must be 'output' or 'input', got {self.direction!r}")
        if self.direction == "input" and not self.key:
            object.__setattr__(self, "key", (0,))

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse ``path[:output|:input][.key...]``; ``parse(str(site)) == site``."""
        if not isinstance(text, str):
            raise SiteError(f"a site is a string, got {type(text).__name__}")
        return _parse(text)

    @classmethod
    def _parse_uncached(cls, text: str) -> Site:
        module, sep, rest = text.partition(":")
        if not sep:
            return cls(module)
        direction, _, key_text = rest.partition(".")
        if direction not in ("output", "input"):
            raise SiteError(
                f"site {text!r}: after ':' expected 'output' or 'input', got {direction!r} "
                "(examples: 'blocks.0:output.0', 'unet:input.encoder_hidden_states')"
            )
        key = tuple(_parse_key(part, text) for part in key_text.split(".")) if key_text else ()
        return cls(module, direction, key)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.direction == "output" and not self.key:
            return self.module if self.module else ":output"
        suffix = "".join(f".{k}" for k in self.key)
        return f"{self.module}:{self.direction}{suffix}"

    @functools.cached_property
    def name(self) -> str:
        """``str(site)``, computed once (read for every site on every attach)."""
        return str(self)

    @functools.cached_property
    def is_glob(self) -> bool:  # cached: read for every site on every attach
        return bool(_GLOB_CHARS.search(self.module))


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Site:
    return Site._parse_uncached(text)


def _parse_key(part: str, text: str) -> int | str:
    if not part:
        raise SiteError(f"site {text!r} has an empty key segment")
    if part.lstrip("-").isdigit():
        return int(part)
    if not part.isidentifier():
        raise SiteError(f"site {text!r}: key {part!r} is neither an index nor a name")
    return part


def match_path(pattern: str, path: str) -> bool:
    """Whether a module path matches a (possibly globbed) dotted pattern."""
    if not _GLOB_CHARS.search(pattern):
        return pattern == path
    if not path:
        return False
    return _match_segments(pattern.split("."), path.split("."))


def _match_segments(pats: list[str], parts: list[str]) -> bool:
    if not pats:
        return not parts
    head, rest = pats[0], pats[1:]
    if head == "**":
        return any(_match_segments(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match_segments(rest, parts[1:])


def expand(pattern: str, module_paths: Iterable[str]) -> list[str]:
    """All module paths that a pattern matches, in module order; no error when none match."""
    return [p for p in module_paths if match_path(pattern, p)]


def closest_paths(pattern: str, module_paths: Iterable[str], n: int = 5) -> list[str]:
    """Module paths that look most like ``pattern``, for error messages."""
    paths = [p for p in module_paths if p]
    literal = _GLOB_CHARS.sub("", pattern)
    if len(paths) <= 2 * n:  # a small model: every path is worth showing, the closest first
        return sorted(paths, key=lambda p: -difflib.SequenceMatcher(None, literal, p).ratio())[: 2 * n]
    close = difflib.get_close_matches(literal, paths, n=n, cutoff=0.3)
    if len(close) < n:  # also suggest paths sharing the last segment (e.g. 'attn2')
        tail = literal.rsplit(".", 1)[-1]
        close += [p for p in paths if p.endswith("." + tail) and p not in close][: n - len(close)]
    return close


def resolve(pattern: str | Site, module_paths: list[str]) -> list[Site]:
    """Resolve a site pattern to concrete sites, or raise :class:`SiteNotFoundError`."""
    site = pattern if isinstance(pattern, Site) else Site.parse(pattern)
    matches = expand(site.module, module_paths)
    if not matches:
        suggestions = closest_paths(site.module, module_paths)
        hint = ", ".join(repr(s) for s in suggestions) if suggestions else "(no similar paths)"
        raise SiteNotFoundError(
            f"site {str(site)!r} matches no module. Closest module paths: {hint}. "
            "List all paths with [name for name, _ in model.named_modules()]."
        )
    return [Site(m, site.direction, site.key) for m in matches]
