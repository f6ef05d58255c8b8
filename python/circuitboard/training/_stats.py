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

    Computed in float64 so that merged sums equal one pass over the joined tensor.

    >>> s = sums(torch.tensor([3.0, -4.0, 0.0]))
    >>> dict(zip(STATS, finish(s).round(4).tolist()))["norm"]
    5.0
    """
    x = x.detach()
    if x.numel() == 0:
        return np.zeros(N_SUMS)
    d = x.to(torch.float64)
    a = d.abs()
    return np.array(
        [
            float(d.numel()),
            float(d.sum()),
            float(a.sum()),
            float((d * d).sum()),
            float(a.max()),
            float((d == 0).sum()),
        ]
    )


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
