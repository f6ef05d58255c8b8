"""Rank recorded KPIs by how strongly they move with a target series, and at which lag."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, stamp
from .._npz import save_npz


@dataclass(frozen=True)
class KpiCorrelation:
    """Pearson correlation of each KPI series with a target, at the lag where it is largest.

    ``values[i]`` is the correlation of ``labels[i]`` (``"kind:name/stat"``) with the target;
    ``lags[i]`` is in recorded steps: a positive lag means the KPI moves *first* (the KPI at
    step ``t`` matches the target at ``t + lag``). ``n[i]`` is the number of points used.

    Examples
    --------
    >>> import numpy as np
    >>> c = KpiCorrelation(np.array([0.2, -0.9]), np.array([0, 2]), np.array([9, 7]),
    ...                    ["act:a/norm", "act:b/mean"], "loss", "all", "steps", 3)
    >>> c.top(1)
    [{'label': 'act:b/mean', 'r': -0.9, 'lag': 2, 'n': 7}]
    """

    values: np.ndarray
    lags: np.ndarray
    n: np.ndarray
    labels: list[str]
    target: str
    category: str
    by: str
    max_lag: int

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` KPIs with the largest ``|r|``."""
        order = np.argsort(-np.nan_to_num(np.abs(self.values), nan=-1.0), kind="stable")[:k]
        return [
            {
                "label": self.labels[i],
                "r": float(self.values[i]),
                "lag": int(self.lags[i]),
                "n": int(self.n[i]),
            }
            for i in order
            if not np.isnan(self.values[i])
        ]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` (arrays, JSON header; read back with :func:`load_kpi_correlation`)."""
        head = {k: getattr(self, k) for k in ("labels", "target", "category", "by", "max_lag")}
        save_npz(
            path,
            {
                "values": self.values,
                "lags": self.lags,
                "n": self.n,
                "header": np.frombuffer(json.dumps(head).encode(), dtype=np.uint8),
                **stamp("KPI correlation"),
            },
        )

    def __repr__(self) -> str:
        best = self.top(1)
        b = f"; best {best[0]['label']} r={best[0]['r']:+.3f} lag={best[0]['lag']}" if best else ""
        return (
            f"KpiCorrelation(target={self.target!r}, category={self.category!r}, by={self.by!r}, "
            f"Pearson r at the lag in [-{self.max_lag}, {self.max_lag}] recorded steps with the "
            f"largest |r|, {len(self.labels)} KPIs{b})"
        )


def load_kpi_correlation(path: str | os.PathLike[str]) -> KpiCorrelation:
    """Load a :class:`KpiCorrelation` written by its ``save`` (no pickle).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> c = KpiCorrelation(np.array([0.5]), np.array([1]), np.array([8]), ["act:a/norm"],
    ...                    "loss", "all", "steps", 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "corr.npz")
    >>> c.save(path)
    >>> load_kpi_correlation(path).top(1)
    [{'label': 'act:a/norm', 'r': 0.5, 'lag': 1, 'n': 8}]
    """
    writer = "KpiCorrelation.save(path)"
    z = read_npz(path, "KPI correlation", writer, required=("header", "values", "lags", "n"))
    head = json_array(z, "header", path, "KPI correlation", writer)
    with decoding(path, "KPI correlation", writer):
        return KpiCorrelation(values=z["values"], lags=z["lags"], n=z["n"], **head)


def _pearson(a: np.ndarray, b: np.ndarray, min_n: int) -> tuple[float, int]:
    ok = ~(np.isnan(a) | np.isnan(b))
    n = int(ok.sum())
    if n < min_n:
        return float("nan"), n
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return (float((a * b).sum() / den) if den > 0 else float("nan")), n


def correlate(
    run: Any,
    target: str = "loss",
    *,
    category: str = "all",
    by: str = "steps",
    max_lag: int = 5,
    stats: tuple[str, ...] | None = None,
    min_points: int = 4,
) -> KpiCorrelation:
    """Rank every recorded KPI series by its correlation with ``target``.

    Parameters
    ----------
    run : TrainingRun
    target : ``"loss"`` (the category's loss) or a KPI ``"kind:name/stat"``
        (e.g. ``"act:blocks.0.hook_resid_post/norm"``).
    category : the category whose series are compared
    by : ``"steps"`` (series across recorded steps, with lags) or ``"samples"`` (per-sample
        values of the kept samples, pooled over steps, lag 0)
    max_lag : largest lag tried, in recorded steps, both ways
    stats : KPIs to rank (default all)
    min_points : fewest overlapping points for a correlation (else NaN)

    Examples
    --------
    >>> corr = run.correlate("loss", max_lag=3)  # doctest: +SKIP
    >>> corr.top(3)  # doctest: +SKIP
    [{'label': 'act:blocks.0.hook_resid_post/norm', 'r': 0.97, 'lag': 2, 'n': 37}, ...]
    """
    if by not in ("steps", "samples"):
        raise ValueError(f"by must be 'steps' or 'samples'; got {by!r}.")
    c = run.category(category)
    stats = tuple(stats) if stats is not None else run.stats
    if by == "steps":
        series, flat = run.values[:, c], run.loss[:, c]
    else:
        S, N = run.sample_values.shape[:2]
        series = run.sample_values[:, :, c].reshape(S * N, *run.sample_values.shape[3:])
        flat = run.sample_loss[:, :, c].reshape(S * N)
        max_lag = 0
    if target != "loss":
        if "/" not in target:
            raise ValueError(
                f"target must be 'loss' or 'kind:name/stat' (e.g. "
                f"'act:blocks.0.hook_resid_post/norm'); got {target!r}."
            )
        label, stat = target.rsplit("/", 1)
        flat = series[:, run.index(label), run.stat(stat)]
    if np.all(np.isnan(flat)):
        raise ValueError(
            f"the target {target!r} has no recorded values in category {category!r}"
            + (
                " per sample; log per-sample losses with rec.loss(losses[batch])"
                if by == "samples"
                else "; log it with rec.loss(...) inside each step"
            )
            + "."
        )
    labels, rs, lags, ns = [], [], [], []
    for j, lab in enumerate(run.labels):
        for stat in stats:
            x = series[:, j, run.stat(stat)]
            name = f"{lab}/{stat}"
            if name == target:
                continue
            best = (float("nan"), 0, 0)
            for lag in range(-max_lag, max_lag + 1):
                # KPI at t against target at t + lag
                a = x[: len(x) - lag] if lag >= 0 else x[-lag:]
                b = flat[lag:] if lag >= 0 else flat[: len(flat) + lag]
                r, n = _pearson(a, b, min_points)
                if not np.isnan(r) and (np.isnan(best[0]) or abs(r) > abs(best[0]) + 1e-12):
                    best = (r, lag, n)
            labels.append(name)
            rs.append(best[0])
            lags.append(best[1])
            ns.append(best[2])
    return KpiCorrelation(
        values=np.array(rs),
        lags=np.array(lags, dtype=np.int64),
        n=np.array(ns, dtype=np.int64),
        labels=labels,
        target=target,
        category=category,
        by=by,
        max_lag=max_lag,
    )
