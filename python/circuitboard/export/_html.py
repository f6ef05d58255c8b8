"""Write widgets as one offline HTML file: inlined bundle, JSON state, compressed buffers."""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._threads import one_thread
from ..widgets._bundle import STATIC, Base, request_key
from ..widgets._checks import view_checks
from ..widgets._view import View, json_safe
from ._markdown import markdown_to_html
from ._proof import PROOF_CSS, SEAL_PLACEHOLDER, badges_html, provenance_html, seal

DEFAULT_BUDGET = 50_000_000  # bytes of the written file
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
    if isinstance(value, str) and value.startswith(PREFIX) and value[len(PREFIX) :] in ids:
        return PREFIX + ids[value[len(PREFIX) :]]
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
    # ASCII-only, and '<' escaped so no string (a token such as "</script>") can end the
    # script element; NaN / inf become null because JSON.parse rejects them.
    text = json.dumps(json_safe(data), ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c")


def _shrink(data: bytes) -> int:
    """Bytes ``data`` adds to the page once compressed and base64-encoded."""
    return (len(zlib.compress(data, 6)) + 2) // 3 * 4 if data else 0


def _layout(items: list[Any]) -> tuple[list[View], list[dict[str, str]]]:
    views: list[View] = []
    layout: list[dict[str, str]] = []

    def add(item: Any, depth: int) -> None:
        if isinstance(item, str):
            layout.append({"type": "markdown", "html": markdown_to_html(item)})
        elif isinstance(item, View):
            if item in views:
                raise ValueError(
                    f"the same {type(item).__name__} appears twice in the report; a view can be "
                    "shown once per page. Build a second view for a second copy."
                )
            views.append(item)
            layout.append({"type": "view", "model": item.model_id})
        elif hasattr(item, "report_items") and depth == 0:  # a Board: its items, in order
            for child in item.report_items():
                add(child, 1)
        else:
            raise TypeError(
                f"report items must be circuitboard views, boards or Markdown strings; got "
                f"{type(item).__name__}. Wrap plots from other libraries as a PNG in your notebook."
            )

    for item in items:
        add(item, 0)
    if not views:
        raise ValueError("a report needs at least one view; pass e.g. cb.attention(cap).")
    return views, layout


_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src blob: data:"
)
_TOGGLE = (
    '<button type="button" class="cb-theme-toggle" aria-label="colour theme" '
    'title="Colour theme: auto / light / dark">\u25d0 auto</button>'
)
_SKIP_STATE = (
    "_esm",
    "_css",
    "_anywidget_id",
    "_dom_classes",
    "layout",
    "tabbable",
    "tooltip",
    "_sel",
)


def _state(w: Base) -> dict[str, Any]:
    return {
        k: v
        for k, v in w.get_state().items()
        if not k.startswith("_model") and not k.startswith("_view_") and k not in _SKIP_STATE
    }


def _pointers(views: list[View]) -> list[dict[str, int]]:
    """Every selection the page's views point to: their own lists and the shared selection."""
    out: list[dict[str, int]] = []
    for w in views:
        out += w.export_pointers()
        sel = w.link.selection
        if sel.get("layer") is not None and sel.get("head") is not None:
            out.append({"layer": sel["layer"], "head": sel["head"]})
        if sel.get("layer") is not None and sel.get("neuron") is not None:
            out.append({"layer": sel["layer"], "neuron": sel["neuron"]})
    seen: set[tuple[tuple[str, int], ...]] = set()
    return [p for p in out if not ((k := tuple(sorted(p.items()))) in seen or seen.add(k))]


def _points_to(req: dict[str, Any], pointed: set[tuple[str, Any, Any]]) -> bool:
    """True for a fetch of one head or one neuron that ``pointed`` (see `_pointed`) names."""
    if req.get("kind") == "fetch-head":
        return ("head", req.get("layer"), req.get("head")) in pointed
    if req.get("kind") == "fetch-neuron":
        return ("neuron", req.get("layer"), req.get("neuron")) in pointed
    return False


def _pointed(pointers: list[dict[str, int]]) -> set[tuple[str, Any, Any]]:
    return {
        ("head", p["layer"], p["head"]) if "head" in p else ("neuron", p["layer"], p["neuron"])
        for p in pointers
    }


