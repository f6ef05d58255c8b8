"""Summary KPIs of a tensor, kept as mergeable sums so several forward calls add up exactly."""

from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from collections.abc import Callable
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
    tensors while the machine is busy (the training's thread count restored after). Each
    reduction is a parallel region of a few microseconds' work, and when another process
    holds the other core every region waits for it: on the 2-core machine at load ~4 a
    recorded step's activation KPIs once took 247 ms on two threads against 4-8 ms on one;
    quiet, two threads reduce a 512 kB tensor in 70 µs against 113 µs on one (measured).
    Training itself never runs inside, so its numbers do not change."""
    return _one_thread(when_busy=True) if _small(tensors) else contextlib.nullcontext()


def _small(tensors: list[torch.Tensor]) -> bool:
    return sum(t.numel() for t in tensors if t.device.type == "cpu") <= ONE_THREAD_NUMEL


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
    """Sums ``[rows, 6]`` of a 2-D float tensor (see :func:`_row_reductions`)."""
    r, c = d.shape
    if c == 0:
        return np.zeros((r, N_SUMS))
    parts = [p.to(torch.float64) for p in _row_reductions(d)]
    return _sums_from([[v] for v in torch.stack(parts).cpu().numpy()], c).T


def _row_reductions(
    d: torch.Tensor, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Five reductions of each row of ``d`` ``[rows, c]`` (this runs inside training steps,
    so every pass counts): sum, sum |x|, ‖x‖₂ (squared later, in float64), max |x| and the
    count of nonzeros, as the sum of sign |x|, which overwrites |x| in place. Seven torch
    calls: about 20-40 % less time per tensor than separate results stacked after
    (measured). |x| goes into ``scratch`` (at least ``d.numel()`` elements of its dtype and
    device) when given: one buffer reused for every tensor instead of a fresh one each."""
    if scratch is None:
        a = d.abs()
    else:
        a = torch.abs(d, out=scratch[: d.numel()].view(d.shape))
    wide = d.shape[1] > 2**24  # float32 sums of ones are exact up to 2**24 per row
    return (
        torch.sum(d, 1),
        torch.sum(a, 1),
        torch.linalg.vector_norm(d, 2, 1),
        torch.amax(a, 1),
        torch.sum(a.sign_(), 1, dtype=torch.float64 if wide else None),
    )


def _sums_from(columns: Any, widths: Any) -> np.ndarray:
    """Sums ``[6, rows]``, each statistic contiguous, from the five reductions of
    :func:`_row_reductions` (``columns``: per reduction, the arrays to join, any float
    dtype), for rows of ``widths`` elements (one count, or one per row)."""
    sums = np.empty((N_SUMS, sum(len(a) for a in columns[0])))
    sums[0] = widths
    for i, col in zip((1, 2, 3, 4, 5), columns, strict=True):
        np.concatenate(col, out=sums[i])
    np.square(sums[3], out=sums[3])  # the norm, squared in float64
    np.subtract(sums[0], sums[5], out=sums[5])  # nonzeros -> zeros
    return sums


def many_sums(tensors: list[torch.Tensor]) -> np.ndarray:
    """Sums ``[len(tensors), 6]`` of many (small) tensors such as a model's parameters."""
    return many_sums_later(tensors)()


def many_sums_later(tensors: list[torch.Tensor]) -> Callable[[], np.ndarray]:
    """:func:`many_sums` in two parts: what reads the tensors runs now, and the returned
    function (numpy only: it may run on another thread) gives the sums.

    Small CPU tensors are copied now, by one numpy concatenation of their memory, then
    reduced in float64 by five numpy segment reductions: a torch op per tensor costs ~10 µs
    of dispatch each, a ``torch.cat`` of a model's parameters 4x the numpy copy, and
    torch's segment reductions (scatter / index_add) up to 100x more on a busy
    multi-threaded CPU (all measured). Large or device tensors are reduced now, one by one
    where they live.
    """
    out = np.zeros((len(tensors), N_SUMS))
    small, views, rest = [], [], []
    for i, t in enumerate(tensors):
        n = t.numel()
        if not n:
            continue  # n = 0: every KPI is NaN
        if n <= _SMALL and t.is_cpu:
            small.append(i)
            d = t.detach() if t.dtype in _NUMPY_FLOATS else _as_float(t)
            views.append(d.reshape(-1).numpy())
        else:
            rest.append(i)
    if rest:
        with torch.no_grad(), one_thread([tensors[i] for i in rest]):
            for i in rest:
                out[i] = _pieces(_as_float(tensors[i]).reshape(1, -1))[0]
    if not small:
        return lambda: out
    copied = np.concatenate(views)  # the values now: an optimizer may change them next
    sizes = np.array([v.size for v in views])

    def finish_small() -> np.ndarray:
        x = copied.astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        a = np.abs(x)
        out[small, 0] = sizes
        out[small, 1] = np.add.reduceat(x, starts)
        out[small, 2] = np.add.reduceat(a, starts)
        out[small, 3] = np.add.reduceat(x * x, starts)
        out[small, 4] = np.maximum.reduceat(a, starts)
        out[small, 5] = np.add.reduceat(a == 0, starts, dtype=np.int64)
        return out

    return finish_small


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)  # dtypes numpy reads as they are
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


