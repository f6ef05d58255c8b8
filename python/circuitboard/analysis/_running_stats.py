"""Running moments (count, mean, M2; Welford / Chan) that merge exactly, and effect sizes between
two of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MEASURES = ("d", "t", "diff")


# -- running moments ---------------------------------------------------------------------------
@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of samples of an array, mergeable.

    ``update`` adds a batch of samples (first axis); ``merge`` combines two shards exactly
    (Chan et al.), in any order, so ``var`` equals numpy's on all samples together.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(10.0).reshape(5, 2)
    >>> a = RunningStats.of(x[:2]).merge(RunningStats.of(x[2:]))
    >>> a.count, a.mean.tolist(), np.allclose(a.var(), x.var(0, ddof=1))
    (5, [4.0, 5.0], True)
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: Sequence[int]) -> RunningStats:
        """No samples yet, for arrays of ``shape``."""
        return cls(0, np.zeros(tuple(shape)), np.zeros(tuple(shape)))

    @classmethod
    def of(cls, samples: Any) -> RunningStats:
        """Statistics of ``samples`` ``[n, *shape]`` (float64 internally)."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"samples must be [n, ...] with n >= 1; got shape {tuple(x.shape)}.")
        mean = x.mean(0)
        return cls(int(x.shape[0]), mean, ((x - mean) ** 2).sum(0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def merge(self, other: RunningStats) -> RunningStats:
        """The statistics of both shards' samples together (a new object)."""
        if self.shape != other.shape:
            raise ValueError(
                f"cannot merge statistics of shape {self.shape} with {other.shape}; "
                "merge shards of the same model, layers and statistic."
            )
        if other.count == 0:
            return RunningStats(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningStats(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    def update(self, samples: Any) -> RunningStats:
        """Add samples ``[n, *shape]`` in place; returns ``self``."""
        merged = self.merge(RunningStats.of(samples))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self

    def var(self, ddof: int = 1) -> np.ndarray:
        """Variance (``ddof=1``: sample variance; NaN with fewer than ``ddof + 1`` samples)."""
        if self.count - ddof <= 0:
            return np.full(self.shape, np.nan)
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> np.ndarray:
        """Standard deviation, see :meth:`var`."""
        return np.sqrt(self.var(ddof))


@dataclass(frozen=True)
class Effect:
    """The difference between two categories for every component of one statistic.

    ``diff = mean_a - mean_b``; ``d`` is Cohen's d (``diff`` over the pooled standard
    deviation); ``t`` is Welch's t statistic (``diff / sqrt(var_a/n_a + var_b/n_b)``). Where
    both categories are constant, ``d`` and ``t`` are 0 for equal means and ±inf otherwise.
    """

    stat: str
    a: str
    b: str
    mean_a: np.ndarray
    mean_b: np.ndarray
    std_a: np.ndarray
    std_b: np.ndarray
    n_a: int
    n_b: int
    diff: np.ndarray
    d: np.ndarray
    t: np.ndarray

    def measure(self, by: str) -> np.ndarray:
        """``d``, ``t`` or ``diff`` by name."""
        if by not in MEASURES:
            raise ValueError(f"by={by!r} is not a measure; use one of {list(MEASURES)}.")
        return getattr(self, by)


def effect_size(a: RunningStats, b: RunningStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(diff, d, t)`` between two sets of running statistics (see :class:`Effect`).

    >>> a = RunningStats.of([[1.0], [3.0]]); b = RunningStats.of([[0.0], [2.0]])
    >>> [round(float(v[0]), 4) for v in effect_size(a, b)]
    [1.0, 0.7071, 0.7071]
    """
    if a.count < 2 or b.count < 2:
        raise ValueError(
            f"effect sizes need at least 2 samples per category; got {a.count} and {b.count}. "
            "Add prompts to the smaller category (or use pos='all' to count every token)."
        )
    diff = a.mean - b.mean
    pooled = np.sqrt((a.m2 + b.m2) / (a.count + b.count - 2))
    se = np.sqrt(a.var() / a.count + b.var() / b.count)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1), _degenerate(diff))
        t = np.where(se > 0, diff / np.where(se > 0, se, 1), _degenerate(diff))
    return diff, d, t


def _degenerate(diff: np.ndarray) -> np.ndarray:
    return np.where(diff == 0, 0.0, np.sign(diff) * np.inf)