class _wanted:
    """Tell a view what the page points to while its parts are planned, then forget it.

    The attention view keeps its ``export_heads`` at full resolution first; the pointed
    heads join them for the duration of the export only.
    """

    def __init__(self, view: View, pointers: list[dict[str, int]]) -> None:
        self.view, self.pointers = view, pointers

    def __enter__(self) -> None:
        self.heads = getattr(self.view, "_export_heads", None)
        if isinstance(self.heads, list):
            layers = getattr(self.view, "layer_indices", [])
            n_heads = getattr(self.view, "n_heads", 0)
            extra = [
                (p["layer"], p["head"])
                for p in self.pointers
                if "head" in p and p["layer"] in layers and 0 <= p["head"] < n_heads
            ]
            self.view._export_heads = self.heads + [h for h in extra if h not in self.heads]
        self.view.export_wanted(self.pointers)

    def __exit__(self, *exc: Any) -> None:
        if isinstance(self.heads, list):
            self.view._export_heads = self.heads
        self.view.export_wanted([])


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def build_report(items: list[Any], *, title: str, budget_bytes: int = DEFAULT_BUDGET) -> str:
    """The report's HTML as a string; see :func:`report`."""
    if not isinstance(title, str):
        raise TypeError(f"title must be a string; got {type(title).__name__}.")
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(
            f"budget_bytes must be a positive int (bytes of the file); got {budget_bytes!r}."
        )
    # Parts are costed one by one (compressed); the page compresses them together, which is
    # usually smaller. When it is not, fit again to the budget minus the overshoot.
    target = budget_bytes
    for _ in range(4):
        text = _build(items, title, target, budget_bytes)
        size = len(text.encode("utf-8"))
        if size <= budget_bytes:
            return text
        target -= size - budget_bytes + 2_000
    raise ValueError(  # pragma: no cover - the loop above converges in practice
        f"could not fit the report in budget_bytes={budget_bytes:,}; raise it."
    )


