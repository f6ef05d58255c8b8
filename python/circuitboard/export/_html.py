"""Write widgets as one offline HTML file: inlined bundle, JSON state, compressed buffers."""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..widgets._bundle import STATIC, Base, request_key
from ..widgets._view import View
from ._markdown import markdown_to_html

DEFAULT_BUDGET = 50 * 2**20  # bytes of raw tensor data; compressed output is usually far smaller
PREFIX = "IPY_MODEL_"


class _Blob:
    """Concatenates every binary buffer; the page decompresses it once."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes | memoryview) -> list[int]:
        data = bytes(data)
        ref = [self.size, len(data)]
        self.parts.append(data)
        self.size += len(data)
        return ref

    def compressed(self) -> bytes:
        return gzip.compress(b"".join(self.parts), compresslevel=6, mtime=0)


def _externalize(value: Any, blob: _Blob, ids: dict[str, str]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$blob": blob.add(value)}
    if isinstance(value, dict):
        return {k: _externalize(v, blob, ids) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_externalize(v, blob, ids) for v in value]
    if isinstance(value, str) and value.startswith(PREFIX) and value[len(PREFIX):] in ids:
        return PREFIX + ids[value[len(PREFIX):]]
    return value


def _collect(widgets: Iterable[Base]) -> list[Base]:
    """The widgets and every widget they reference (links), in first-seen order."""
    seen: dict[str, Base] = {}

    def visit(w: Base) -> None:
        if w.model_id in seen:
            return
        seen[w.model_id] = w
        for name in w.keys:
            v = getattr(w, name, None)
            if isinstance(v, Base):
                visit(v)

    for w in widgets:
        visit(w)
    return list(seen.values())


def _safe_json(data: Any) -> str:
    # '<' escaped so no string (a token such as "</script>") can end the script element.
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def build_report(items: list[Any], *, title: str, budget_bytes: int = DEFAULT_BUDGET) -> str:
    """The report's HTML as a string; see :func:`report`."""
    views: list[View] = []
    layout: list[dict[str, str]] = []
    for item in items:
        if isinstance(item, str):
            layout.append({"type": "markdown", "html": markdown_to_html(item)})
        elif isinstance(item, View):
            views.append(item)
            layout.append({"type": "view", "model": item.model_id})
        elif hasattr(item, "report_items"):  # a Board: its children, in order
            for child in item.report_items():
                if isinstance(child, View):
                    views.append(child)
                    layout.append({"type": "view", "model": child.model_id})
                else:
                    layout.append({"type": "markdown", "html": markdown_to_html(str(child))})
        else:
            raise TypeError(
                f"report items must be circuitboard views, boards or Markdown strings; got "
                f"{type(item).__name__}. Wrap plots from other libraries as a PNG in your notebook."
            )
    if not views:
        raise ValueError("a report needs at least one view; pass e.g. cb.attention(cap).")

    widgets = _collect(views)
    ids = {w.model_id: f"m{i}" for i, w in enumerate(widgets)}  # deterministic ids
    blob = _Blob()
    models: dict[str, Any] = {}
    replies: dict[str, Any] = {}
    notes: list[str] = []
    per_view = budget_bytes // max(len(views), 1)
    for w in widgets:
        state = {k: v for k, v in w.get_state().items() if not k.startswith("_model") and not k.startswith("_view_") and k not in ("_esm", "_css", "_anywidget_id", "_dom_classes", "layout", "tabbable", "tooltip")}
        models[ids[w.model_id]] = {"state": _externalize(state, blob, ids)}
        if isinstance(w, View):
            answered: dict[str, Any] = {}
            for req in w.export_requests(per_view):
                fields, buffers = w.answer(req)
                answered[request_key(req)] = {
                    "fields": _externalize(fields, blob, ids),
                    "buffers": [blob.add(b) for b in buffers],
                }
            replies[ids[w.model_id]] = answered
            notes.extend(w.export_notes(per_view))

    data = {
        "version": 1,
        "models": models,
        "replies": replies,
        "items": [
            {**it, "model": ids[it["model"]]} if it["type"] == "view" else it for it in layout
        ],
    }
    bundle = (STATIC / "index.js").read_bytes()
    css = (STATIC / "index.css").read_text(encoding="utf-8")
    host = (STATIC / "host.js").read_text(encoding="utf-8")
    if "</script" in host.lower():
        raise RuntimeError("host.js contains '</script'; it cannot be inlined safely.")
    body = []
    for it in data["items"]:
        if it["type"] == "markdown":
            body.append(f'<div class="cb-md">{it["html"]}</div>')
        else:
            body.append(f'<div class="cb-slot" data-cb-model="{it["model"]}"></div>')
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    notes_block = f'<ul class="cb-notes" aria-label="reductions">{note_html}</ul>' if notes else ""
    css = css.replace("</", "<\\/")
    body_html = "\n".join(body)
    state_json = _safe_json(data)
    blob_b64 = base64.b64encode(blob.compressed()).decode("ascii")
    bundle_b64 = base64.b64encode(bundle).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; img-src data: blob:; connect-src blob: data:">
<meta name="generator" content="circuitboard">
<title>{html.escape(title)}</title>
<style>{_page_css()}</style>
<style>{css}</style>
</head>
<body>
<header class="cb-page-header"><h1>{html.escape(title)}</h1>
{notes_block}
</header>
<main id="cb-report">
{body_html}
</main>
<footer class="cb-page-footer">Made with circuitboard. Works offline.</footer>
<script id="cb-state" type="application/json">{state_json}</script>
<script id="cb-blob" type="text/plain">{blob_b64}</script>
<script id="cb-bundle" type="text/plain">{bundle_b64}</script>
<script>{host}</script>
</body>
</html>
"""


def _page_css() -> str:
    return (
        "body{margin:0 auto;max-width:1200px;padding:16px;font-family:system-ui,sans-serif;"
        "background:#fff;color:#1f2328}"
        "@media (prefers-color-scheme: dark){body{background:#0d1117;color:#e6edf3}}"
        ".cb-slot{margin:12px 0}.cb-notes{color:#9a6700}.cb-page-footer{color:#888;font-size:12px}"
    )


def report(*items: Any, path: str | os.PathLike[str], title: str = "circuitboard report",
           budget_bytes: int = DEFAULT_BUDGET) -> Path:
    """Write views, boards and Markdown text to one self-contained offline HTML file.

    The file inlines the widget bundle once, the widgets' state as JSON and their binary
    buffers gzip-compressed and base64-encoded; a small host runs the views with no kernel
    and no network. Output is deterministic and written atomically.

    Examples
    --------
    >>> import numpy as np, circuitboard as cb
    >>> view = cb.AttentionView(attention=np.full((1, 2, 2), 0.5), tokens=["a", "b"])
    >>> cb.report(view, path=tmp_path / "r.html").stat().st_size > 0  # doctest: +SKIP
    True
    """
    text = build_report(list(items), title=title, budget_bytes=budget_bytes)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
