"""``report.html``: the report as one self-contained page (figures embedded as data URIs), so it opens
anywhere: a browser from disk, an e-mail attachment, MLflow's artifact view.

The page is rendered from ``report.md`` itself (markdown-it-py, CommonMark + tables), so the two never
say different things. Every image the Markdown links is read from the report folder and inlined as a
``data:image/png;base64`` URI; the page has no external source (no ``src=`` or stylesheet outside it).
"""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1150px;
       margin: 1.5em auto; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def to_html(markdown: str, folder: Path, title: str = "Sweep report") -> str:
    """The page for ``markdown`` whose images are files in ``folder`` (missing ones become their alt text)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            src = str(child.attrGet("src") or "")
            path = folder / src
            # Only a file of the report folder is inlined; anything else (a URL, a missing file) would make
            # the page depend on something outside it, so it is dropped and its alt text kept.
            if src and "/" not in src and "\\" not in src and path.is_file():
                child.attrSet("src", _data_uri(path))
            else:
                child.type, child.tag, child.attrs = "text", "", {}
                child.content = f"[figure not available: {src}]"
                child.children = None
    body = md.renderer.render(tokens, md.options, {})
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")