class RowSumBatch:
    """:func:`lead_sums` of the tensors of a step, converted to numpy together.

    Each added tensor is reduced at once, while it is in cache and before any in-place
    change, with |x| in one scratch buffer kept between steps (not a fresh tensor per
    recorded tensor, 512 kB each in the notebook's model). The reductions of CPU tensors are
    kept as numpy views; those of other devices are joined and copied to the host once, at
    :meth:`take`. One at a time, each tensor also paid ~150 µs of conversion to numpy and
    bookkeeping (measured on a recorded step of the notebook's model: a dozen tensors of a
    few hundred kB). A tensor added again unchanged (the same object at the same version: a
    residual add hands one gradient to two sites) is reduced once and reported under both
    tags.
    """

    def __init__(self) -> None:
        self.busy = False  # whether the machine is busy: small reductions then use one thread
        self._scratch: dict[tuple, torch.Tensor] = {}  # |x| of a tensor; see _scratch_for
        self.reset()

    def reset(self) -> None:
        """Forget what was added."""
        # per (dtype, device): the reductions of each tensor, and (width, lead shape, tags)
        self._groups: dict[tuple, tuple[list, list]] = {}
        self._recent: list[tuple[weakref.ref, int, int, list]] = []
        self._done: list[tuple[list, np.ndarray]] = []

    def add(self, x: torch.Tensor, lead: int, tag: Any) -> None:
        """Sums ``[*x.shape[:lead], 6]`` of ``x`` will be reported under ``tag`` (read
        detached: no grad-mode switch needed, and this runs a dozen times per step)."""
        for ref, version, ld, tags in self._recent:
            if ref() is x and version == x._version and ld == lead:
                tags.append(tag)
                return
        tags = [tag]
        # a weak reference: holding the tensor would keep a gradient alive past its use
        self._recent.insert(0, (weakref.ref(x), x._version, lead, tags))
        del self._recent[2:]
        shape = tuple(x.shape[:lead])
        rows = math.prod(shape)
        width = x.numel() // rows if rows else 0
        if not width or width > 2**24:
            with one_thread([x]):
                self._done.append((tags, lead_sums(x.detach(), lead)))
            return
        d = _as_float(x).reshape(rows, width)
        threads = torch.get_num_threads()
        single = self.busy and threads > 1 and _small([d])  # see one_thread; decided per step
        if single:
            torch.set_num_threads(1)
        try:
            parts = _row_reductions(d, self._scratch_for(d))
        finally:
            if single:
                torch.set_num_threads(threads)
        if d.device.type == "cpu":
            parts = tuple(p.numpy() for p in parts)  # fresh results: nothing writes them
        reductions, items = self._groups.setdefault((d.dtype, d.device), ([], []))
        reductions.append(parts)
        items.append((width, shape, tags))

    def _scratch_for(self, d: torch.Tensor) -> torch.Tensor:
        """A buffer for |d|: kept from step to step for small CPU tensors, dropped at the end
        of the step otherwise (a large device buffer is not held between steps)."""
        key = (d.dtype, d.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < d.numel():
            buf = self._scratch[key] = torch.empty(d.numel(), dtype=d.dtype, device=d.device)
        return buf

    def take(self) -> Callable[[], list[tuple[list, np.ndarray]]]:
        """What was added since the last call; the returned function (numpy only: it may
        run on another thread) gives ``(tags of each tensor, sums [6, tensors, *lead
        shape])`` per run of tensors added one after another with the same lead shape (each
        statistic contiguous: what follows reduces them one statistic at a time)."""
        groups = []
        for reductions, items in self._groups.values():
            columns = list(zip(*reductions, strict=True))
            if not isinstance(columns[0][0], np.ndarray):  # one copy to the host per device
                host = torch.stack([torch.cat(c) for c in columns]).to(torch.float64).cpu()
                columns = [[v] for v in host.numpy()]
            groups.append((columns, items))
        done = self._done
        self.reset()
        self._scratch = {k: b for k, b in self._scratch.items() if _small([b])}

        def results() -> list[tuple[list, np.ndarray]]:
            out = [([tags], np.moveaxis(per, -1, 0)[:, None]) for tags, per in done]
            for columns, items in groups:
                rows = [math.prod(s) for _, s, _ in items]
                sums = _sums_from(columns, np.repeat([w for w, _, _ in items], rows))
                start = 0
                for shape, run in itertools.groupby(items, key=lambda item: item[1]):
                    tags = [t for _, _, t in run]
                    stop = start + len(tags) * math.prod(shape)
                    out.append((tags, sums[:, start:stop].reshape(N_SUMS, len(tags), *shape)))
                    start = stop
            return out

        return results


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
