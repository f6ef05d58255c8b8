"""What a report shows to prove itself: check badges per view, provenance, the page's seal."""

from __future__ import annotations

import hashlib
import html
from typing import Any

PROOF_CSS = (
    ".cb-badges{display:flex;flex-wrap:wrap;gap:6px;margin:14px 0 2px;font-size:12px}"
    ".cb-badge{border-radius:10px;padding:1px 9px;border:1px solid;white-space:nowrap}"
    ".cb-badge.ok{color:#1a7f37;border-color:#1a7f37;background:color-mix(in srgb,#1a7f37 8%,"
    "transparent)}.cb-badge.fail{color:#cf222e;border-color:#cf222e;font-weight:600;"
    "background:color-mix(in srgb,#cf222e 10%,transparent)}"
    ".cb-provenance{font-size:12px;color:var(--pg-muted);margin:6px 0}"
    ".cb-provenance table{border-collapse:collapse;margin:4px 0 8px}"
    ".cb-provenance td{padding:1px 10px 1px 0;vertical-align:top;word-break:break-all}"
    ".cb-provenance td:first-child{white-space:nowrap;color:var(--pg-fg)}"
)


SEAL_OPEN = '<script id="cb-seal" type="text/plain">'
SEAL_CLOSE = "</script>"
SEAL_PLACEHOLDER = SEAL_OPEN + SEAL_CLOSE

# Every part the exporter writes, in page order, with the text that opens it: a page lacking
# one was cut short or edited, and `circuitboard verify` names what is gone.
PARTS = (
    ("the document type", "<!DOCTYPE html>"),
    ("the page title", "<title>"),
    ("the page header", '<header class="cb-page-header">'),
    ("the views", '<main id="cb-report">'),
    ("the end of the views", "</main>"),
    ("the footer", '<footer class="cb-page-footer">'),
    ("the embedded state", '<script id="cb-state" type="application/json">'),
    ("the proof", '<script id="cb-proof" type="application/json">'),
    ("the embedded data", '<script id="cb-blob" type="text/plain">'),
    ("the widget bundle", '<script id="cb-bundle" type="text/plain">'),
    ("the page host", '<script id="cb-host">'),
    ("the seal", SEAL_OPEN),
    ("the end of the page", "</html>"),
)


def _digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


def seal(page: str) -> str:
    """Fill in the page's seal: the sha256 of every byte of the page as written (UTF-8) with
    the seal itself empty, so any edit anywhere (state, data, bundle, host, visible text) shows.

    >>> page = seal("<p>hi</p>" + SEAL_PLACEHOLDER)
    >>> def intact(p): claimed, actual = read_seal(p.encode()); return claimed == actual
    >>> intact(page), intact(page.replace("hi", "ho"))
    (True, False)
    """
    if page.count(SEAL_OPEN) != 1:
        raise RuntimeError("a report must hold exactly one seal placeholder")
    at = page.index(SEAL_PLACEHOLDER) + len(SEAL_OPEN)
    return page[:at] + _digest(page.encode("utf-8", "replace")) + page[at:]


def read_seal(data: bytes) -> tuple[str | None, str | None]:
    """``(claimed, actual)``: the seal a page carries and the one its bytes give; ``(None,
    None)`` when it has no complete seal."""
    opening = SEAL_OPEN.encode()
    start = data.rfind(opening)
    if start < 0:
        return None, None
    body = start + len(opening)
    end = data.find(SEAL_CLOSE.encode(), body)
    if end < 0:
        return None, None
    claimed = data[body:end].decode("ascii", "replace")
    return claimed, _digest(data[:body] + data[end:])


def _badge(c: dict[str, Any]) -> str:
    mark, cls = ("\u2713", "ok") if c["ok"] else ("\u2717", "fail")
    title = f"{c['detail']} (error {c['error']:.3g}, tolerance {c['tolerance']:.3g})"
    return (
        f'<span class="cb-badge {cls}" title="{html.escape(title)}">'
        f"{mark} {html.escape(c['name'])} · {c['error']:.2g}</span>"
    )


def _rows(p: dict[str, Any]) -> str:
    def text(v: Any) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {text(x)}" for k, x in v.items())
        if isinstance(v, list):
            return " | ".join(text(x) for x in v)
        return "—" if v is None else str(v)

    return "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(text(v))}</td></tr>" for k, v in p.items()
    )


def badges_html(checks: list[dict[str, Any]], model: str) -> str:
    """The check badges shown above one view (nothing for a view that states no identity)."""
    if not checks:
        return ""
    badges = "".join(_badge(c) for c in checks)
    return f'<div class="cb-badges" data-cb-proof-for="{model}">{badges}</div>'


def provenance_html(provenance: list[dict[str, Any]]) -> str:
    """The page's provenance block: one table per distinct capture the views came from."""
    distinct: list[dict[str, Any]] = []
    for p in provenance:
        if p and p not in distinct:
            distinct.append(p)
    if not distinct:
        return (
            '<p class="cb-provenance">Provenance: these views were built from arrays, not from '
            "a capture, so the page cannot name the model that made them.</p>"
        )
    tables = "".join(f"<table>{_rows(p)}</table>" for p in distinct)
    return (
        '<details class="cb-provenance"><summary>Provenance (model, weights, software, input) '
        f"· check with <code>circuitboard verify</code></summary>{tables}</details>"
    )
