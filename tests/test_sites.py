"""Site grammar: parsing, formatting, glob expansion and errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interventions import Site, SiteError, SiteNotFoundError, attach
from interventions.sites import expand, match_path, resolve
from interventions.testing import module_paths, module_trees, site_patterns

segment = st.from_regex(r"[a-z_][a-z0-9_]{0,6}|[0-9]{1,2}", fullmatch=True)
paths = st.lists(segment, min_size=0, max_size=4).map(".".join)
keys = st.lists(st.one_of(st.integers(0, 9), st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)), max_size=3)


@given(paths, st.sampled_from(["output", "input"]), keys)
def test_parse_format_roundtrip(path, direction, key):
    site = Site(path, direction, tuple(key))
    assert Site.parse(str(site)) == site


@pytest.mark.parametrize(
    "text, expected",
    [
        ("blocks.0", Site("blocks.0")),
        ("blocks.0:output.0", Site("blocks.0", "output", (0,))),
        ("unet:output.sample", Site("unet", "output", ("sample",))),
        ("attn:input", Site("attn", "input", (0,))),
        ("attn:input.3", Site("attn", "input", (3,))),
        ("unet:input.encoder_hidden_states", Site("unet", "input", ("encoder_hidden_states",))),
        (":output", Site("")),
    ],
)
def test_grammar_examples(text, expected):
    assert Site.parse(text) == expected


@pytest.mark.parametrize("bad", ["blocks:outptu", "x:input..1", "x:output.a-b"])
def test_bad_grammar_is_refused(bad):
    with pytest.raises(SiteError, match="site"):
        Site.parse(bad)


def _brute(pattern, paths):
    """Reference matcher: try every number of segments for each '**', then fnmatch per segment."""
    import fnmatch
    import itertools

    pats = pattern.split(".")
    stars = [i for i, p in enumerate(pats) if p == "**"]

    def ok(parts):
        for counts in itertools.product(range(len(parts) + 1), repeat=len(stars)):
            expanded = []
            for i, p in enumerate(pats):
                expanded += ["*"] * counts[stars.index(i)] if i in stars else [p]
            if len(expanded) == len(parts) and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(parts, expanded, strict=True)
            ):
                return True
        return False

    return [p for p in paths if p and ok(p.split("."))]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_glob_expansion_matches_brute_force(data):
    model = data.draw(module_trees())
    pattern = data.draw(site_patterns(model))
    paths = module_paths(model)
    assert expand(pattern, paths) == _brute(pattern, paths)


def test_double_star_matches_zero_or_more_segments():
    assert match_path("a.**.c", "a.c")
    assert match_path("a.**.c", "a.b.x.c")
    assert not match_path("a.*.c", "a.c")
    assert not match_path("**", "")  # the root is only addressed literally


def test_unknown_site_names_closest_paths(tiny_mlp):
    with pytest.raises(SiteNotFoundError) as err:
        attach(tiny_mlp, {"layers.1.atn": lambda x, ctx: None})
    msg = str(err.value)
    assert "'layers.1.atn' matches no module" in msg
    assert "layers.1.attn" in msg


def test_resolve_expands_globs_in_module_order(tiny_mlp):
    sites = resolve("layers.*.attn:output.0", [n for n, _ in tiny_mlp.named_modules()])
    assert [str(s) for s in sites] == ["layers.0.attn:output.0", "layers.1.attn:output.0"]
