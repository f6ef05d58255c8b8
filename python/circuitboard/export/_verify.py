"""`circuitboard verify report.html`: re-read a report and recompute the checks it shows."""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..widgets._checks import view_checks
from ._proof import PARTS, SEAL_OPEN, read_seal


def _script(page: str, sid: str) -> str | None:
    m = re.search(rf'<script id="{sid}" type="[^"]+">(.*?)</script>', page, re.S)
    return m.group(1) if m else None


def _resolve(value: Any, blob: bytes) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$blob"}:
            start, size = value["$blob"]
            return blob[start : start + size]
        return {k: _resolve(v, blob) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, blob) for v in value]
    return value


@dataclass
class Verification:
    """What :func:`verify_report` found: ``ok`` only if the page is whole, its seal matches
    and every check passed and agreed. ``strict`` also fails a page none of whose views carry
    a check."""

    path: Path
    problems: list[str] = field(default_factory=list)
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (view, check)
    views: list[str] = field(default_factory=list)  # every view the page holds
    strict: bool = False

    @property
    def no_checks(self) -> bool:
        """The page is sound but none of its views states an identity to recompute."""
        return not self.problems and not self.rows

    @property
    def ok(self) -> bool:
        if self.strict and self.no_checks:
            return False
        return not self.problems and all(c["ok"] for _, c in self.rows)

    def summary(self) -> str:
        lines = [f"{self.path}:"]
        for view, c in self.rows:
            mark = "ok  " if c["ok"] else "FAIL"
            lines.append(f"  {mark} {view}: {c['name']} (error {c['error']:.3g}) — {c['detail']}")
        lines += [f"  FAIL {p}" for p in self.problems]
        if self.no_checks:
            shown = ", ".join(sorted(set(self.views))) or "none"
            verdict = "FAIL (--strict)" if self.strict else "nothing recomputed"
            lines.append(
                f"The page is whole and its seal matches, but no checks apply to its views "
                f"({shown}): {verdict}."
            )
            return "\n".join(lines)
        n_fail = len(self.problems) + sum(not c["ok"] for _, c in self.rows)
        lines.append(
            f"{len(self.rows)} checks recomputed from the embedded data; "
            + ("all passed." if n_fail == 0 else f"{n_fail} failed.")
        )
        return "\n".join(lines)


def verify_report(path: str | Path, *, strict: bool = False) -> Verification:
    """Check that a report is whole and unedited, then recompute its checks from its data.

    First every part the exporter writes must be there (a truncated page names what is
    missing); then the page's seal, a sha256 over every byte of the page but the seal itself,
    must match (an edit anywhere fails: data, bundle, host, title or prose); then every view's
    identities are recomputed from its embedded state and compared with the badges the page
    shows. A page whose views state no identity passes as "no checks apply", and fails with
    ``strict=True``.

    Examples
    --------
    >>> import numpy as np, circuitboard as cb
    >>> view = cb.AttentionView(np.full((1, 2, 2), 0.5), ["a", "b"])
    >>> out = cb.report(view, path=tmp_dir / "r.html")  # doctest: +SKIP
    >>> cb.verify_report(out).ok, cb.verify_report(out).no_checks  # doctest: +SKIP
    (True, True)
    """
    out = Verification(Path(path), strict=strict)
    data = Path(path).read_bytes()
    try:
        page = data.decode("utf-8")
    except UnicodeDecodeError as e:
        out.problems.append(f"not a circuitboard report (not UTF-8 text: {e})")
        return out
    made_here = '<meta name="generator" content="circuitboard' in page
    if not made_here and _script(page, "cb-state") is None and SEAL_OPEN not in page:
        out.problems.append("not a circuitboard report (no embedded state)")
        return out
    missing = [name for name, opening in PARTS if opening not in page]
    missing += [
        f"the end of {name}"
        for name, sid in (
            ("the embedded state", "cb-state"),
            ("the proof", "cb-proof"),
            ("the embedded data", "cb-blob"),
            ("the widget bundle", "cb-bundle"),
        )
        if f'<script id="{sid}"' in page and _script(page, sid) is None
    ]
    if missing:
        out.problems.append(
            f"the page is incomplete: it lacks {', '.join(missing)} (cut short or edited; "
            "write it again with cb.report or circuitboard report)"
        )
        return out
    claimed, actual = read_seal(data)
    if claimed != actual:
        out.problems.append(
            "content hash mismatch: the page was changed after it was written (its seal covers "
            "every byte of the page but the seal itself)"
        )
        return out
    try:
        state = json.loads(_script(page, "cb-state") or "")
        proof = json.loads(_script(page, "cb-proof") or "")
        blob = gzip.decompress(base64.b64decode(_script(page, "cb-blob") or ""))
        shown_views = proof["views"]
    except Exception as e:  # noqa: BLE001 - a sealed page that does not decode is broken
        out.problems.append(f"the embedded state or data does not decode ({type(e).__name__})")
        return out
    for mid, shown in shown_views.items():
        out.views.append(shown["view"])
        if f'data-cb-model="{mid}"' not in page:
            out.problems.append(f"{shown['view']}: the page has no place for this view")
        again = view_checks(_resolve(state["models"][mid]["state"], blob))
        for c in again:
            out.rows.append((shown["view"], c))
        if [(c["name"], c["ok"]) for c in again] != [(c["name"], c["ok"]) for c in shown["checks"]]:
            out.problems.append(f"{shown['view']}: the page's badges disagree with its data")
        for a, b in zip(again, shown["checks"], strict=False):
            if not math.isclose(a["error"], b["error"], rel_tol=1e-9, abs_tol=1e-12):
                out.problems.append(
                    f"{shown['view']}: {a['name']} shows error {b['error']:.3g}, the data gives "
                    f"{a['error']:.3g}"
                )
    return out