@one_thread()  # the views' parts are many small operations (see one_thread)
def _build(items: list[Any], title: str, budget_bytes: int, stated_budget: int) -> str:
    views, layout = _layout(items)
    widgets = _collect(views)
    ids = {w.model_id: f"m{i}" for i, w in enumerate(widgets)}  # deterministic ids
    blob = _Blob()
    models: dict[str, Any] = {}
    for w in widgets:
        models[ids[w.model_id]] = {"state": _externalize(_state(w), blob, ids)}

    bundle = (STATIC / "index.js").read_bytes()
    css = (STATIC / "index.css").read_text(encoding="utf-8")
    host = (STATIC / "host.js").read_text(encoding="utf-8")
    if "</script" in host.lower():
        raise RuntimeError("host.js contains '</script'; it cannot be inlined safely.")

    # The smallest page these views make: bundle, host, styles and every view's own state.
    fixed = (
        (len(bundle) + 2) // 3 * 4
        + len(host)
        + len(css)
        + len(_page_css())
        + 4_000
        + len(_safe_json(models))
        + _shrink(b"".join(blob.parts))
        + sum(len(it.get("html", "")) for it in layout)
    )
    if fixed > budget_bytes:
        raise ValueError(
            f"these views need at least {_fmt_mb(fixed)} (bundle {_fmt_mb(len(bundle) * 4 / 3)}, "
            f"the views' own state {_fmt_mb(fixed - len(bundle) * 4 / 3)}), over "
            f"budget_bytes={stated_budget:,}. Raise budget_bytes, or report fewer views or a "
            "shorter prompt."
        )

    replies: dict[str, Any] = {}
    notes: list[str] = []
    left = budget_bytes - fixed
    pointers = _pointers(views)
    pointed = _pointed(pointers)
    for i, w in enumerate(views):
        share = left // (len(views) - i)
        # Views size their requests in raw bytes; quantized tensors compress ~2x, and the
        # measured (compressed) cost below is what counts against the share.
        with _wanted(w, pointers):
            requests = w.export_requests(2 * share)
            # What another view of the page points to (a listed neuron, a selected head) is
            # kept whatever it costs; the rest is kept while it fits, in the view's order.
            must = [r for r in requests if _points_to(r, pointed)]
            requests = must + [r for r in requests if not _points_to(r, pointed)]
            answered: dict[str, Any] = {}
            spent = 0
            replies_of = [w.answer(req) for req in requests]
            # When every part fits even uncompressed (base64 of the raw bytes), skip costing
            # each one by compressing it: small reports are written much faster.
            upper = [
                (sum(len(b) for b in buffers) + 2) // 3 * 4
                + len(_safe_json(fields))
                + len(_safe_json(request_key(req)))
                + 40
                for req, (fields, buffers) in zip(requests, replies_of, strict=True)
            ]
            all_fit = sum(upper) <= share
            for k, req in enumerate(requests):
                fields, buffers = replies_of[k]
                cost = (
                    upper[k]
                    if all_fit
                    else (
                        _shrink(b"".join(bytes(b) for b in buffers))
                        + len(_safe_json(fields))
                        + len(_safe_json(request_key(req)))
                        + 40
                    )
                )
                if spent + cost > share and k >= len(must):
                    continue  # a smaller part after it may still fit
                spent += cost
                answered[request_key(req)] = {
                    "fields": _externalize(fields, blob, ids),
                    "buffers": [blob.add(b) for b in buffers],
                }
            name = getattr(w, "report_name", None) or type(w).__name__.removesuffix("View")
            notes.extend(w.export_notes(2 * share))  # views name themselves in their notes
        if len(answered) < len(requests):
            notes.append(
                f"{name}: {len(answered)} of {len(requests)} precomputed parts kept to fit the "
                f"size budget ({_fmt_mb(stated_budget)}); the rest show a notice. Raise "
                "budget_bytes to keep them all."
            )
        replies[ids[w.model_id]] = answered
        left -= spent

    data = {
        "version": 1,
        "models": models,
        "replies": replies,
        "items": [
            {**it, "model": ids[it["model"]]} if it["type"] == "view" else it for it in layout
        ],
    }
    # Each view's identities, computed from exactly the state the page embeds.
    proof_views = {
        ids[w.model_id]: {
            "view": getattr(w, "report_name", None) or type(w).__name__.removesuffix("View"),
            "checks": view_checks(_state(w)),
            "provenance": dict(w.provenance),
        }
        for w in views
    }
    body = []
    for it in data["items"]:
        if it["type"] == "markdown":
            body.append(f'<section class="cb-md">{it["html"]}</section>')
        else:
            body.append(badges_html(proof_views[it["model"]]["checks"], it["model"]))
            body.append(f'<section class="cb-slot" data-cb-model="{it["model"]}"></section>')
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    notes_block = (
        '<details class="cb-notes" open><summary>Left out of this offline page</summary>'
        f'<ul aria-label="reductions">{note_html}</ul></details>'
        if notes
        else ""
    )
    css = css.replace("</", "<\\/")
    body_html = "\n".join(body)
    state_json = _safe_json(data)
    blob_b64 = base64.b64encode(blob.compressed()).decode("ascii")
    proof = {"views": proof_views}
    provenance_block = provenance_html([v["provenance"] for v in proof_views.values()])
    bundle_b64 = base64.b64encode(bundle).decode("ascii")
    return seal(f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="generator" content="circuitboard {_version()}">
<title>{html.escape(title)}</title>
<style>{_page_css()}</style>
<style>{css}</style>
</head>
<body>
<header class="cb-page-header">
<h1>{html.escape(title)}</h1>
{_TOGGLE}
</header>
{notes_block}
{provenance_block}
<main id="cb-report">
{body_html}
</main>
<footer class="cb-page-footer">{_footer()}</footer>
<script id="cb-state" type="application/json">{state_json}</script>
<script id="cb-proof" type="application/json">{_safe_json(proof)}</script>
<script id="cb-blob" type="text/plain">{blob_b64}</script>
<script id="cb-bundle" type="text/plain">{bundle_b64}</script>
<script id="cb-host">{host}</script>
{SEAL_PLACEHOLDER}
</body>
</html>
""")


def _footer() -> str:
    return (
        f"Made with circuitboard {_version()} · one self-contained file, works offline · "
        "hover a token, click to select; every view follows."
    )


def _version() -> str:
    from .. import __version__

    return __version__


def _page_css() -> str:
    return (
        ":root{color-scheme:light dark;--pg-bg:#ffffff;--pg-fg:#1f2328;--pg-muted:#656d76;"
        "--pg-border:#d0d7de;--pg-note:#fff8c5;--pg-note-fg:#6a5300}"
        "@media (prefers-color-scheme: dark){:root:not([data-theme=light]){--pg-bg:#0d1117;"
        "--pg-fg:#e6edf3;--pg-muted:#8d96a0;--pg-border:#30363d;--pg-note:#2e2a1a;--pg-note-fg:#e3b341}}"
        ":root[data-theme=dark]{--pg-bg:#0d1117;--pg-fg:#e6edf3;--pg-muted:#8d96a0;"
        "--pg-border:#30363d;--pg-note:#2e2a1a;--pg-note-fg:#e3b341}"
        "body{margin:0 auto;max-width:1280px;padding:20px 24px 32px;background:var(--pg-bg);"
        "color:var(--pg-fg);font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}"
        ".cb-page-header{display:flex;align-items:center;gap:12px;border-bottom:1px solid "
        "var(--pg-border);padding-bottom:8px;margin-bottom:12px}"
        ".cb-page-header h1{font-size:22px;margin:0;flex:1}"
        ".cb-theme-toggle{font:inherit;font-size:13px;color:var(--pg-fg);background:transparent;"
        "border:1px solid var(--pg-border);border-radius:6px;padding:3px 10px;cursor:pointer}"
        ".cb-notes{background:var(--pg-note);color:var(--pg-note-fg);border-radius:6px;"
        "padding:6px 12px;margin:8px 0;font-size:13px}.cb-notes ul{margin:4px 0;padding-left:20px}"
        ".cb-md{max-width:80ch}.cb-md h1,.cb-md h2,.cb-md h3{margin:18px 0 6px}"
        ".cb-md code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
        "background:color-mix(in srgb,var(--pg-fg) 8%,transparent);padding:1px 4px;"
        "border-radius:4px;"
        "white-space:pre-wrap}"
        ".cb-slot{margin:12px 0}"
        ".cb-page-footer{color:var(--pg-muted);font-size:12px;margin-top:24px;"
        "border-top:1px solid var(--pg-border);padding-top:8px}" + PROOF_CSS
    )


def report(
    *items: Any,
    path: str | os.PathLike[str],
    title: str = "circuitboard report",
    budget_bytes: int = DEFAULT_BUDGET,
) -> Path:
    """Write views, boards and Markdown text to one self-contained offline HTML file.

    The file inlines the widget bundle once, the widgets' state as JSON and their binary
    buffers gzip-compressed and base64-encoded; a small host runs the views with no kernel
    and no network. Output is deterministic (same inputs, byte-identical file) and written
    atomically (a reader never sees half a file).

    Parameters
    ----------
    *items : View, Board or str
        Views, boards (their title and views) and Markdown text, in page order.
    path : str or PathLike
        Where to write the ``.html`` file.
    title : str
        The page title.
    budget_bytes : int
        Largest file size. Each view first gets its own state (e.g. the first head shown);
        the rest of the budget is shared among views for their precomputed parts (other
        heads, layers, neurons), measured after compression. Whatever is left out is listed
        at the top of the page. A ``ValueError`` says how much is needed when even the
        views' own state does not fit.

    Examples
    --------
    >>> import numpy as np, circuitboard as cb
    >>> view = cb.AttentionView(attention=np.full((1, 2, 2), 0.5), tokens=["a", "b"])
    >>> cb.report(view, path=tmp_path / "r.html").stat().st_size > 0  # doctest: +SKIP
    True
    """
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(
            f"path={str(out)!r} is a directory; pass a file path such as "
            f"{str(out / 'report.html')!r}."
        )
    text = build_report(list(items), title=title, budget_bytes=budget_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace", newline="\n") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
