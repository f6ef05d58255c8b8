"""Summary KPIs of a tensor, kept as mergeable sums so several forward calls add up exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

STATS = ("mean", "mean_abs", "std", "max_abs", "frac_zero", "norm")
"""The KPI names, in the order of every ``stats`` axis."""

# Sufficient statistics: count, sum, sum |x|, sum x², max |x|, count of zeros (float64).
N_SUMS = 6


@torch.no_grad()
def sums(x: torch.Tensor) -> np.ndarray:
    """The ``[6]`` float64 sums of ``x`` from which :func:`finish` gives the KPIs.

    Each piece is reduced in the tensor's dtype (float32: ~1e-7 relative rounding); the
    pieces of one step are merged in float64.

    >>> s = sums(torch.tensor([3.0, -4.0, 0.0]))
    >>> dict(zip(STATS, finish(s).round(4).tolist()))["norm"]
    5.0
    """
    return row_sums(x.reshape(1, -1))[0]


@torch.no_grad()
def row_sums(x: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """Sums ``[rows, 6]`` of each row of ``x`` ``[rows, ...]``, over the positions where
    ``mask`` ``[rows, pos]`` is True (``x`` then ``[rows, pos, ...]``), in one device sync."""
    r = x.shape[0]
    d = x.detach().reshape(r, -1)
    if d.dtype not in (torch.float32, torch.float64):
        d = d.to(torch.float32)  # half precision would round the sums themselves
    f64 = torch.float64
    if mask is None:
        keep = None
        n = torch.full((r,), float(d.shape[1]), dtype=f64, device=d.device)
    else:
        t = mask.shape[1]
        keep = mask.to(d.device).reshape(r, t, 1).expand(r, t, d.shape[1] // t).reshape(r, -1)
        d = d * keep
        n = keep.sum(1, dtype=f64)
    if d.shape[1] == 0:
        return np.zeros((r, N_SUMS))
    # elementwise work in the tensor's dtype (float32 sums are pairwise: ~1e-7 relative);
    # the pieces of one step are merged in float64
    a = d.abs()
    sq = torch.dot(d[0], d[0])[None] if r == 1 else (d * d).sum(1)
    zero = d == 0
    if keep is not None:
        zero &= keep
    out = torch.stack([d.sum(1), a.sum(1), sq, a.amax(1)], 1).to(f64)
    out = torch.cat([n[:, None], out, zero.sum(1, dtype=f64)[:, None]], 1)
    return out.cpu().numpy()


@torch.no_grad()
def many_sums(tensors: list[torch.Tensor]) -> np.ndarray:
    """Sums ``[len(tensors), 6]`` of many (small) tensors in a handful of vectorized passes:
    parameters are many and small, so one call each would cost more in overhead than work."""
    if not tensors:
        return np.zeros((0, N_SUMS))
    flat = [t.detach().reshape(-1).to(torch.float32) for t in tensors]
    x = torch.cat(flat)
    sizes = torch.tensor([f.numel() for f in flat], device=x.device)
    seg = torch.repeat_interleave(torch.arange(len(flat), device=x.device), sizes)
    n = len(flat)
    a = x.abs()

    def seg_sum(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, seg, v.double())

    amax = torch.zeros(n, device=x.device).scatter_reduce(0, seg, a, "amax", include_self=True)
    out = torch.stack(
        [
            sizes.double(),
            seg_sum(x),
            seg_sum(a),
            seg_sum(x * x),
            amax.double(),
            seg_sum((x == 0).float()),
        ],
        1,
    )
    return out.cpu().numpy()


@torch.no_grad()
def lead_sums(x: torch.Tensor, lead: int) -> np.ndarray:
    """Sums ``[*x.shape[:lead], 6]`` over the trailing dimensions of ``x``: one pass over the
    tensor, after which any category or sample is a cheap :func:`reduce` of these rows."""
    shape = tuple(x.shape[:lead])
    flat = x.reshape(int(np.prod(shape)) if shape else 1, -1)
    return row_sums(flat).reshape(*shape, N_SUMS)


def reduce(rows: np.ndarray) -> np.ndarray:
    """Sums ``[6]`` of the union of pieces ``[..., 6]`` (zeros when there are none)."""
    rows = rows.reshape(-1, N_SUMS)
    if not len(rows):
        return np.zeros(N_SUMS)
    out = rows.sum(0)
    out[4] = rows[:, 4].max()
    return out


def merge(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """Sums of two disjoint pieces of one tensor."""
    if a is None:
        return b.copy()
    out = a[..., :] + b
    out[..., 4] = np.maximum(a[..., 4], b[..., 4])
    return out


def finish(s: np.ndarray) -> np.ndarray:
    """KPIs ``[..., len(STATS)]`` (see :data:`STATS`) from sums ``[..., 6]``; NaN where empty.

    ``std`` is the population standard deviation (divides by n); ``norm`` is the L2 norm of all
    the elements; ``frac_zero`` counts exact zeros.
    """
    s = np.asarray(s, dtype=np.float64)
    n = s[..., 0]
    s = np.where(n[..., None] == 0, np.nan, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s[..., 1] / n
        var = np.maximum(s[..., 3] / n - mean * mean, 0.0)
        out = np.stack(
            [mean, s[..., 2] / n, np.sqrt(var), s[..., 4], s[..., 5] / n, np.sqrt(s[..., 3])],
            axis=-1,
        )
    out[n == 0] = np.nan
    return out


def brute_force(x: Any) -> np.ndarray:
    """The KPIs of ``x`` computed directly in numpy (a reference for tests and docs).

    >>> brute_force(np.array([3.0, -4.0, 0.0])).round(4).tolist()
    [-0.3333, 2.3333, 2.8674, 4.0, 0.3333, 5.0]
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    return np.array(
        [a.mean(), np.abs(a).mean(), a.std(), np.abs(a).max(), np.mean(a == 0), np.linalg.norm(a)]
    )
