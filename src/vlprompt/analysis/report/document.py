"""A report kept as markdown and as HTML from the same content, section by section."""

from __future__ import annotations

import html
import re

import pandas as pd


def markdown_to_html(text: str) -> str:
    """Render user-written markdown (``report.notes``) with markdown-it-py when present, else as text."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return f"<pre class='notes'>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark").enable("table").render(text)


def _inline(text: str) -> str:
    """Escape, then the two inline markups the report's own sentences use: `code` and **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


class Section:
    def __init__(self, title: str, anchor: str):
        self.title, self.anchor = title, anchor
        self.md = [f"## {title}\n"]
        self.html = [f'<h2 id="{anchor}">{html.escape(title)}</h2>']

    def text(self, text: str, css: str = "") -> Section:
        self.md.append(text + "\n")
        self.html.append(f'<p class="{css}">{_inline(text)}</p>' if css else f"<p>{_inline(text)}</p>")
        return self

    def note(self, text: str) -> Section:
        """A visible note about something skipped or left out."""
        self.md.append(f"> **Note.** {text}\n")
        self.html.append(f'<p class="note"><strong>Note.</strong> {_inline(text)}</p>')
        return self

    def bullets(self, items: list[str]) -> Section:
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        return self

    def subtitle(self, text: str) -> Section:
        self.md.append(f"### {text}\n")
        self.html.append(f"<h3>{html.escape(text)}</h3>")
        return self

    def table(self, df: pd.DataFrame, floatfmt: str = ".2f", collapsed: str | None = None, css: str = "") -> Section:
        """A table; ``collapsed`` (a summary line) folds it away in the HTML; ``css="wrap"`` lets long cells
        wrap (hashes, sources) so that the table stays within the page."""
        self.md.append(df.to_markdown(index=False, floatfmt=floatfmt, missingval="—") + "\n")
        table = df.to_html(
            index=False,
            na_rep="—",
            float_format=lambda v: format(v, floatfmt),
            border=0,
            classes=" ".join(filter(None, ["table", css])),
            escape=True,
        )
        table = f'<div class="scroll">{table}</div>'  # a safety net: the browser test checks nothing scrolls
        if collapsed:
            table = f"<details><summary>{html.escape(collapsed)}</summary>{table}</details>"
        self.html.append(table)
        return self

    def figure(self, path: str, caption: str) -> Section:
        self.md.append(f"![{caption}]({path})\n\n*{caption}*\n")
        self.html.append(
            f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>"
        )
        return self

    def raw(self, md: str, html_text: str) -> Section:
        self.md.append(md + "\n")
        self.html.append(html_text)
        return self


def to_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    head = f"# {title}\n\n" + "".join(line + "\n\n" for line in intro)
    return head + "\n".join("\n".join(s.md) for s in sections)


def to_html(title: str, intro: list[str], sections: list[Section]) -> str:
    toc = " · ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f"<p>{_inline(line)}</p>" for line in intro)
    body += f"<nav>{toc}</nav>" + "\n".join("\n".join(s.html) for s in sections)
    return PAGE.format(title=html.escape(title), body=body)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em auto; max-width: 1180px;
       padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.6em; margin: 0 0 0.2em; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }}
h2#results {{ margin-top: 0.6em; }}
nav {{ font-size: 0.88em; color: #777; }}
.scroll {{ overflow-x: auto; }}
table.table {{ border-collapse: collapse; font-size: 0.82em; margin: 0.8em 0; font-variant-numeric: tabular-nums;
               max-width: 100%; }}
table.table th, table.table td {{ padding: 0.22em 0.55em; border-bottom: 1px solid #e3e3e3; text-align: right;
                                   white-space: nowrap; }}
table.table th {{ background: #f3f5f7; text-align: center; }}
table.table td:first-child, table.table td:nth-child(2) {{ text-align: left; }}
table.table tr:hover td {{ background: #fafbfc; }}
table.wrap td {{ white-space: normal; overflow-wrap: anywhere; }}
table.paper td {{ line-height: 1.15; padding: 0.25em 0.5em; }}
table.paper td small {{ display: block; font-size: 0.78em; color: #777; min-height: 1em; }}
table.paper td.method {{ font-weight: 600; vertical-align: middle; }}
table.paper th.group {{ border-left: 2px solid #fff; }}
table.paper tr.family-start td {{ border-top: 2px solid #c8ccd0; }}
p.legend {{ font-size: 0.85em; color: #555; }}
figure {{ margin: 1.2em 0; }} figure img {{ max-width: 100%; }}
figcaption {{ font-size: 0.88em; color: #555; max-width: 62em; }}
p.note {{ background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; font-size: 0.9em; }}
details summary {{ cursor: pointer; color: #0b5cad; margin: 0.5em 0; }}
div.notes {{ border-left: 3px solid #ddd; padding-left: 1em; }}
code {{ background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; overflow-wrap: anywhere; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
