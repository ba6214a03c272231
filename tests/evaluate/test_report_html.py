"""The HTML report is a real page: tables, plots and captioned galleries that fit the width,
checked in the HTML and, where a browser exists, rendered by headless Chromium."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.browser import playwright_and_chromium

HALOSCOPE = str(Path(sys.executable).with_name("haloscope"))
VIEWER = "https://www.legacysurvey.org/viewer?ra="


@pytest.fixture(scope="module")
def report(tmp_path_factory, make_scores, write_stamps) -> Path:
    """A report of 600 rows with a stamps store (galleries) and a baseline (comparison)."""
    tmp = tmp_path_factory.mktemp("report")
    table = make_scores(600, seed=5)
    pq.write_table(table, tmp / "gen4.parquet")
    pq.write_table(make_scores(600, seed=5, model="gen3"), tmp / "gen3.parquet")
    stamps = np.random.default_rng(0).normal(size=(600, 3, 64, 64))
    write_stamps(tmp / "stamps.zarr", table["task_id"].to_pylist(), stamps)
    proc = subprocess.run([HALOSCOPE, "eval", "--scores", str(tmp / "gen4.parquet"), "--out-csv",
                           str(tmp / "strat.csv"), "--report-dir", str(tmp / "report"), "--stamps",
                           str(tmp / "stamps.zarr"), "--compare", str(tmp / "gen3.parquet")],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return tmp / "report"


class _Page(HTMLParser):
    """Collects tables (rows of cells), image sources and gallery captions."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[str] = []
        self.captions: list[dict] = []
        self._cell: list[str] | None = None
        self._caption: dict | None = None
        self._depth = {"figcaption": 0}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(attrs["src"])
        elif tag == "figcaption" and "stamp" in (attrs.get("class") or ""):
            self._caption = {"text": "", "links": []}
        elif tag == "a" and self._caption is not None:
            self._caption["links"].append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append(self._caption)
            self._caption = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption["text"] += data


def _check_caption(text: str, links: list[str]) -> None:
    match = re.search(r"ra ([\d.]+), dec (-?[\d.]+)", text)
    assert match and "score " in text, text
    ra, dec = match.groups()
    url = f"{VIEWER}{ra}&dec={dec}&layer=ls-dr10&zoom=16"
    assert url in links, (url, links)


def test_report_html_has_tables_images_and_captioned_galleries(report):
    page = _Page()
    page.feed((report / "report.html").read_text())
    assert len(page.tables) >= 4  # operating points, comparison, two strata tables
    assert all(len(t) > 1 and all(len(r) == len(t[0]) for r in t) for t in page.tables)
    assert {"roc.png", "score_hist.png"} <= set(page.imgs)
    assert all((report / src).is_file() for src in page.imgs)
    gallery = [src for src in page.imgs if src.startswith("gallery/")]
    assert len(gallery) == len(page.captions) == 24  # 12 controls + 12 missed lenses
    for caption in page.captions:
        _check_caption(caption["text"], caption["links"])
    html = (report / "report.html").read_text()
    assert html.index("<h2>Headline: detectable lenses</h2>") < html.index(
        "<h2>All injections: key numbers</h2>"
    )
    assert "**" not in html and "|---" not in html and "<pre>" not in html  # no raw Markdown
    md = (report / "report.md").read_text()
    assert "| metric |" in md and "](gallery/" in md and VIEWER in md


_INSPECT = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + (e.className ? '.' + e.className : ''));
  return {
    width, scrollWidth: document.documentElement.scrollWidth, wide,
    tables: [...document.querySelectorAll('table')].map(t => t.querySelectorAll('tbody tr').length),
    images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
    captions: [...document.querySelectorAll('figcaption.stamp')]
      .map(c => [c.innerText, [...c.querySelectorAll('a')].map(a => a.href)]),
  };
}"""


@pytest.mark.parametrize("width", [1280, 720])
def test_report_renders_in_headless_chromium(report, width):
    sync_playwright, chromium = playwright_and_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto((report / "report.html").as_uri(), wait_until="load")
            seen = page.evaluate(_INSPECT)
        finally:
            browser.close()
    assert len(seen["tables"]) >= 4 and all(n > 0 for n in seen["tables"]), seen["tables"]
    broken = [src for src, ok in seen["images"] if not ok]
    assert len(seen["images"]) >= 26 and not broken, broken
    assert seen["scrollWidth"] <= seen["width"] and not seen["wide"], seen["wide"][:10]
    assert len(seen["captions"]) == 24
    for text, links in seen["captions"]:
        _check_caption(text, links)
