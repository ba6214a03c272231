"""Render the report's blocks to Markdown and HTML with Jinja2 templates.

``evaluate/report.py`` decides what the report says as a list of blocks (plain dicts);
this module only lays them out, once per format, so ``report.md`` and ``report.html``
always say the same thing. Block kinds:

- ``{"kind": "h1" | "h2", "text": str}``
- ``{"kind": "p", "spans": [span, ...]}``; a span is ``{"text", "style"}`` with style
  ``""``, ``"code"``, ``"b"`` or ``"a"`` (then also ``"href"``)
- ``{"kind": "list", "items": [[span, ...], ...]}``
- ``{"kind": "table", "heads": [str], "rows": [[str]]}``
- ``{"kind": "img", "src": str, "caption": str}``
- ``{"kind": "gallery", "stamps": [{"src", "lines": [str], "url", "alt"}]}``

The templates live here as strings, not as package data files, so an installed wheel
needs nothing beyond the Python modules.
"""

from __future__ import annotations

from typing import Any

import jinja2

__all__ = ["code", "link", "render_html", "render_markdown", "spans"]

Span = dict[str, str]
Block = dict[str, Any]


def code(text: str) -> Span:
    """A span shown as code (file names, columns)."""
    return {"text": str(text), "style": "code"}


def link(text: str, href: str) -> Span:
    """A hyperlink span."""
    return {"text": str(text), "style": "a", "href": href}


def spans(*parts: str | Span) -> list[Span]:
    """Plain strings and styled spans as one list of spans."""
    return [p if isinstance(p, dict) else {"text": p, "style": ""} for p in parts]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 0 auto; padding: 0 16px 40px; line-height: 1.45;
       overflow-wrap: anywhere; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em;
                              border-bottom: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; overflow-wrap: normal; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 14px 0; max-width: 100%; }
figure.plot img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: #555; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr));
           gap: 12px; max-width: 100%; }
.gallery figure { margin: 0; min-width: 0; }
.gallery img { display: block; width: 100%; height: auto; image-rendering: pixelated; }
figcaption.stamp { font-size: 11px; line-height: 1.35; }
"""

_HTML = """\
{%- macro text(parts) -%}
{%- for s in parts -%}
{%- if s.style == "code" %}<code>{{ s.text }}</code>
{%- elif s.style == "b" %}<strong>{{ s.text }}</strong>
{%- elif s.style == "a" %}<a href="{{ s.href }}">{{ s.text }}</a>
{%- else %}{{ s.text }}{% endif -%}
{%- endfor -%}
{%- endmacro -%}
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
{% for b in blocks %}
{% if b.kind == "h1" %}<h1>{{ b.text }}</h1>
{% elif b.kind == "h2" %}<h2>{{ b.text }}</h2>
{% elif b.kind == "p" %}<p>{{ text(b.spans) }}</p>
{% elif b.kind == "list" %}<ul>
{% for item in b["items"] %}<li>{{ text(item) }}</li>
{% endfor %}</ul>
{% elif b.kind == "table" %}<table>
<thead><tr>{% for h in b.heads %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in b.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% elif b.kind == "img" %}<figure class="plot"><img src="{{ b.src }}" alt="{{ b.caption }}">\
<figcaption>{{ b.caption }}</figcaption></figure>
{% elif b.kind == "gallery" %}<div class="gallery">
{% for s in b.stamps %}<figure><img src="{{ s.src }}" alt="{{ s.alt }}" width="64" height="64">\
<figcaption class="stamp">{{ s.lines | join("<br>" | safe) }}<br>\
<a href="{{ s.url }}">Legacy Survey viewer</a></figcaption></figure>
{% endfor %}</div>
{% endif %}
{% endfor %}
</body>
</html>
"""

_MARKDOWN = """\
{%- macro text(parts) -%}
{%- for s in parts -%}
{%- if s.style == "code" %}`{{ s.text }}`
{%- elif s.style == "b" %}**{{ s.text }}**
{%- elif s.style == "a" %}[{{ s.text }}]({{ s.href }})
{%- else %}{{ s.text }}{% endif -%}
{%- endfor -%}
{%- endmacro -%}
{% for b in blocks %}
{% if b.kind == "h1" %}# {{ b.text }}
{% elif b.kind == "h2" %}## {{ b.text }}
{% elif b.kind == "p" %}{{ text(b.spans) }}
{% elif b.kind == "list" %}
{% for item in b["items"] %}- {{ text(item) }}
{% endfor %}
{% elif b.kind == "table" %}| {{ b.heads | map("cell") | join(" | ") }} |
|{% for h in b.heads %}---|{% endfor %}

{% for row in b.rows %}| {{ row | map("cell") | join(" | ") }} |
{% endfor %}
{% elif b.kind == "img" %}![{{ b.caption }}]({{ b.src }})

*{{ b.caption }}* (`{{ b.src }}`)
{% elif b.kind == "gallery" %}| stamp | caption | viewer |
|---|---|---|
{% for s in b.stamps %}| ![{{ s.alt | cell }}]({{ s.src }}) | {{ s.lines | map("cell") | join("<br>") }} \
| [Legacy Survey viewer]({{ s.url }}) |
{% endfor %}
{% endif %}

{% endfor %}
"""


def _cell(value: Any) -> str:
    """A Markdown table cell: a '|' would end the cell, a newline the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = _cell
    return env


def render_html(blocks: list[Block], title: str) -> str:
    """The report as one self-contained HTML page (inline CSS; images are sibling files)."""
    template = _environment(autoescape=True).from_string(_HTML)
    return template.render(blocks=blocks, title=title, css=_CSS.strip())


def render_markdown(blocks: list[Block]) -> str:
    """The report as Markdown (GitHub-flavoured tables)."""
    text = _environment(autoescape=False).from_string(_MARKDOWN).render(blocks=blocks)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
