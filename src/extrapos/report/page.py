"""The self-contained report.html: the same content as report.md (plots embedded), tables
sortable by a click on any column header (a few lines of plain JavaScript), Markdown `code`
and **bold** rendered as <code> and <b>, tables scrolling sideways on a phone."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

# click a header: sort by that column (numbers by their leading value, n/a last), again: reverse
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.title = 'click to sort';
    th.addEventListener('click', function () {
      var rows = Array.from(table.tBodies[0].rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1;
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      function key(row) {
        var text = row.cells[col].textContent.trim();
        var num = parseFloat(text.replace(/,/g, ''));
        return isNaN(num) ? text.toLowerCase() : num;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    });
  });
});
"""

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1320px;margin:1.5em auto;padding:0 1em;"
    "line-height:1.45;color:#222}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}"
    "td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fff}"
    "th{background:#f3f3f3;cursor:pointer;user-select:none}th:first-child{background:#f3f3f3}"
    "th[data-dir=asc]::after{content:' ▲'}th[data-dir=desc]::after{content:' ▼'}"
    "tbody tr:nth-child(even) td{background:#fafafa}"
    "code{background:#f1f1f1;padding:0 3px;border-radius:3px;font-size:92%}"
    "img{max-width:100%;height:auto}figure{margin:1em 0}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;"
    "word-break:break-all}"
    "ul.meta{padding-left:1.2em}"
    # on a phone a 2x2 panel figure scaled to the screen is unreadable: keep it legible, scroll
    "@media (max-width:760px){figure{overflow-x:auto}figure img{max-width:none;width:880px}"
    "body{padding:0 .5em}}"
)


def inline(text: str) -> str:
    """Escape `text` for HTML and render its Markdown code spans and bold."""
    out = html.escape(text, quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<b>{m.group(1)}</b>", out)


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def standalone_page(title: str, body: str) -> str:
    """A self-contained page in the report's style (phone-width viewport, sortable
    `table()`s): `body` is HTML, `title` plain text. Used by the suites' reports."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}<script>{_SORT_JS}</script></body></html>\n"
    )


def render_html(results: dict[str, Any], images: dict[str, bytes], content: dict[str, Any]) -> str:
    """The HTML page; `content` holds the report's text parts, made by `extrapos.report.lm`
    (keys provenance, ppl_tables {protocol: (header, rows)}, notes, probe_sections, settings,
    cost), so this module needs nothing from it."""

    esc = html.escape
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    corpus_hash = results.get("corpus_hash") or "?"
    head = (
        f"<p>Corpus <code>{esc(results['corpus'])}</code> (sha256 "
        f"<code>{esc(corpus_hash[:16])}…</code>), tokenizer "
        f"<code>{esc(results['tokenizer'])}</code>, trained at length {results['train_len']}, "
        f"evaluated at {', '.join(map(str, results['eval_lens']))}"
        + (f"; preset <code>{esc(results['preset'])}</code>" if results.get("preset") else "")
        + ".</p>"
    )
    meta = "".join(f"<li>{inline(line)}</li>" for line in content["provenance"])
    tables = "".join(
        f"<h2>Perplexity vs evaluation length ({esc(p)})</h2>" + table(*content["ppl_tables"][p])
        for p in protocols
    )
    figs = "".join(
        f'<figure><img alt="{esc(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"/><figcaption>{esc(title)}</figcaption></figure>'
        for title, png in images.items()
    )
    notes = "".join(f"<li>{inline(n)}</li>" for n in content["notes"])
    probes = "".join(
        f"<h2>{esc(title)}</h2><p>{inline(intro)}</p>"
        + "".join(table(*t) for t in tables)
        + ("<ul>" + "".join(f"<li>{inline(n)}</li>" for n in notes) + "</ul>" if notes else "")
        for title, intro, tables, notes in content["probe_sections"]
    )
    settings = esc("\n".join(content["settings"]))
    env = esc("\n".join(f"{k}: {v}" for k, v in (results.get("environment") or {}).items()))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>extrapos bench report</title><style>{_STYLE}</style></head><body>"
        f"<h1>extrapos bench report</h1>{head}<ul class='meta'>{meta}</ul>"
        "<p>Best value per length in <b>bold</b> (lowest perplexity; highest accuracy). Click a "
        "column header to sort. Plots: one panel per family, each method its own colour, line "
        f"style and marker.</p>{tables}<ul>{notes}</ul>{figs}{probes}"
        f"<h2>Cost</h2>{table(*content['cost'])}"
        f"<h2>Configuration</h2><pre>{settings}</pre><h2>Environment</h2><pre>{env}</pre>"
        f"<script>{_SORT_JS}</script></body></html>\n"
    )
