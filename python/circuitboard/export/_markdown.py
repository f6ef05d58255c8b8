"""A small, safe Markdown subset for report text: everything is escaped, then formatted."""

from __future__ import annotations

import html
import re

_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*]+)\*(?![*\w])"), r"<em>\1</em>"),
]


_BULLET = re.compile(r"^\s*[-*]\s+")


def _inline(text: str) -> str:
    out = html.escape(text, quote=True)
    for pat, rep in _INLINE:
        out = pat.sub(rep, out)
    return out


def markdown_to_html(text: str) -> str:
    """Headings, paragraphs, bullet lists, code spans, bold and italics; no raw HTML, no links.

    >>> markdown_to_html("# Title\\n\\nSome *text* <b>x</b>")
    '<h1>Title</h1>\\n<p>Some <em>text</em> &lt;b&gt;x&lt;/b&gt;</p>'
    """
    blocks = re.split(r"\n\s*\n", text.strip())
    out = []
    for block in blocks:
        lines = block.splitlines()
        if not lines:
            continue
        m = re.match(r"^(#{1,4})\s+(.*)$", lines[0])
        if m and len(lines) == 1:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif all(_BULLET.match(ln) for ln in lines):
            items = "".join(f"<li>{_inline(_BULLET.sub('', ln))}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)
