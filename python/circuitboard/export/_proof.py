"""What a report shows to prove itself: check badges per view, provenance, the content hash."""

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


def content_hash(state_json: str, blob_b64: str) -> str:
    """sha256 over the page's embedded state and data, exactly as written in the page."""
    h = hashlib.sha256(state_json.encode("ascii"))
    h.update(b"\n")
    h.update(blob_b64.encode("ascii"))
    return h.hexdigest()


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
