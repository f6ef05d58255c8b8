"""Summary KPIs of a tensor, kept as mergeable sums so several forward calls add up exactly."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from .._threads import one_thread as _one_thread

STATS = ("mean", "mean_abs", "std", "max_abs", "frac_zero", "norm")
"""The KPI names, in the order of every ``stats`` axis."""

# Sufficient statistics: count, sum, sum |x|, sum x², max |x|, count of zeros (float64).
N_SUMS = 6

# Elements (in all) below which the recorder's reductions run on one torch thread.
ONE_THREAD_NUMEL = 1 << 22


def one_thread(tensors: list[torch.Tensor]) -> contextlib.AbstractContextManager[None]:
    """The project's :func:`~circuitboard._threads.one_thread` for reductions of small CPU
    tensors (the training's thread count restored after). Each reduction is a parallel region
    of a few microseconds' work, and when another process holds the other core every region
    waits for it: on the 2-core machine at load ~4 a recorded step's activation KPIs once took
    247 ms on two threads against 4-8 ms on one (measured; quiet, the two are within noise).
    Training itself never runs inside, so its numbers do not change."""
    small = sum(t.numel() for t in tensors if t.device.type == "cpu") <= ONE_THREAD_NUMEL
    return _one_thread() if small else contextlib.nullcontext()


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
    if mask is not None:
        t = mask.shape[1]
        keep = mask.to(d.device).reshape(r, t, 1).expand(r, t, d.shape[1] // t).reshape(r, -1)
        n = keep.sum(1, dtype=torch.float64)
        # masked-out elements become exact zeros (they add nothing); count them out again
        out = _pieces(d * keep)
        out[:, 5] -= d.shape[1] - n.cpu().numpy()
        out[:, 0] = n.cpu().numpy()
        return out
    return _pieces(d)


def _pieces(d: torch.Tensor) -> np.ndarray:
    """Sums ``[rows, 6]`` of a 2-D float tensor in five reductions (this runs inside training
    steps, so every pass counts): sum, sum |x|, ‖x‖₂ (squared after, in float64), max |x| and
    the count of nonzeros (the sum of sign |x|). They write straight into one ``[5, rows]``
    buffer (no stack), and sign |x| overwrites |x| in place: 20-40 % less time per tensor
    than separate results stacked after (measured), the same values."""
    r, c = d.shape
    if c == 0:
        return np.zeros((r, N_SUMS))
    a = d.abs()
    out = torch.empty((5, r), dtype=d.dtype, device=d.device)
    torch.sum(d, 1, out=out[0])
    torch.sum(a, 1, out=out[1])
    torch.linalg.vector_norm(d, 2, 1, out=out[2])
    torch.amax(a, 1, out=out[3])
    a.sign_()  # a is ours: sign |x| overwrites it
    # float32 sums of ones are exact up to 2**24 per row; longer rows count in float64
    nonzero = a.sum(1, dtype=torch.float64) if c > 2**24 else torch.sum(a, 1, out=out[4])
    v = out.to(torch.float64).cpu().numpy()
    res = np.empty((r, N_SUMS))
    res[:, 0] = c
    res[:, 1:3] = v[:2].T
    res[:, 3] = v[2] * v[2]
    res[:, 4] = v[3]
    res[:, 5] = c - (v[4] if c <= 2**24 else nonzero.cpu().numpy())
    return res


@torch.no_grad()
def many_sums(tensors: list[torch.Tensor]) -> np.ndarray:
    """Sums ``[len(tensors), 6]`` of many (small) tensors such as a model's parameters.

    Small CPU tensors go through numpy in one concatenation (float64) and five segment
    reductions: a torch op per tensor costs ~10 µs of dispatch each, and torch's segment
    reductions (scatter / index_add) cost up to 100x more on a busy multi-threaded CPU
    (measured). Large or device tensors are reduced one by one where they live.
    """
    out = np.zeros((len(tensors), N_SUMS))
    small, rest = [], []
    for i, t in enumerate(tensors):
        if not t.numel():
            continue  # n = 0: every KPI is NaN
        (small if t.device.type == "cpu" and t.numel() <= _SMALL else rest).append(i)
    if small:
        flat = [_as_float(tensors[i]).reshape(-1).numpy() for i in small]
        x = np.concatenate(flat, dtype=np.float64)
        sizes = np.array([f.size for f in flat])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        a = np.abs(x)
        out[small, 0] = sizes
        out[small, 1] = np.add.reduceat(x, starts)
        out[small, 2] = np.add.reduceat(a, starts)
        out[small, 3] = np.add.reduceat(x * x, starts)
        out[small, 4] = np.maximum.reduceat(a, starts)
        out[small, 5] = np.add.reduceat(a == 0, starts, dtype=np.int64)
    for i in rest:
        out[i] = _pieces(_as_float(tensors[i]).reshape(1, -1))[0]
    return out


_SMALL = 1 << 16  # elements: below this, numpy's per-call cost beats torch's


def _as_float(t: torch.Tensor) -> torch.Tensor:
    d = t.detach()
    return d if d.dtype in (torch.float32, torch.float64) else d.to(torch.float32)


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
