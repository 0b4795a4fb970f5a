"""``interventions demo --quick`` end to end: the numbers it measures, and its report rendered in a
real headless Chromium (every image and audio element loads, the page is not blank).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and ``selenium``
(the ``test`` extra). Without a browser the browser test is skipped, except under ``CI=true``,
where a missing browser fails it.
"""

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from interventions.cli import main

torch.set_num_threads(1)

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1600",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """``interventions demo --quick --out DIR`` through the console entry point's function (in this
    process: the libraries are imported once; tests/test_demo_cli.py runs the command itself)."""
    out = tmp_path_factory.mktemp("demo") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    assert Path(printed.getvalue().strip().splitlines()[-1]) == out.resolve()  # it prints the report folder
    return out


def test_quick_demo_measures_what_it_shows(report):
    m = json.loads((report / "metrics.json").read_text())
    loc = m["images"]["localization"]
    # circle vs square enters through the mid-block's cross-attention (shapes world)
    assert loc["localized"].startswith("unet.mid_block.attentions.0")
    assert loc["source"] > 0 > loc["baseline"]
    by_site = {r["site"]: r["normalized"] for r in loc["rows"] if r["step"] == "all"}
    assert len(by_site) == 4 and by_site[loc["localized"]] > 0.3 > max(
        v for k, v in by_site.items() if k != loc["localized"]
    )
    unsteered, steered = m["images"]["steering"][0], m["images"]["steering"][-1]
    assert unsteered["strength"] == 0 and unsteered["judged circle"] == 0.0
    assert steered["judged circle"] == 1.0 and steered["colour kept"] == 1.0
    assert {r["method"] for r in m["saeuron"]["rows"]} == {"none", "SAeUron", "negative prompt"}
    assert m["saeuron"]["rows"][0]["UA"] == 0.0  # the unedited model draws the style it is asked for
    tones = m["tones"]
    assert tones["localization"]["localized"].startswith("transformer_blocks.2.attn2")  # vocals
    assert tones["steering"][0]["judged vocals"] == 0.0 and tones["steering"][-1]["judged vocals"] == 1.0
    assert tones["steering"][-1]["margin"] > tones["steering"][0]["margin"] + 20  # dB in the vocal band


def test_report_is_one_self_contained_page(report):
    page = (report / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(not re.match(r"^([a-z]+:|/)", link) for link in links), links
    assert all((report / link).is_file() for link in links)
    assert "<script" not in page and "<link" not in page
    assert "interventions demo --quick --out" in page  # the exact command
    for name in ("python", "torch", "diffusers", "interventions"):
        assert f"<td>{name}</td>" in page
    assert page.count("<audio controls") >= 4 and page.count("<img") == 4


def _driver(tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which("chromedriver") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"CI=true but {CHROMIUM} or chromedriver is missing: .ci/run installs chromium and chromium-driver"
            )
        pytest.skip(f"no headless browser here ({CHROMIUM} and chromedriver: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver") if os.environ.get("CI") != "true" else None
    if webdriver is None:
        from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


MEDIA = """return {
  images: Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]),
  audio: Array.from(document.querySelectorAll('audio')).map(
    a => [a.getAttribute('src'), a.readyState, a.error ? a.error.code : null]),
  ready: document.readyState};"""


def _media(driver, url):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)

    def settled(d):
        m = d.execute_script(MEDIA)
        loaded = all(c for _, c, _ in m["images"]) and all(r >= 1 or e for _, r, e in m["audio"])
        return m if m["ready"] == "complete" and loaded else False

    try:
        return WebDriverWait(driver, 20, poll_frequency=0.2).until(settled)
    except Exception:  # a page that never settles: report what it shows
        return driver.execute_script(MEDIA)


def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    driver = _driver(tmp_path)
    try:
        media = _media(driver, (report / "index.html").as_uri())
        broken_img = [src for src, complete, width in media["images"] if not complete or width == 0]
        broken_audio = [(src, r, e) for src, r, e in media["audio"] if e is not None or r < 1]
        assert len(media["images"]) == 4 and not broken_img, media["images"]
        assert len(media["audio"]) >= 4 and not broken_audio, media["audio"]
        shot = driver.get_screenshot_as_png()
        (report / "screenshot.png").write_bytes(shot)
        pixels = Image.open(io.BytesIO(shot)).convert("L")
        values = list(pixels.getdata())
        mean = sum(values) / len(values)
        assert sum((v - mean) ** 2 for v in values) / len(values) > 100.0  # not a blank page

        # the checks can fail: a missing image and a file that is no audio are caught
        (tmp_path / "bad.wav").write_bytes(b"not audio")
        bad = tmp_path / "bad.html"
        bad.write_text('<img src="missing.png"><audio controls preload="metadata" src="bad.wav"></audio>')
        media = _media(driver, bad.as_uri())
        assert media["images"][0][2] == 0 and media["audio"][0][2] is not None
    finally:
        driver.quit()
