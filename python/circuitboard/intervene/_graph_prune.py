"""Influence, pruning and scores of an attribution graph, on sparse edge lists (numpy only).

Edges are ``(src, dst, weight)`` arrays: ``weight`` is the direct effect of node ``src`` on node
``dst``. Influence follows circuit-tracer's definition: rows of ``|A|`` normalized to sum 1, the
logit weights pushed back through every power of that matrix (the graph is acyclic, so the
series ends after at most depth-many steps).
"""

from __future__ import annotations

import numpy as np


def normalized(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``|w| / sum of |w| into the same target`` per edge."""
    a = np.abs(weight).astype(np.float64)
    total = np.bincount(dst, weights=a, minlength=n)
    return a / np.maximum(total[dst], 1e-10)


def influence(
    n: int, src: np.ndarray, dst: np.ndarray, a: np.ndarray, logit_weights: np.ndarray
) -> np.ndarray:
    """``w A + w A^2 + ...`` for normalized edges ``a`` (no cycles: ends when nothing is left)."""
    cur = np.asarray(logit_weights, np.float64)
    total = np.zeros(n)
    for _ in range(n + 1):
        cur = np.bincount(src, weights=cur[dst] * a, minlength=n)
        if not cur.any():
            break
        total += cur
    return total


def threshold_of(scores: np.ndarray, keep: float) -> float:
    """The smallest score among the top scores that hold a ``keep`` share of the total."""
    if scores.size == 0:
        return np.inf
    s = np.sort(scores)[::-1]
    total = s.sum()
    if total <= 0:
        return np.inf
    i = int(np.searchsorted(np.cumsum(s) / total, keep))
    return float(s[min(i, len(s) - 1)])


def prune(
    kind: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    logit_weights: np.ndarray,
    node_threshold: float,
    edge_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(node_mask, edge_mask, node_influence)`` keeping ``node_threshold`` of node influence
    and ``edge_threshold`` of edge influence. Token (kind 0) and logit (kind 3) nodes are always
    kept; basis and error nodes left without outgoing edges, and basis nodes without incoming
    ones, are removed until nothing changes."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {v}. 0.8 / 0.98 are the defaults.")
    n = len(kind)
    a = normalized(n, src, dst, weight)
    infl = influence(n, src, dst, a, logit_weights)
    always = (kind == 0) | (kind == 3)
    node_mask = (infl >= threshold_of(infl, node_threshold)) | always
    alive = node_mask[src] & node_mask[dst]
    a2 = normalized(n, src[alive], dst[alive], weight[alive])
    infl2 = influence(n, src[alive], dst[alive], a2, logit_weights) + logit_weights
    scores = np.zeros(len(src))
    scores[alive] = a2 * infl2[dst[alive]]
    edge_mask = alive & (scores >= threshold_of(scores[alive], edge_threshold)) & (scores > 0)
    inner = (kind == 1) | (kind == 2)
    while True:
        has_out = np.bincount(src[edge_mask], minlength=n) > 0
        has_in = np.bincount(dst[edge_mask], minlength=n) > 0
        new = node_mask & ~(inner & ~has_out) & ~((kind == 1) & ~has_in)
        if (new == node_mask).all():
            break
        node_mask = new
        edge_mask &= node_mask[src] & node_mask[dst]
    return node_mask, edge_mask, infl


def scores(
    kind: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    logit_weights: np.ndarray,
) -> tuple[float, float]:
    """circuit-tracer's ``(replacement score, completeness score)`` of the unpruned graph:
    the share of token-to-logit influence not routed through error nodes, and the
    influence-weighted share of each node's input that does not come from error nodes."""
    n = len(kind)
    a = normalized(n, src, dst, weight)
    infl = influence(n, src, dst, a, logit_weights)
    tok, err = infl[kind == 0].sum(), infl[kind == 2].sum()
    replacement = float(tok / (tok + err)) if tok + err > 0 else 1.0
    err_share = np.bincount(dst, weights=a * (kind[src] == 2), minlength=n)
    out = infl + logit_weights
    completeness = float(((1 - err_share) * out).sum() / out.sum()) if out.sum() > 0 else 1.0
    return replacement, completeness
