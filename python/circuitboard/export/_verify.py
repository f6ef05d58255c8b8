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
from ._proof import content_hash


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
    """What :func:`verify_report` found: ``ok`` only if every check passed and agreed."""

    path: Path
    problems: list[str] = field(default_factory=list)
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (view, check)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c["ok"] for _, c in self.rows)

    def summary(self) -> str:
        lines = [f"{self.path}:"]
        for view, c in self.rows:
            mark = "ok  " if c["ok"] else "FAIL"
            lines.append(f"  {mark} {view}: {c['name']} (error {c['error']:.3g}) — {c['detail']}")
        lines += [f"  FAIL {p}" for p in self.problems]
        n_fail = len(self.problems) + sum(not c["ok"] for _, c in self.rows)
        lines.append(
            f"{len(self.rows)} checks recomputed from the embedded data; "
            + ("all passed." if n_fail == 0 else f"{n_fail} failed.")
        )
        return "\n".join(lines)


def verify_report(path: str | Path) -> Verification:
    """Recompute a report's checks from the data it embeds.

    First the content hash over the embedded state and data (a page edited after export fails
    here), then every view's identities from its embedded state, compared with the badges the
    page shows.

    Examples
    --------
    >>> import numpy as np, circuitboard as cb
    >>> from circuitboard import verify_report
    >>> view = cb.AttentionView(np.full((1, 2, 2), 0.5), ["a", "b"])
    >>> out = cb.report(view, path=tmp_dir / "r.html")  # doctest: +SKIP
    >>> verify_report(out).ok  # doctest: +SKIP
    True
    """
    out = Verification(Path(path))
    page = Path(path).read_text(encoding="utf-8")
    state_json, blob_b64, proof_json = (
        _script(page, s) for s in ("cb-state", "cb-blob", "cb-proof")
    )
    if state_json is None or blob_b64 is None:
        out.problems.append("not a circuitboard report (no embedded state)")
        return out
    if proof_json is None:
        out.problems.append("this report carries no checks (written before circuitboard 0.2)")
        return out
    proof = json.loads(proof_json)
    if content_hash(state_json, blob_b64) != proof.get("content_sha256"):
        out.problems.append(
            "content hash mismatch: the embedded data was changed after the report was written"
        )
        return out
    data = json.loads(state_json)
    blob = gzip.decompress(base64.b64decode(blob_b64))
    for mid, shown in proof["views"].items():
        state = _resolve(data["models"][mid]["state"], blob)
        again = view_checks(state)
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
