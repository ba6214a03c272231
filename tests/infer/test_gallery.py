"""The search's candidates page: a real page in headless Chromium, graded and exported, and
``read_grades`` reading the export back (and refusing bad CSVs in one line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from matplotlib.image import imread

from haloscope.errors import DataError
from haloscope.infer.composite import raw_stamp_rgb
from haloscope.infer.gallery import GRADES, read_grades, viewer_url, write_gallery
from haloscope.preprocess.normalize import normalize
from tests.browser import playwright_and_chromium


def _candidates(num: int, seed: int = 0) -> pa.Table:
    """A ranked candidates table; two ids need CSV quoting."""
    rng = np.random.default_rng(seed)
    logit = np.sort(rng.normal(0, 3, num))[::-1].astype(np.float32)
    ids = [f"cand{i:05d}" for i in range(num)]
    ids[3], ids[4] = "obj,with comma", 'obj "quoted"'
    return pa.table(
        {
            "id": ids,
            "ra": rng.uniform(0, 360, num),
            "dec": rng.uniform(-60, 30, num),
            "logit": logit,
            "score": 1 / (1 + np.exp(-logit)),
            "rank": np.arange(1, num + 1, dtype=np.int64),
        }
    )


def _stamps(num: int, size: int = 64, seed: int = 1) -> np.ndarray:
    """Sky noise (nanomaggies) plus a red central galaxy, bands g, r, z."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(xx**2 + yy**2) / 8.0)
    stamps = rng.normal(0, 0.005, (num, 3, size, size)).astype(np.float32)
    stamps += np.array([0.05, 0.15, 0.3], np.float32)[None, :, None, None] * blob
    return stamps


_TILES = """() => [...document.querySelectorAll('.tile')].map(t => ({
  id: t.dataset.id, rank: Number(t.dataset.rank),
  links: [...t.querySelectorAll('a')].map(a => a.href),
  text: t.querySelector('figcaption').innerText }))"""
_ALL_LOADED = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search")
    # 30 stamps for 40 rows, top 25: 25 tiles; one tile's stamp has a NaN patch
    stamps = _stamps(30)
    stamps[6, 1, 10:18, 10:18] = np.nan
    write_gallery(_candidates(40), stamps, out, top_n=25)
    return out


def test_page_shows_ranked_tiles_with_viewer_links_and_images(page_dir):
    sync_playwright, chromium = playwright_and_chromium()
    table = _candidates(40)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((page_dir / "candidates.html").as_uri(), wait_until="load")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(_ALL_LOADED, timeout=15_000)
            tiles = page.evaluate(_TILES)
            sizes = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
        finally:
            browser.close()
    assert len(tiles) == 25 and sizes == [64] * 25
    assert [t["rank"] for t in tiles] == list(range(1, 26))
    assert [t["id"] for t in tiles] == table["id"].to_pylist()[:25]
    for tile, row in zip(tiles, table.slice(0, 25).to_pylist(), strict=True):
        assert tile["links"] == [viewer_url(row["ra"], row["dec"])]
        assert "layer=ls-dr10" in tile["links"][0] and "zoom=16" in tile["links"][0]
        assert f"#{row['rank']}" in tile["text"] and f"{row['score']:.5g}" in tile["text"]


