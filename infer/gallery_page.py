"""The candidates page's template, style and script (``infer/gallery.py`` renders it).

Kept as strings, not package data, so an installed wheel needs nothing beyond the modules;
inline, so the page works offline (no CDN). The script keeps the grades in a map saved to
``localStorage`` under the page's key (grades survive a reload; another search's page has
another key), mirrors them on the tiles (``data-grade``, ``aria-pressed``) and exports them
as ``id,grade`` CSV rows in rank order.
"""

from __future__ import annotations

__all__ = ["CSS", "PAGE", "SCRIPT"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       margin: 0 auto; padding: 0 16px 40px; line-height: 1.4; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd;
         padding: 8px 0; z-index: 1; }
h1 { font-size: 1.3em; margin: 4px 0; }
.help { font-size: 12px; color: #555; margin: 2px 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(168px, 1fr));
         gap: 10px; margin-top: 12px; }
.tile { margin: 0; padding: 4px; border: 2px solid #ddd; border-radius: 4px; min-width: 0; }
.tile:focus { outline: 3px solid #4a90d9; }
.tile[data-grade="A"] { border-color: #1a7f37; } .tile[data-grade="B"] { border-color: #7fb800; }
.tile[data-grade="C"] { border-color: #d4a000; }
.tile[data-grade="not_lens"] { border-color: #999; opacity: 0.6; }
.tile img { display: block; width: 100%; height: auto; aspect-ratio: 1; background: #000;
            image-rendering: pixelated; }
.tile figcaption { font-size: 11px; line-height: 1.35; overflow-wrap: anywhere; }
.grades { display: flex; gap: 3px; margin-top: 3px; }
.grades button { flex: 1; font-size: 11px; padding: 2px 0; cursor: pointer; border: 1px solid #aaa;
                 background: #f5f5f5; border-radius: 3px; }
.grades button[aria-pressed="true"] { background: #333; color: #fff; }
"""

SCRIPT = """
(function () {
  const key = "haloscope-grades:" + document.body.dataset.page;
  let grades = {};
  try { grades = JSON.parse(localStorage.getItem(key) || "{}"); } catch (e) { grades = {}; }
  const tiles = [...document.querySelectorAll(".tile")];
  function save() {
    try { localStorage.setItem(key, JSON.stringify(grades)); } catch (e) { /* private mode */ }
    document.getElementById("graded").textContent = Object.keys(grades).length;
  }
  function show(tile) {
    const grade = grades[tile.dataset.id] || "";
    tile.dataset.grade = grade;
    for (const b of tile.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.grade === grade));
    }
  }
  function setGrade(tile, grade) {
    if (grades[tile.dataset.id] === grade || grade === "") delete grades[tile.dataset.id];
    else grades[tile.dataset.id] = grade;
    show(tile); save();
  }
  const byKey = {};
  for (const b of document.querySelectorAll("#legend [data-key]")) byKey[b.dataset.key] = b.dataset.grade;
  for (const tile of tiles) {
    show(tile);
    tile.addEventListener("click", (ev) => {
      const b = ev.target.closest("button");
      if (b) setGrade(tile, b.dataset.grade);
    });
    tile.addEventListener("keydown", (ev) => {
      if (ev.target !== tile || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const k = ev.key.toLowerCase();
      if (k in byKey) setGrade(tile, byKey[k]);
      else if (k === "0" || k === "backspace") setGrade(tile, "");
      else if (k === "arrowright" || k === "j") tile.nextElementSibling?.focus();
      else if (k === "arrowleft" || k === "k") tile.previousElementSibling?.focus();
      else return;
      ev.preventDefault();
    });
  }
  function csvField(s) { return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  window.haloscopeGradesCsv = function () {
    const lines = ["id,grade"];
    for (const tile of tiles) {
      const g = grades[tile.dataset.id];
      if (g) lines.push(csvField(tile.dataset.id) + "," + g);
    }
    return lines.join("\\n") + "\\n";
  };
  document.getElementById("export").addEventListener("click", () => {
    const blob = new Blob([window.haloscopeGradesCsv()], {type: "text/csv"});
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "grades.csv";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  document.getElementById("clear").addEventListener("click", () => {
    if (!confirm("Forget every grade of this page?")) return;
    grades = {}; tiles.forEach(show); save();
  });
  save();
})();
"""

PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>haloscope search: top {{ tiles | length }} candidates</title>
<style>{{ css | safe }}</style>
</head>
<body data-page="{{ storage_key }}">
<header>
<h1>Top {{ tiles | length }} of {{ num_candidates }} candidates</h1>
<p class="help" id="legend">Grades:
{% for g in grades %}<span data-grade="{{ g.value }}" data-key="{{ g.key }}">\
<b>{{ g.value }}</b> {{ g.help }} (key {{ g.key }}){{ "; " if not loop.last }}</span>
{%- endfor %}. Click a tile (or Tab to it) and press a key; 0 clears, j/k or arrows move;
click a grade again to clear it. Grades are kept in this browser for this page.</p>
<p class="help">Bands z, r, g as R, G, B in sky-noise units (asinh stretch), as the model
sees them. Graded: <b id="graded">0</b>
<button type="button" id="export">Export grades CSV</button>
<button type="button" id="clear">Clear grades</button></p>
</header>
<main class="tiles">
{% for t in tiles %}<figure class="tile" tabindex="0" data-id="{{ t.id }}" data-rank="{{ t.rank }}">\
<img src="{{ t.src }}" loading="lazy" decoding="async" width="64" height="64" alt="rank {{ t.rank }}">\
<figcaption><b>#{{ t.rank }}</b> score {{ t.score }} (logit {{ t.logit }})<br>{{ t.id }}<br>\
{{ t.sky }}{% if t.url %}<br><a href="{{ t.url }}" target="_blank" rel="noopener">Legacy Survey viewer</a>{% endif %}\
</figcaption><div class="grades">{% for g in grades %}<button type="button" data-grade="{{ g.value }}" \
title="{{ g.help }}">{{ g.value if g.value != "not_lens" else "not" }}</button>{% endfor %}</div></figure>
{% endfor %}
</main>
<script>{{ script | safe }}</script>
</body>
</html>
"""
