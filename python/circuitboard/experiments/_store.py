"""The on-disk experiment log: one folder per run, written so that nothing is lost or corrupted.

Layout under the project folder::

    sources/<sha256>.py          each version's source, named by its hash (written once)
    runs/<experiment>/<run id>/  one folder per run: record.json and the results' files

Why this shape: every run writes only its own folder (its id holds the time, the process id and
random bits), so processes logging at once never touch the same file and none can lose another's
record. ``record.json`` is replaced atomically (written aside, then ``os.replace``): it says
``running`` from the start and ``complete`` / ``failed`` at the end, so a run killed at any
moment leaves a readable record that reads as ``incomplete``. Results are listed in the record
only once written, so a half-written file is never read. Versions are not stored: they are the
distinct source hashes of an experiment, numbered by their first run.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._values import load_value

DEFAULT_PROJECT_ENV = "CIRCUITBOARD_EXPERIMENTS"
"""Environment variable naming the default project folder (else ``./experiments``)."""


def project_folder(project: str | os.PathLike[str] | None) -> Path:
    """``project``, else ``$CIRCUITBOARD_EXPERIMENTS``, else ``./experiments``."""
    if project is None:
        project = os.environ.get(DEFAULT_PROJECT_ENV) or "experiments"
    return Path(project)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    """One logged run of an experiment (read from its ``record.json``).

    Attributes
    ----------
    name, run_id, version, source_hash
        The experiment, this run's id, the version number (1 = the first source seen) and the
        sha256 of the source that ran.
    status
        ``complete``, ``failed``, ``running`` (its process is alive) or ``incomplete`` (it
        stopped before finishing: killed, or the machine went down).
    started, wall_time_s
        ISO timestamp (UTC) and seconds the function ran (None when it did not finish).
    arguments, provenance, error
        The arguments as described at call time, the provenance (versions, models and their
        weights' hash, host), and the error of a failed run.
    """

    name: str
    run_id: str
    folder: Path
    record: dict[str, Any]
    version: int = 0
    status: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def source_hash(self) -> str:
        return str(self.record.get("source_hash") or "")

    @property
    def started(self) -> str:
        return str(self.record.get("started", ""))

    @property
    def wall_time_s(self) -> float | None:
        return self.record.get("wall_time_s")

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.record.get("arguments", {}))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.record.get("provenance", {}))

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def source(self) -> str:
        """The source of the version that ran ('' for runs logged without a function)."""
        path = self.folder.parents[2] / "sources" / f"{self.source_hash}.py"
        return path.read_text(encoding="utf-8") if self.source_hash and path.exists() else ""

    @property
    def entries(self) -> list[dict[str, Any]]:
        """How each stored result is kept (kind, file, type, repr)."""
        return list(self.record.get("results", []))

    @property
    def results(self) -> dict[str, Any]:
        """Every stored result, read back (circuitboard results through their own loader)."""
        if "results" not in self._cache:
            self._cache["results"] = {e["key"]: load_value(self.folder, e) for e in self.entries}
        return self._cache["results"]

    @property
    def result(self) -> Any:
        """The result when the run stored one value (``results["result"]``)."""
        res = self.results
        if len(res) != 1:
            raise ValueError(
                f"run {self.run_id} of {self.name!r} stored {len(res)} results "
                f"({sorted(res)}); pick one from run.results[key]."
            )
        return next(iter(res.values()))

    def __repr__(self) -> str:
        wall = f"{self.wall_time_s:.3g}s" if self.wall_time_s is not None else "—"
        keys = ", ".join(e["key"] for e in self.entries) or "no results"
        return (
            f"Run({self.name!r} v{self.version} [{self.source_hash[:10]}], {self.status}, "
            f"started {self.started}, {wall}; {keys})"
        )


class Store:
    """An experiment log in a project folder (see the module for the layout)."""

    def __init__(self, project: str | os.PathLike[str] | None = None) -> None:
        self.root = project_folder(project)

    # -- writing -------------------------------------------------------------------------
    def save_source(self, source: str, digest: str) -> None:
        folder = self.root / "sources"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest}.py"
        if not path.exists():  # same hash, same bytes: a race writes identical content
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            tmp.write_text(source, encoding="utf-8")
            os.replace(tmp, path)

    def new_run_folder(self, name: str, run_id: str) -> Path:
        folder = self.root / "runs" / name / run_id
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    # -- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Experiment names with at least one run, sorted."""
        runs = self.root / "runs"
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []

    def runs(self, name: str | None = None) -> list[Run]:
        """Every run (of ``name``, or of every experiment), oldest first, with versions."""
        out: list[Run] = []
        for exp in [name] if name is not None else self.names():
            folder = self.root / "runs" / exp
            if not folder.is_dir():
                continue
            found = []
            for run_dir in folder.iterdir():
                rec = self._read(run_dir / "record.json")
                if rec is not None:
                    found.append(Run(exp, run_dir.name, run_dir, rec))
            found.sort(key=lambda r: (r.started, r.run_id))
            versions: dict[str, int] = {}
            for r in found:
                r.version = versions.setdefault(r.source_hash, len(versions) + 1)
                r.status = self._status(r.record)
            out.extend(found)
        return out

    def versions(self, name: str) -> list[dict[str, Any]]:
        """``[{version, source_hash, runs, first_started}]`` of one experiment."""
        out: dict[int, dict[str, Any]] = {}
        for r in self.runs(name):
            v = out.setdefault(
                r.version,
                {
                    "version": r.version,
                    "source_hash": r.source_hash,
                    "runs": 0,
                    "first_started": r.started,
                },
            )
            v["runs"] += 1
        return [out[k] for k in sorted(out)]

    def diff(self, name: str, a: int, b: int) -> str:
        """Unified diff of the sources of versions ``a`` and ``b`` of ``name``."""
        src = {}
        for r in self.runs(name):
            src.setdefault(r.version, r)
        missing = [v for v in (a, b) if v not in src]
        if missing:
            raise ValueError(
                f"experiment {name!r} has versions {sorted(src)}; got {missing[0]!r}. Pick two "
                "of those (cb.experiments() lists them)."
            )
        return "".join(
            difflib.unified_diff(
                src[a].source.splitlines(keepends=True),
                src[b].source.splitlines(keepends=True),
                fromfile=f"{name} v{a} [{src[a].source_hash[:10]}]",
                tofile=f"{name} v{b} [{src[b].source_hash[:10]}]",
            )
        )

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # no record yet (a run folder just made): not a run
        return data if isinstance(data, dict) else None

    @staticmethod
    def _status(rec: dict[str, Any]) -> str:
        status = str(rec.get("status", "incomplete"))
        if status != "running":
            return status
        same_host = rec.get("provenance", {}).get("host") == socket.gethostname()
        pid = rec.get("provenance", {}).get("pid")
        if same_host and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            return "running"
        if same_host and pid == os.getpid():
            return "running"
        return "incomplete"


__all__ = ["DEFAULT_PROJECT_ENV", "Run", "Store", "project_folder", "write_json_atomic"]
