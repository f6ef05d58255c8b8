"""Where the attention view reads patterns from: a full array, or a capture in blocks.

Both sources answer the same questions in numpy: a whole head, a block (tile) of one, and one
pass over a head's query rows that yields its thumbnail (mean mass per block), its pooled
overview (max per block) and the cheap head scores together, so a long prompt's head is
computed once per question and never held whole. Capture sources are read through
``cap.pattern_rows`` / ``cap.pattern`` (duck-typed: no torch import here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

CHUNK_BYTES = 64 * 2**20  # float32 rows of one head handled at once


def block_edges(n: int, size: int) -> np.ndarray:
    """Edges of ``min(n, size)`` near-equal blocks over ``n`` positions.

    >>> block_edges(10, 4).tolist()
    [0, 2, 5, 7, 10]
    """
    t = max(1, min(n, size))
    return (np.arange(t + 1) * n) // t


@dataclass
class HeadSummary:
    """One pass over a head: ``thumb`` (mean mass per block, rows sum to 1), ``overview`` (max
    per block, ``None`` when not asked) and the scores of :func:`pattern_scores`."""

    thumb: np.ndarray
    overview: np.ndarray | None
    previous_token: float
    first_token: float
    entropy: float


def summarize(
    rows: Iterator[tuple[int, np.ndarray]], n: int, thumb: int, overview: int
) -> HeadSummary:
    """:class:`HeadSummary` from ``(first_query, weights [rows, n])`` chunks of one head.

    >>> att = np.tril(np.ones((6, 6))); att /= att.sum(-1, keepdims=True)
    >>> s = summarize(iter([(0, att)]), 6, 3, 0)
    >>> s.thumb.sum(-1).round(6).tolist(), round(s.first_token, 3)
    ([1.0, 1.0, 1.0], 0.408)
    """
    te = block_edges(n, thumb)
    t_of = np.repeat(np.arange(len(te) - 1), np.diff(te))
    th = np.zeros((len(te) - 1, len(te) - 1), dtype=np.float64)
    ov = oe = o_of = None
    if overview:
        oe = block_edges(n, overview)
        o_of = np.repeat(np.arange(len(oe) - 1), np.diff(oe))
        ov = np.zeros((len(oe) - 1, len(oe) - 1), dtype=np.float32)
    prev = first = ent = 0.0
    for a, w in rows:
        w = np.asarray(w, dtype=np.float32)
        r = w.shape[0]
        q = np.arange(a, a + r)
        np.add.at(th, t_of[q], np.add.reduceat(w, te[:-1], axis=1, dtype=np.float64))
        if ov is not None:
            np.maximum.at(ov, o_of[q], np.maximum.reduceat(w, oe[:-1], axis=1))
        ok = q >= 1
        if ok.any():
            prev += float(w[np.nonzero(ok)[0], q[ok] - 1].sum(dtype=np.float64))
        first += float(w[:, 0].sum(dtype=np.float64))
        p = np.clip(w, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
        ent += float(-(p * logp).sum(dtype=np.float64))
    th /= np.diff(te)[:, None]
    return HeadSummary(
        thumb=th.astype(np.float32),
        overview=ov,
        previous_token=prev / (n - 1) if n > 1 else 0.0,
        first_token=first / n,
        entropy=max(0.0, ent / n),
    )


def rows_per_chunk(n: int) -> int:
    return max(1, CHUNK_BYTES // max(1, 4 * n))


class ArraySource:
    """Patterns given whole, ``[layers, heads, n, n]``."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.n_layers, self.n_heads, self.n, _ = arr.shape

    def head(self, li: int, h: int) -> np.ndarray:
        return self.arr[li, h]

    def block(self, li: int, h: int, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        return self.arr[li, h, q0:q1, k0:k1]

    def rows(self, li: int, h: int) -> Iterator[tuple[int, np.ndarray]]:
        step = rows_per_chunk(self.n)
        for a in range(0, self.n, step):
            yield a, self.arr[li, h, a : a + step]

    def summary(self, li: int, h: int, thumb: int, overview: int) -> HeadSummary:
        return summarize(self.rows(li, h), self.n, thumb, overview)


class CaptureSource:
    """Patterns of a capture, computed on demand from its queries and keys, in blocks."""

    def __init__(self, cap: Any, layers: list[int]) -> None:
        self.cap = cap
        self.layers = layers
        self.n = cap.n_tokens
        self.n_layers = len(layers)
        self.n_heads = int(cap.pattern(layers[0], queries=0).shape[0])

    def head(self, li: int, h: int) -> np.ndarray:
        return self.cap.pattern(self.layers[li], head=h).numpy()

    def block(self, li: int, h: int, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        return self.cap.pattern(
            self.layers[li], head=h, queries=slice(q0, q1), keys=slice(k0, k1)
        ).numpy()

    def rows(self, li: int, h: int) -> Iterator[tuple[int, np.ndarray]]:
        for a, w in self.cap.pattern_rows(self.layers[li], head=h):
            yield a, w[0].numpy()

    def summary(self, li: int, h: int, thumb: int, overview: int) -> HeadSummary:
        """:func:`summarize` of a head, computed from queries and keys in the capture's own
        blocks (torch, only the keys each query may see) when it has them."""
        pats = getattr(self.cap, "patterns", None)
        layer = self.layers[li]
        if pats is None or layer not in pats.specs:
            return summarize(self.rows(li, h), self.n, thumb, overview)
        from ..capture._patterns import summarize_head

        s = summarize_head(pats, layer, h, thumb, overview)
        ov = s["overview"]
        return HeadSummary(
            thumb=s["thumb"].numpy(),
            overview=None if ov is None else ov.numpy(),
            previous_token=s["previous_token"],
            first_token=s["first_token"],
            entropy=s["entropy"],
        )

    def causal(self) -> bool:
        """Whether every captured layer only looks back (from its recorded mask spans)."""
        pats = getattr(self.cap, "patterns", None)
        if pats is None:
            from ._codec import is_causal

            return all(is_causal(self.cap.pattern(lay, head=0).numpy()) for lay in self.layers)
        for lay in self.layers:
            spec = pats.specs[lay]
            if spec.allowed is not None:
                if np.triu(spec.allowed.numpy(), 1).any():
                    return False
            elif (spec.span[:, 1].numpy() > np.arange(1, self.n + 1)).any():
                return False
        return True
