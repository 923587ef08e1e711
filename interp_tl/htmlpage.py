"""The run's report page, ``index.html``: one self-contained page, no network needed to view it.

Built from the result files present in the output folder (as ``index.md``): per study its
headline, its figure (the PNG written beside it, referenced by relative path), its key table
(the study record's ``table``), links to its JSON and its provenance in a collapsible block; per
``interp-tl head L.H`` report the same, with the head's attention patterns on one prompt per
language. The page has inline CSS, no script and no URL outside the folder. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.headline { font-size: 1.1em; background: #f4f6f8; padding: .6em .8em; border-left: 4px solid #4a78b0; }
.warning { background: #fff3cd; padding: .6em .8em; border-left: 4px solid #d39e00; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
pre { background: #f8f8f8; padding: .8em; overflow-x: auto; font-size: .8em; }
code { background: #f4f4f4; padding: 0 .2em; }
""".strip()


def cell(value: Any) -> str:
    """A table cell's text: four significant digits for floats, ``n/a`` for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table with a header row; every value escaped."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _links(files: Sequence[str]) -> str:
    return "<p>Files: " + ", ".join(f'<a href="{escape(f)}">{escape(f)}</a>' for f in files) + "</p>"


def _provenance(provenance: Mapping[str, Any]) -> str:
    text = json.dumps(provenance, indent=2, ensure_ascii=False, allow_nan=False)
    return f"<details><summary>Provenance</summary><pre>{escape(text)}</pre></details>"


def _images(names: Sequence[str], alt: str) -> str:
    return "".join(f'<p><img src="{escape(n)}" alt="{escape(alt)}"></p>' for n in names)


def study_section(entry: Mapping[str, Any], provenance: Mapping[str, Any],
                  table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None) -> str:
    """One study's section: headline, figure, key table, files, docs page, provenance."""
    name = entry["study"]
    pngs = [f for f in entry["files"] if f.endswith(".png")]
    parts = [f'<section id="{escape(name)}"><h2>{escape(name)}</h2>',
             f'<p class="headline">{escape(entry["headline"])}</p>', _images(pngs, f"{name} figure")]
    if table is not None:
        parts.append(table_html(*table))
    parts += [_links([f for f in entry["files"] if not f.endswith(".png")]),
              f"<p>Method, options and JSON keys: <code>{escape(entry['docs'])}</code> in the interp_tl "
              "repository.</p>", _provenance(provenance), "</section>"]
    return "".join(parts)


def head_section(entry: Mapping[str, Any], lines: Sequence[str], provenance: Mapping[str, Any]) -> str:
    """One ``interp-tl head L.H`` report: its summary lines, attention patterns, files, provenance."""
    name = entry["head"]
    pngs = [f for f in entry["files"] if f.endswith(".png")]
    parts = [f'<section id="head-{escape(name)}"><h2>head {escape(name)}</h2>',
             f"<pre>{escape(chr(10).join(lines))}</pre>", _images(pngs, f"attention patterns of {name}")]
    interactive = [f for f in entry["files"] if f.endswith(".html")]
    if interactive:
        parts.append(f'<p>Interactive patterns (circuitsvis): <a href="{escape(interactive[0])}">'
                     f"{escape(interactive[0])}</a>; that page loads circuitsvis' script from unpkg.com, "
                     "so it needs a network connection; this page and the image above do not.</p>")
    parts += [_links([f for f in entry["files"] if f.endswith(".json")]), _provenance(provenance), "</section>"]
    return "".join(parts)


def page(sections: Sequence[str], titles: Sequence[tuple[str, str]], mixed: bool) -> bytes:
    """The whole page: title, the mixed-runs warning, contents, sections."""
    contents = "".join(f'<li><a href="#{escape(anchor)}">{escape(title)}</a></li>' for anchor, title in titles)
    warning = ('<p class="warning"><strong>These files come from more than one run</strong> (different commands, '
               "models or weights): read each study's provenance.</p>") if mixed else ""
    body = "".join(sections) if sections else "<p>No result files in this folder.</p>"
    text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>interp_tl results</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><h1>interp_tl results</h1>{warning}<ul>{contents}</ul>{body}</body></html>\n")
    return text.encode("utf-8")
