"""The kernel side of the attention view's explanation panel: answers ``fetch-explain`` requests
(one clicked cell: which component pairs built its score, what the head moves into the
attribution target from each source) and picks the explanations a report embeds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._view import View

PANEL_SIDE = 8  # components per side in the panel's small heatmap
PANEL_PAIRS = 12  # top pairs listed
PANEL_SOURCES = 16  # source positions in the OV bars
EMBED_MAX_TOKENS = 2048  # reports embed explanations for prompts up to this long
REPLY_BYTES = 5_000  # about one reply in a report (JSON), for the budget
ROW_KEYS = 64  # keys of one query explained per fetch-explain-row request, at most


def _top_indices(matrix: np.ndarray, axis: int, k: int) -> list[int]:
    """Rows (axis 1) or columns (axis 0) holding the largest single terms: every top pair's
    components are on the panel's heatmap."""
    peak = np.abs(matrix).max(axis=axis) if matrix.size else np.zeros(matrix.shape[1 - axis])
    return np.argsort(-peak, kind="stable")[:k].tolist()


def panel_reply(ex: Any, ov: Any = None) -> dict[str, Any]:
    """Plain data for the panel from an ``AttentionExplanation`` (and a
    ``HeadOutputExplanation`` when the view has an attribution target)."""
    M = np.asarray(ex.matrix, dtype=np.float64)
    qi = _top_indices(M, 1, PANEL_SIDE)
    kj = _top_indices(M, 0, PANEL_SIDE)
    sub = M[np.ix_(qi, kj)]
    reply: dict[str, Any] = {
        "layer": ex.layer,
        "head": ex.head,
        "kv_head": ex.kv_head,
        "query": ex.query,
        "key": ex.key,
        "score": ex.score,
        "total": ex.total,
        "score_source": ex.score_source,
        "residual_error": ex.residual_error,
        "softcap": ex.softcap,
        "q_labels": [ex.query_labels[i] for i in qi],
        "k_labels": [ex.key_labels[j] for j in kj],
        "q_totals": [float(ex.query_totals[i]) for i in qi],
        "k_totals": [float(ex.key_totals[j]) for j in kj],
        "matrix": [float(v) for v in sub.ravel()],
        "shown": float(sub.sum()),
        "n_query": len(ex.query_labels),
        "n_key": len(ex.key_labels),
        "pairs": ex.top(PANEL_PAIRS),
        "ov": None,
    }
    if ov is not None:
        top = ov.top(PANEL_SOURCES)
        reply["ov"] = {
            "target": ov.target_text,
            "baseline": ov.baseline_text if ov.baseline is not None else None,
            "query": ov.query,
            "model_value": ov.model_value,
            "total": ov.total,
            "sources": [{"pos": t["pos"], "value": t["value"], "weight": t["weight"]} for t in top],
            "rest": ov.total - sum(t["value"] for t in top),
        }
    return reply


