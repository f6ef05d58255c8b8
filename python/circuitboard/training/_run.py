"""`TrainingRun`: what a recorder (or a set of checkpoints) recorded, as numpy arrays."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import check_file, describe_start, not_a
from ._stats import STATS
from ._store import Store, unpack

KINDS = ("act", "grad", "param", "param_grad")


@dataclass(frozen=True)
class TrainingRun:
    """KPIs of every recorded tensor by step and category, losses, and probe results.

    Attributes
    ----------
    values : float64 ``[steps, categories, tensors, stats]``
        KPIs (:data:`STATS`); NaN where nothing was recorded (e.g. a category absent at a step).
    labels : list of str
        One per tensor, ``"kind:name"`` with kind ``act`` (a module output), ``grad`` (its
        gradient), ``param`` (a parameter at the start of the step) or ``param_grad``.
    steps, categories, stats
        The axes of ``values``.
    loss : float64 ``[steps, categories]``
        Mean loss per category (NaN where not logged).
    sample_values : float64 ``[steps, samples, categories, tensors, stats]``
        KPIs of the kept batch rows ``samples``; ``sample_loss`` ``[steps, samples, categories]``.
    probe_steps : int ``[probes]``
        Steps where the probe batch ran; ``head_scores`` maps ``"induction"``,
        ``"previous_token"``, ``"duplicate_token"`` to ``[probes, layers, heads]``;
        ``patterns`` uint8 ``[probes, batch, layers, heads, query, key]`` (``p ≈ code / 255``);
        ``probe_tokens`` ``[batch, pos]``.

    Examples
    --------
    >>> import torch
    >>> import circuitboard as cb
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 1))
    >>> rec = cb.TrainingRecorder(model, every=1)
    >>> with rec.step(0):
    ...     loss = model(torch.ones(2, 3)).pow(2).mean()
    ...     rec.loss(loss)
    ...     loss.backward()
    >>> run = rec.close()
    >>> run.labels  # doctest: +NORMALIZE_WHITESPACE
    ['act:0', 'grad:0', 'param:0.weight', 'param:0.bias', 'param_grad:0.weight',
     'param_grad:0.bias']
    >>> run.kpi("norm", "all", kind="param")[0].shape  # [steps, tensors]
    (1, 2)
    """

    values: np.ndarray
    labels: list[str]
    steps: np.ndarray
    categories: list[str]
    stats: tuple[str, ...]
    loss: np.ndarray
    samples: list[int]
    sample_values: np.ndarray
    sample_loss: np.ndarray
    probe_steps: np.ndarray
    head_scores: dict[str, np.ndarray]
    patterns: np.ndarray | None
    probe_tokens: np.ndarray | None
    trial: str = "run"
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dataflow(self) -> Any:
        """Which recorded tensors feed which (:class:`~circuitboard.training.DataFlow`), when
        :func:`~circuitboard.training.record_dataflow` stored it; else None."""
        from ._flow import META_KEY, DataFlow

        data = self.meta.get(META_KEY)
        return DataFlow.from_json(data) if data is not None else None

    # -- lookups --------------------------------------------------------------------------------

    def index(self, label: str) -> int:
        """Position of a tensor label (``"act:blocks.0.hook_resid_post"``) in ``labels``."""
        if label not in self.labels:
            import difflib

            close = difflib.get_close_matches(label, self.labels, n=5, cutoff=0.4)
            raise KeyError(
                f"no tensor {label!r} in this run; labels are 'kind:name' with kind in "
                f"{list(KINDS)}. Close: {close}."
            )
        return self.labels.index(label)

    def category(self, name: str) -> int:
        if name not in self.categories:
            raise KeyError(f"no category {name!r} in this run; it has {self.categories}.")
        return self.categories.index(name)

    def stat(self, name: str) -> int:
        if name not in self.stats:
            raise KeyError(f"no stat {name!r}; choose from {list(self.stats)}.")
        return self.stats.index(name)

    def kpi(
        self, stat: str = "norm", category: str = "all", kind: str | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """``[steps, tensors]`` of one KPI in one category (tensors of ``kind`` only if given)."""
        cols = [
            i for i, lab in enumerate(self.labels) if kind is None or lab.startswith(kind + ":")
        ]
        v = self.values[:, self.category(category), cols, self.stat(stat)]
        return v, [self.labels[i] for i in cols]

    def series(self, label: str, stat: str = "norm", category: str = "all") -> np.ndarray:
        """One KPI of one tensor across steps."""
        return self.values[:, self.category(category), self.index(label), self.stat(stat)]

    def loss_of(self, category: str = "all") -> np.ndarray:
        return self.loss[:, self.category(category)]

    def top(self, k: int = 10, stat: str = "norm", category: str = "all") -> list[dict[str, Any]]:
        """The ``k`` tensors whose KPI changed most (relative, first to last recorded value)."""
        v, labels = self.kpi(stat, category)
        rows = []
        for j, lab in enumerate(labels):
            s = v[:, j][~np.isnan(v[:, j])]
            if len(s) < 2:
                continue
            change = (s[-1] - s[0]) / (abs(s[0]) + 1e-12)
            rows.append(
                {"label": lab, "first": float(s[0]), "last": float(s[-1]), "change": float(change)}
            )
        rows.sort(key=lambda r: -abs(r["change"]))
        return rows[:k]

    def correlate(self, target: str = "loss", **kwargs: Any) -> Any:
        """Rank the KPIs by correlation with ``target``; see
        :func:`circuitboard.training.correlate`."""
        from ._correlate import correlate

        return correlate(self, target, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Copy this run's trial into a new run file (SQLite; ``cb.load_training_run`` reads it)."""
        from ._store import Store as _Store

        if not self.path:
            raise ValueError("this run has no source file to copy; record it with a path.")
        src = Store(self.path, readonly=True)
        dst = _Store(path)
        try:
            # every table the source has, in its own layout (format 1 or 2)
            for table, sql in src.rows("SELECT name, sql FROM sqlite_master WHERE type='table'"):
                rows = src.rows(f"SELECT * FROM {table} WHERE trial = ?", self.trial)
                with dst.db:
                    dst.db.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
                    if rows:
                        q = ", ".join("?" * len(rows[0]))
                        dst.db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({q})", rows)
        finally:
            src.close()
            dst.close()

    def __repr__(self) -> str:
        span = f"steps {int(self.steps[0])}..{int(self.steps[-1])}" if len(self.steps) else "empty"
        probes = (
            f", head scores at {len(self.probe_steps)} probe steps" if len(self.probe_steps) else ""
        )
        return (
            f"TrainingRun(trial={self.trial!r}, {len(self.steps)} recorded steps ({span}), "
            f"categories={self.categories}, {len(self.labels)} tensors (act/grad/param KPIs: "
            f"{', '.join(self.stats)}; std over elements, population){probes}, "
            f"source={self.meta.get('source', '?')})"
        )


