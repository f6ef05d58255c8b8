"""The append-only SQLite file a training run is written to (never pickled).

One file holds any number of trials. Every recorded step is one transaction, so a run that
crashes keeps every step it finished, and a recorder opened on the same file and trial later
continues it (a step recorded again replaces the old rows).

Commits go to SQLite's write-ahead log; copying the log into the database file (a
checkpoint, with its fsync) runs on a thread of its own instead of inside
whichever commit crosses SQLite's threshold: inline, that commit stalled its training step by
~9 ms every ~30 recorded steps and once by 280 ms (measured). The log file is reused in
place after a checkpoint, never truncated (truncating it made the next commit the slow one).
A crash loses nothing either way: a later connection replays the log.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._stats import STATS

FORMAT_VERSION = 2  # 1 kept a row per KPI; 2 keeps one per step (read both)

# Log bytes after which a commit asks for a checkpoint: SQLite's own default (1,000 pages).
CHECKPOINT_BYTES = 4 << 20

# A step's KPIs are one row: the ids of their keys (int32) and their values ([keys, STATS]
# float64, NaN for a stat not kept) as two blobs; each key (sample or NULL, category, tensor,
# kind) is stored once per trial in kpi_key. A row per KPI (format 1) made the write ~1 ms of
# a recorded step's CPU time for the notebook's model (measured: 288 rows); one row, ~0.1 ms.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (trial TEXT, key TEXT, value TEXT, PRIMARY KEY (trial, key));
CREATE TABLE IF NOT EXISTS kpi_key (
    trial TEXT, id INTEGER, sample INTEGER, category TEXT, tensor TEXT, kind TEXT,
    PRIMARY KEY (trial, id));
CREATE TABLE IF NOT EXISTS kpi_step (
    trial TEXT, step INTEGER, ids BLOB, kpis BLOB, PRIMARY KEY (trial, step));
CREATE TABLE IF NOT EXISTS loss (
    trial TEXT, step INTEGER, category TEXT, value REAL, PRIMARY KEY (trial, step, category));
CREATE TABLE IF NOT EXISTS sample_loss (
    trial TEXT, step INTEGER, sample INTEGER, category TEXT, value REAL,
    PRIMARY KEY (trial, step, sample, category));
CREATE TABLE IF NOT EXISTS probe (
    trial TEXT, step INTEGER, name TEXT, data BLOB, PRIMARY KEY (trial, step, name));
"""