class ExplainCells(View):
    """Adds on-demand explanations of clicked cells to a view of attention patterns.

    ``explainer(layer, head, query, key)`` returns an ``AttentionExplanation`` and
    ``head_output(layer, head, query)`` a ``HeadOutputExplanation`` (or is None without an
    attribution target); :func:`circuitboard.attention` builds both from a capture.
    """

    explainable = traitlets.Bool(False).tag(sync=True)
    """Whether clicking a cell explains its score (the view was built from a capture)."""
    explain_target = traitlets.Unicode("").tag(sync=True)
    """The attribution target the panel's source bars explain (``" Mary" − " John"``), or ""."""

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-explain": "_fetch_explain",
        "fetch-explain-row": "_fetch_explain_row",
    }

    def _init_explain(
        self,
        explainer: Callable[..., Any] | None,
        head_output: Callable[..., Any] | None,
        target: str,
        prepare: Callable[[int, int], None] | None = None,
    ) -> None:
        self._explainer = explainer
        self._head_output = head_output
        self._prepare = prepare
        self.explainable = explainer is not None
        self.explain_target = target if head_output is not None else ""

    def explain(self, layer: int, head: int, query: int, key: int) -> dict[str, Any]:
        """The panel's data for one cell (``layer`` is the model's layer index)."""
        if getattr(self, "_explainer", None) is None:
            raise ValueError(
                "this attention view was built from patterns alone, so it cannot explain a "
                "score; build it from a capture: cb.attention(cap)."
            )
        ex = self._explainer(layer, head, query, key)
        ov = self._head_output(layer, head, query) if self._head_output is not None else None
        return panel_reply(ex, ov)

    def explain_row(self, layer: int, head: int, query: int, keys: list[int]) -> list[dict]:
        """The panel's data for several cells of one query row: what ``explain`` returns for
        each key, the head's output split (which depends on the query alone) computed once."""
        if getattr(self, "_explainer", None) is None:
            self.explain(layer, head, query, keys[0] if keys else 0)  # raises the explanation
        ov = self._head_output(layer, head, query) if self._head_output is not None else None
        return [panel_reply(self._explainer(layer, head, query, k), ov) for k in keys]

    def answer(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        reply = super().answer(msg)
        # A head shown live (a request with an id, not a report's): prepare its explanations
        # in the background, so that the first click on one of its cells is fast too.
        shown = msg.get("kind") in ("fetch-head", "fetch-overview")
        if shown and "id" in msg and getattr(self, "_prepare", None):
            args = (reply[0].get("layer"), reply[0].get("head"))
            threading.Thread(target=self._prepare_quietly, args=args, daemon=True).start()
        return reply

    def _prepare_quietly(self, layer: int, head: int) -> None:
        try:
            self._prepare(layer, head)  # type: ignore[misc]
        except Exception:  # a click on a cell reports any problem; a warm-up never does
            pass

    def _fetch_explain(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        args = []
        for name in ("layer", "head", "query", "key"):
            v = msg.get(name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"a fetch-explain request needs an int {name}; got {v!r}.")
            args.append(v)
        return self.explain(*args), []

    def _fetch_explain_row(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        """Several cells of one query at once (the view fetches the selected head's likely
        clicks ahead, a row per message, so that a click draws from its cache)."""
        args = []
        for name in ("layer", "head", "query"):
            v = msg.get(name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"a fetch-explain-row request needs an int {name}; got {v!r}.")
            args.append(v)
        keys = msg.get("keys")
        if (
            not isinstance(keys, list)
            or not 0 < len(keys) <= ROW_KEYS
            or any(isinstance(k, bool) or not isinstance(k, int) for k in keys)
        ):
            raise ValueError(
                f"a fetch-explain-row request needs keys: a list of 1 to {ROW_KEYS} ints "
                f"(split longer rows into several requests); got {keys!r}."
            )
        return {"cells": self.explain_row(*args, keys)}, []

    # -- reports -------------------------------------------------------------------------------
    def explain_budget(self, budget_bytes: int) -> int:
        """Bytes of a report's share set aside for explanations (a tenth, at most what the
        selected head's cells need)."""
        if not self.explainable:
            return 0
        return min(int(budget_bytes) // 10, len(self._explained_cells()) * REPLY_BYTES)

    def _explained_cells(self) -> list[tuple[int, int, int, int]]:
        """The cells a report embeds: each query's most-attended key in the selected head."""
        if self.n_tokens > EMBED_MAX_TOKENS:  # the selected head's every row: too big a read
            return []
        init = self._initial
        layer, head = self.layer_indices[init["layer"]], init["head"]
        pattern = self.pattern(layer, head)
        return [(layer, head, q, int(np.argmax(pattern[q]))) for q in range(pattern.shape[0])]

    def _unexplainable(self, cells: list[tuple[int, int, int, int]]) -> str | None:
        """Why this capture's scores cannot be explained (it lacks a kind), else None."""
        if not cells:
            return None
        try:
            self.explain(*cells[0])
        except (KeyError, ValueError) as err:  # e.g. captured with a narrow what=
            return str(err).strip("\"'")
        return None

    def explain_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        cells = self._explained_cells()[: self.explain_budget(budget_bytes) // REPLY_BYTES]
        if self._unexplainable(cells):
            return []
        return [
            {"kind": "fetch-explain", "layer": lay, "head": h, "query": q, "key": k}
            for lay, h, q, k in cells
        ]

    def explain_notes(self, budget_bytes: int) -> list[str]:
        if not self.explainable:
            return []
        cells = self._explained_cells()
        kept = self.explain_requests(budget_bytes)
        if not cells:
            return [
                f"Attention: no explanations of scores embedded (prompts over "
                f"{EMBED_MAX_TOKENS:,} tokens); click cells in a live notebook."
            ]
        why = self._unexplainable(cells)
        if why:
            return [f"Attention: no explanations of scores embedded: {why}"]
        lay, h = cells[0][:2]
        more = "" if len(kept) == len(cells) else f" (the first {len(kept)} queries)"
        return [
            f"Attention: explanations of L{lay}H{h}'s score embedded for each query's "
            f"most-attended key{more}; other cells are explained in a live notebook."
        ]