def load_training_run(path: str | os.PathLike[str], trial: str | None = None) -> TrainingRun:
    """Load a run a :class:`TrainingRecorder` or :func:`from_checkpoints` wrote (no pickle).

    Parameters
    ----------
    path : the SQLite run file
    trial : which trial (default: the only one; a file with several needs a name)

    Examples
    --------
    >>> run = cb.load_training_run("runs/induction.sqlite")  # doctest: +SKIP
    """
    writer = "TrainingRecorder(model, path=path)"
    checked = check_file(path, "training run", writer)
    with open(checked, "rb") as f:
        header = f.read(100)
    if header[:16] != b"SQLite format 3\x00":
        raise not_a(checked, "training run", describe_start(checked), writer)
    declared = _declared_size(header)
    if declared is not None and os.path.getsize(checked) < declared:
        # SQLite would read such a file without complaint as long as no query reaches the
        # missing pages (an empty table's index, say)
        found = f"it is truncated: {os.path.getsize(checked)} of the {declared} bytes it declares"
        raise not_a(checked, "training run", found, writer)
    try:
        store = Store(path, readonly=True)
        try:
            trials = store.trials()
            if trial is None:
                if len(trials) != 1:
                    raise ValueError(
                        f"{str(path)!r} holds {len(trials)} trials {trials}; pass trial= to "
                        "pick one."
                    )
                trial = trials[0]
            elif trial not in trials:
                raise ValueError(f"no trial {trial!r} in {str(path)!r}; it holds {trials}.")
            return _read(store, trial, os.fspath(path))
        finally:
            store.close()
    except sqlite3.DatabaseError as e:  # truncated, damaged, or another program's database
        found = f"its database cannot be read: {e}"
        raise not_a(checked, "training run", found, writer) from None