def pack(arrays: dict[str, np.ndarray], *, compress: bool = True) -> bytes:
    """``.npz`` bytes of ``arrays`` (read back with :func:`unpack`, no pickle); stored without
    compression when ``compress`` is False (a recorder's probe patterns while it trains:
    :meth:`Store.compress_probes` deflates them when it closes)."""
    buf = io.BytesIO()
    # deflate level 1, not savez_compressed's 6: a probe step's patterns pack 3.4x faster
    # for 9 % more bytes (measured)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method, compresslevel=1) as z:
        for name, value in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Store:
    """One connection to a run file; each step's rows are written in one transaction by
    :meth:`write_step`."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._checkpointer: _Checkpointer | None = None
        self._commits = 0  # write_step commits since the last checkpoint was asked for
        self._every: int | None = None  # ... and how many fill CHECKPOINT_BYTES of log
        self._lock = threading.Lock()
        self._key_ids: dict[str, dict[tuple, int]] = {}  # per trial: KPI key -> id
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"no training run at {str(self.path)!r}; pass the path a TrainingRecorder "
                    "wrote (its path= argument)."
                )
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # a recorder writes from its background thread, others (set_meta) from theirs:
            # the lock keeps each one's transaction whole
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            # WAL: a committed step survives a crash of the process; no fsync per step
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # no checkpoint inside a commit (see _checkpoint_soon)
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self.db.executescript(_SCHEMA)
            self.db.commit()
            self._log0 = self._log_bytes()

    def set_meta(self, trial: str, meta: dict[str, Any]) -> None:
        with self._lock, self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                [(trial, k, json.dumps(v)) for k, v in meta.items()],
            )

    def meta(self, trial: str) -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM meta WHERE trial = ?", (trial,))
        return {k: json.loads(v) for k, v in rows}

    def trials(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT trial FROM meta ORDER BY rowid")]

    def write_step(
        self,
        trial: str,
        step: int,
        keys: list[tuple],
        kpis: np.ndarray,
        losses: list[tuple[str, float]],
        sample_losses: list[tuple[int, str, float]],
        probes: list[tuple[str, bytes]],
    ) -> None:
        """Everything of one step in one transaction (replacing a step recorded before).

        ``keys`` are ``(sample or None, category, tensor, kind)``, ``kpis`` their values
        ``[len(keys), len(STATS)]`` (NaN: not kept)."""
        with self._lock, self.db:
            ids = self._ids(trial, keys)
            self.db.execute(
                "INSERT OR REPLACE INTO kpi_step VALUES (?, ?, ?, ?)",
                (trial, step, ids.tobytes(), np.ascontiguousarray(kpis, "<f8").tobytes()),
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO loss VALUES (?, ?, ?, ?)",
                [(trial, step, c, float(v)) for c, v in losses],
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO sample_loss VALUES (?, ?, ?, ?, ?)",
                [(trial, step, i, c, float(v)) for i, c, v in sample_losses],
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO probe VALUES (?, ?, ?, ?)",
                [(trial, step, n, sqlite3.Binary(d)) for n, d in probes],
            )
        self._checkpoint_soon()

    def _ids(self, trial: str, keys: list[tuple]) -> np.ndarray:
        """int32 ids of ``keys`` in ``trial``, storing the new ones (inside the caller's
        transaction)."""
        known = self._key_ids.get(trial, {})
        if any(k not in known for k in keys):  # reread: another recorder may have added some
            rows = self.db.execute(
                "SELECT id, sample, category, tensor, kind FROM kpi_key WHERE trial = ?", (trial,)
            )
            known = self._key_ids[trial] = {tuple(r[1:]): r[0] for r in rows}
            new = [k for k in dict.fromkeys(keys) if k not in known]
            first = max(known.values(), default=-1) + 1
            rows = [(trial, first + i, *k) for i, k in enumerate(new)]
            self.db.executemany("INSERT INTO kpi_key VALUES (?, ?, ?, ?, ?, ?)", rows)
            known.update((k, first + i) for i, k in enumerate(new))
        return np.array([known[k] for k in keys], dtype="<i4")

    def kpi_rows(self, trial: str) -> tuple[list[tuple], list[tuple]]:
        """A trial's KPIs as rows ``(step, category, tensor, kind, *stats)`` and kept
        samples' as ``(step, sample, category, tensor, kind, *stats)``, from either format."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        kpi: list[tuple] = []
        samples: list[tuple] = []
        if "kpi_step" in tables:
            keys = {
                r[0]: r[1:]
                for r in self.db.execute(
                    "SELECT id, sample, category, tensor, kind FROM kpi_key WHERE trial = ?",
                    (trial,),
                )
            }
            for step, ids, values in self.db.execute(
                "SELECT step, ids, kpis FROM kpi_step WHERE trial = ?", (trial,)
            ):
                v = np.frombuffer(values, "<f8").reshape(-1, len(STATS)).tolist()
                for i, row in zip(np.frombuffer(ids, "<i4").tolist(), v, strict=True):
                    sample, *key = keys[i]
                    if sample is None:
                        kpi.append((step, *key, *row))
                    else:
                        samples.append((step, sample, *key, *row))
        if "kpi" in tables:  # format 1
            cols = ", ".join(STATS)
            kpi += self.rows(
                f"SELECT step, category, tensor, kind, {cols} FROM kpi WHERE trial = ?", trial
            )
            samples += self.rows(
                f"SELECT step, sample, category, tensor, kind, {cols} FROM sample_kpi "
                "WHERE trial = ?",
                trial,
            )
        return kpi, samples

    def _checkpoint_soon(self) -> None:
        """Wake the checkpoint thread about every ``CHECKPOINT_BYTES`` of log: the commits
        that first grow the log file by that much set the pace (after a checkpoint the file
        is reused in place and its size no longer tells). A passive checkpoint never blocks
        this connection's commits, and the sqlite3 module releases the GIL while SQLite
        copies and syncs. The thread stays between checkpoints: starting one waits for the
        OS to schedule it, up to ~5 ms on a busy machine (measured)."""
        self._commits += 1
        if self._every is None:
            if self._log_bytes() - self._log0 < CHECKPOINT_BYTES:
                return
            self._every = self._commits
        elif self._commits < self._every:
            return
        self._commits = 0
        if self._checkpointer is None or not self._checkpointer.is_alive():
            self._checkpointer = _Checkpointer(self.path)
            self._checkpointer.start()
        self._checkpointer.wake.set()

    def _log_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        return list(self.db.execute(sql, args))

    def compress_probes(self, trial: str, steps: list[int], name: str) -> None:
        """Deflate the probe arrays ``name`` of ``steps``, stored uncompressed while training
        (one transaction), then give the space back to the file system."""
        if not steps:
            return
        self._stop_checkpointer()  # VACUUM needs the file to itself
        with self._lock, self.db:
            for step in steps:
                row = self.db.execute(
                    "SELECT data FROM probe WHERE trial = ? AND step = ? AND name = ?",
                    (trial, step, name),
                ).fetchone()
                if row is not None:
                    data = sqlite3.Binary(pack(unpack(bytes(row[0]))))
                    self.db.execute(
                        "UPDATE probe SET data = ? WHERE trial = ? AND step = ? AND name = ?",
                        (data, trial, step, name),
                    )
        try:
            self.db.execute("VACUUM")
        except sqlite3.OperationalError:
            pass  # another connection is using the file: later writes reuse the space

    def close(self) -> None:
        self._stop_checkpointer()
        self.db.close()  # the last connection to close checkpoints the rest of the log

    def _stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None


class _Checkpointer(threading.Thread):
    """Runs a passive checkpoint of one file's log each time ``wake`` is set; ends after
    ``IDLE_S`` seconds without one (a recorder that is never closed leaves no thread)."""

    IDLE_S = 60.0

    def __init__(self, path: Path) -> None:
        super().__init__(name="circuitboard-checkpoint", daemon=True)
        self.path = path
        self.wake = threading.Event()
        self.done = False

    def run(self) -> None:
        while self.wake.wait(self.IDLE_S) and not self.done:
            self.wake.clear()
            try:
                db = sqlite3.connect(self.path)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    db.close()
            except sqlite3.Error:
                pass  # the log grows until the next checkpoint; the data is safe in it

    def stop(self) -> None:
        self.done = True
        self.wake.set()
        self.join()