def test_graded_tiles_export_a_csv_that_reads_back(page_dir, tmp_path):
    sync_playwright, chromium = playwright_and_chromium()
    wanted = {"cand00000": "A", "obj,with comma": "not_lens", 'obj "quoted"': "B", "cand00007": "C"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((page_dir / "candidates.html").as_uri(), wait_until="load")
            tiles = page.locator(".tile")
            tiles.nth(0).locator("button[data-grade='A']").click()
            tiles.nth(3).locator("button[data-grade='not_lens']").click()
            tiles.nth(4).locator("button[data-grade='C']").click()
            tiles.nth(4).locator("button[data-grade='B']").click()  # a second grade replaces
            tiles.nth(9).locator("button[data-grade='A']").click()
            tiles.nth(9).locator("button[data-grade='A']").click()  # the same one clears
            tiles.nth(7).focus()
            page.keyboard.press("c")  # keyboard grading of the focused tile
            with page.expect_download() as download:
                page.click("#export")
            download.value.save_as(tmp_path / "grades.csv")
            page.reload(wait_until="load")  # grades survive a reload
            kept = page.locator("#graded").inner_text()
            pressed = page.locator(".tile").nth(7).get_attribute("data-grade")
        finally:
            browser.close()
    grades = read_grades(tmp_path / "grades.csv")
    assert grades.schema.names == ["id", "grade"]
    assert dict(zip(*grades.to_pydict().values(), strict=True)) == wanted
    assert grades["id"].to_pylist() == ["cand00000", "obj,with comma", 'obj "quoted"', "cand00007"]
    assert kept == "4" and pressed == "C"


def test_thousand_tiles_load_lazily(tmp_path):
    sync_playwright, chromium = playwright_and_chromium()
    write_gallery(_candidates(1000), _stamps(1000, size=32), tmp_path, top_n=1000)
    assert len(list((tmp_path / "gallery").glob("*.png"))) == 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((tmp_path / "candidates.html").as_uri(), wait_until="load")
            num_tiles = page.locator(".tile").count()
            loaded_at_top = page.evaluate(
                "() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
            )
            page.locator(".tile").last.scroll_into_view_if_needed()
            last = page.locator(".tile img").last
            page.wait_for_function(
                "i => i.complete && i.naturalWidth > 0", arg=last.element_handle()
            )
        finally:
            browser.close()
    assert num_tiles == 1000
    assert 0 < loaded_at_top < 500  # only the screens near the top were fetched


def test_rewrite_with_fewer_tiles_removes_stale_images(tmp_path):
    write_gallery(_candidates(12), _stamps(12), tmp_path, top_n=12)
    write_gallery(_candidates(12), _stamps(12), tmp_path, top_n=5)
    names = sorted(p.name for p in (tmp_path / "gallery").iterdir())
    assert names == [f"rank_{r:07d}.png" for r in range(1, 6)]
    html = (tmp_path / "candidates.html").read_text()
    assert html.count('class="tile"') == 5 and "<script src" not in html and "http://" not in html


def test_composite_keeps_colour_and_range():
    rgb = raw_stamp_rgb(_stamps(2))
    assert rgb.shape == (2, 64, 64, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # the red galaxy: z (R) above g (B) at the centre, sky near black at the edge
    assert rgb[0, 32, 32, 0] > rgb[0, 32, 32, 2] > 0.3 and rgb[0, 0, 0].max() < 0.3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,grade\nx,A\n", "missing column(s) id"),
        ("id,score\nx,1\n", "missing column(s) grade"),
        ("", "missing column(s) id, grade"),
        ("id,grade\nx,A\ny,D\n", ":3: grade 'D' is not one of A, B, C, not_lens"),
        ("id,grade\nx,A\ny,b\nx,C\n", ":4: id 'x' is graded twice (also line 2)"),
        ("id,grade\n,A\n", ":2: empty id"),
    ],
)
def test_read_grades_refuses_bad_csv(tmp_path, text, message):
    path = tmp_path / "grades.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_grades(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_read_grades_normalises_case_skips_ungraded_rows_and_extra_columns(tmp_path):
    path = tmp_path / "grades.csv"
    path.write_text("\ufeffnote,id,grade\nnice,x, a \n\n,y,NOT_LENS\n,z,\n,w, \n")
    grades = read_grades(path)  # z and w: empty grades (a top<N>.csv row not filled in)
    assert grades.to_pydict() == {"id": ["x", "y"], "grade": ["A", "not_lens"]}
    assert set(grades["grade"].to_pylist()) <= set(GRADES)
    with pytest.raises(DataError, match="cannot read"):
        read_grades(tmp_path / "absent.csv")


def test_write_gallery_refuses_what_it_cannot_show(tmp_path):
    table = _candidates(5)
    with pytest.raises(ValueError, match="sorted by rank"):
        write_gallery(table.take([1, 0, 2, 3, 4]), _stamps(5), tmp_path, top_n=5)
    with pytest.raises(ValueError, match="lack column"):
        write_gallery(table.drop_columns(["rank"]), _stamps(5), tmp_path, top_n=5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        write_gallery(table, _stamps(5)[:, :2], tmp_path, top_n=5)
    with pytest.raises(ValueError, match="6 stamps for 5"):
        write_gallery(table, _stamps(6), tmp_path, top_n=5)


def test_no_candidates_give_an_empty_page(tmp_path):
    empty = _candidates(5).slice(0, 0)
    page = write_gallery(empty, np.zeros((0, 3, 64, 64), np.float32), tmp_path, top_n=10)
    html = page.read_text()
    assert "Top 0 of 0 candidates" in html and 'class="tile"' not in html


def test_normalised_stamps_are_drawn_as_they_are(tmp_path):
    """Shard input holds normalised stamps: drawn as given, they match the raw path's PNGs."""
    raw = _stamps(4)
    write_gallery(_candidates(5), raw, tmp_path / "raw", top_n=4)
    norm = normalize(raw, "asinh").astype(np.float16)  # as the shards store them
    write_gallery(_candidates(5), norm, tmp_path / "norm", top_n=4, normalised=True)
    write_gallery(_candidates(5), norm, tmp_path / "twice", top_n=4)
    pixels = {
        d: imread(tmp_path / d / "gallery" / "rank_0000001.png") for d in ("raw", "norm", "twice")
    }
    assert np.abs(pixels["raw"] - pixels["norm"]).max() < 0.02  # float16 rounding only
    # normalising twice compresses the galaxy's core
    assert np.abs(pixels["raw"] - pixels["twice"]).max() > 0.05
