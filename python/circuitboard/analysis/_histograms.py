"""Per-neuron activation histograms on a power-of-two lattice, so histograms of different shards
merge exactly (bins re-cut to the union's range)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _parse_hist_range(hist_range: Any) -> tuple[float, float] | None:
    if hist_range is None:
        return None
    try:
        lo, hi = (float(v) for v in hist_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"hist_range must be (low, high) or None; got {hist_range!r}. None lets each "
            "neuron's bins follow its data."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"hist_range needs finite low < high; got {hist_range!r}.")
    return lo, hi


def histogram_edges(
    n: int, *, bins: int, hist_range: tuple[float, float] | None = None
) -> np.ndarray | None:
    """``[n, bins + 1]`` edges shared by every shard when ``hist_range`` fixes them (values
    beyond them are counted in ``hist_below`` / ``hist_above``); ``None`` otherwise: each
    histogram then follows its data on a power-of-two lattice (:func:`lattice_width`)."""
    if hist_range is None:
        return None
    lo, hi = hist_range
    return np.repeat((lo + (hi - lo) * np.linspace(0.0, 1.0, bins + 1))[None], n, axis=0)


LATTICE_MIN_EXP = -40  # narrowest bin, 2**-40: a constant neuron still gets a finite width


def lattice_width(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Per neuron, the narrowest power-of-two bin width ``w`` whose lattice cells
    ``[j w, (j + 1) w)`` from ``floor(lo / w)`` to ``floor(hi / w)`` number at most ``bins``.

    Why a lattice: a histogram of cells of width ``2^e`` becomes one of width ``2^(e+d)`` by
    adding neighbouring cells, exactly; and ``x / w`` is exact in floating point. So a
    histogram can widen as values arrive and parts over different data merge exactly, into
    what one pass over all of it gives (the width depends only on the minimum and maximum).

    >>> lattice_width(np.array([-0.3]), np.array([2.9]), 8)
    array([0.5])
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    need = np.maximum(hi - lo, 0.0) / bins
    e = np.floor(np.log2(np.maximum(need, 2.0**LATTICE_MIN_EXP)))  # a lower bound
    e = np.maximum(e - 1, LATTICE_MIN_EXP)
    while True:
        w = np.exp2(e)
        wide = np.floor(hi / w) - np.floor(lo / w) + 1 > bins  # fits at w: fits at 2w too
        if not wide.any():
            return w
        e = np.where(wide, e + 1, e)


def lattice(lo: np.ndarray, hi: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin width, index of the first cell) per neuron of the lattice holding ``[lo, hi]``."""
    w = lattice_width(lo, hi, bins)
    return w, np.floor(np.asarray(lo, np.float64) / w).astype(np.int64)


def lattice_edges(w: np.ndarray, k0: np.ndarray, bins: int) -> np.ndarray:
    """``[n, bins + 1]`` edges of the lattice cells ``k0 .. k0 + bins - 1`` of width ``w``."""
    return (k0[:, None] + np.arange(bins + 1)) * w[:, None]


def _lattice_of(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(width, index of the first cell) per neuron if ``edges`` are lattice cells, else None."""
    w = edges[:, 1] - edges[:, 0]
    k0 = edges[:, 0] / np.where(w > 0, w, 1.0)
    if not (
        (w > 0).all()
        and (np.frexp(w)[0] == 0.5).all()
        and (k0 == np.round(k0)).all()
        and np.array_equal(edges, lattice_edges(w, k0, edges.shape[1] - 1))
    ):
        return None
    return w, k0.astype(np.int64)


def rebin_lattice(
    counts: np.ndarray, w: np.ndarray, k0: np.ndarray, w_new: np.ndarray, k0_new: np.ndarray
) -> np.ndarray:
    """Counts over cells ``k0 + j`` of width ``w`` moved onto the wider (or equal) lattice
    ``w_new`` (a power-of-two multiple) from cell ``k0_new``: each cell adds into the wider
    cell that contains it."""
    n, bins = counts.shape
    ratio = np.round(w_new / w).astype(np.int64)
    cell = (k0[:, None] + np.arange(bins)) // ratio[:, None] - k0_new[:, None]  # floor division
    keep = counts > 0
    if keep.any() and ((cell[keep] < 0) | (cell[keep] >= bins)).any():
        raise AssertionError("a lattice cell fell outside the wider histogram")  # a bug
    out = np.zeros_like(counts)
    rows = np.repeat(np.arange(n), bins).reshape(n, bins)
    np.add.at(out, (rows[keep], cell[keep]), counts[keep])
    return out