def _declared_size(header: bytes) -> int | None:
    """The file size an SQLite header declares (page size × page count), when the count is
    valid (its version number matches the change counter; see SQLite's file format)."""
    if len(header) < 100 or header[24:28] != header[92:96]:
        return None
    page = int.from_bytes(header[16:18], "big")
    return (65536 if page == 1 else page) * int.from_bytes(header[28:32], "big")


def trials(path: str | os.PathLike[str]) -> list[str]:
    """The trial names stored in a run file."""
    store = Store(path, readonly=True)
    try:
        return store.trials()
    finally:
        store.close()


def _read(store: Store, trial: str, path: str) -> TrainingRun:
    meta = store.meta(trial)
    stats = tuple(meta.get("stats", STATS))
    kpi, skpi = store.kpi_rows(trial)
    loss = store.rows("SELECT step, category, value FROM loss WHERE trial = ?", trial)
    sloss = store.rows(
        "SELECT step, sample, category, value FROM sample_loss WHERE trial = ?", trial
    )
    steps = sorted({r[0] for r in kpi} | {r[0] for r in loss})
    cats = sorted({r[1] for r in kpi} | {r[1] for r in loss}, key=lambda c: (c != "all", c))
    order = {k: i for i, k in enumerate(KINDS)}
    names = {n: i for i, n in enumerate(meta.get("modules", []) + meta.get("params", []))}
    tensors = sorted(
        {(r[3], r[2]) for r in kpi}, key=lambda t: (order[t[0]], names.get(t[1], 1 << 30), t[1])
    )
    si = {s: i for i, s in enumerate(steps)}
    ci = {c: i for i, c in enumerate(cats)}
    ti = {t: i for i, t in enumerate(tensors)}
    keep = [STATS.index(s) for s in stats]
    values = np.full((len(steps), len(cats), len(tensors), len(STATS)), np.nan)
    for step, cat, name, kind, *v in kpi:
        values[si[step], ci[cat], ti[(kind, name)]] = np.array(v, dtype=float)
    lv = np.full((len(steps), len(cats)), np.nan)
    for step, cat, v in loss:
        lv[si[step], ci[cat]] = v
    samples = sorted({r[1] for r in skpi} | {r[1] for r in sloss})
    ni = {s: i for i, s in enumerate(samples)}
    sv = np.full((len(steps), len(samples), len(cats), len(tensors), len(STATS)), np.nan)
    for step, smp, cat, name, kind, *v in skpi:
        if (kind, name) in ti and cat in ci:
            sv[si[step], ni[smp], ci[cat], ti[(kind, name)]] = np.array(v, dtype=float)
    sl = np.full((len(steps), len(samples), len(cats)), np.nan)
    for step, smp, cat, v in sloss:
        if step in si and cat in ci:
            sl[si[step], ni[smp], ci[cat]] = v
    probe_rows = store.rows(
        "SELECT step, name, data FROM probe WHERE trial = ? ORDER BY step", trial
    )
    probe_steps = sorted({r[0] for r in probe_rows})
    scores: dict[str, list[np.ndarray]] = {}
    pats: list[np.ndarray] = []
    for _step, name, data in probe_rows:
        arrays = unpack(bytes(data))
        if name == "scores":
            for k, v in arrays.items():
                scores.setdefault(k, []).append(v)
        elif name == "patterns":
            pats.append(arrays["codes"])
    tokens = meta.get("probe_tokens")
    return TrainingRun(
        values=values[..., keep],
        labels=[f"{k}:{n}" for k, n in tensors],
        steps=np.array(steps, dtype=np.int64),
        categories=cats,
        stats=stats,
        loss=lv,
        samples=samples,
        sample_values=sv[..., keep],
        sample_loss=sl,
        probe_steps=np.array(probe_steps, dtype=np.int64),
        head_scores={k: np.stack(v) for k, v in scores.items()},
        patterns=np.stack(pats) if pats and len(pats) == len(probe_steps) else None,
        probe_tokens=np.array(tokens, dtype=np.int64) if tokens is not None else None,
        trial=trial,
        path=path,
        meta=meta,
    )
