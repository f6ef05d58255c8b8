"""`@cb.experiment`, `cb.log` and `cb.load_experiment`: record runs with their source and results.

A decorated function keeps working as before; each call also stores, under the project folder,
its source and the source's sha256 (the version), its arguments, what it returned (through each
result's own ``save``), the provenance (versions of Python, numpy, torch, transformers and
circuitboard; every model argument's name and weights hash; host and process) and its wall
time. See :mod:`circuitboard.experiments._store` for how the folder stays consistent.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import inspect
import os
import platform
import secrets
import socket
import textwrap
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from ._store import Run, Store, write_json_atomic
from ._values import describe_argument, save_value

_WEIGHTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _weights_hash(model: Any) -> str:
    """sha256 of a model's parameters and buffers (cached until a tensor changes in place)."""
    from ..capture._provenance import tensor_digest

    tensors = dict(model.state_dict())
    stamp = sum(int(t._version) for t in tensors.values())
    hit = _WEIGHTS.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    digest = tensor_digest(tensors)
    _WEIGHTS[model] = (stamp, digest)
    return digest


def _models(values: list[Any]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        cfg = getattr(v, "config", None)
        if cfg is None or not hasattr(v, "state_dict") or not hasattr(v, "parameters"):
            continue
        out.append(
            {
                "model": str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "")),
                "class": type(v).__name__,
                "n_layers": getattr(cfg, "num_hidden_layers", None),
                "model_file": getattr(cfg, "circuitboard_source", None),
                "weights_sha256": _weights_hash(v),
            }
        )
    return out


def provenance(values: list[Any] = ()) -> dict[str, Any]:
    """Versions, host and process, and each model among ``values`` with its weights hash.

    Examples
    --------
    >>> p = provenance([])
    >>> sorted(p["versions"])[:3], p["models"]
    (['circuitboard', 'numpy', 'python'], [])
    """
    return {
        "versions": {
            "circuitboard": _version("circuitboard"),
            "numpy": _version("numpy"),
            "python": platform.python_version(),
            "torch": _version("torch"),
            "transformers": _version("transformers"),
        },
        "models": _models(list(values)),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _run_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(
            f"experiment name must be a non-empty string without path separators; got {name!r}."
            " Use e.g. name='ioi_heads'."
        )
    return name


def source_of(fn: Callable[..., Any]) -> str:
    """The function's source (dedented), as ``inspect`` finds it (notebook cells included)."""
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as err:
        raise ValueError(
            f"cannot read the source of {getattr(fn, '__name__', fn)!r} ({err}); "
            "@cb.experiment needs a function defined in a file or a notebook cell. Use "
            "cb.log(name, results) to record results without a function."
        ) from None


def _items(out: Any) -> dict[str, Any]:
    """What a run stores: a dict's items, a tuple's elements ("0", "1", ...), else "result"."""
    if isinstance(out, dict) and out and all(isinstance(k, str) for k in out):
        return dict(out)
    if isinstance(out, tuple):
        return {str(i): v for i, v in enumerate(out)}
    return {"result": out}


class _Recorder:
    """One run being written: the record says ``running`` until :meth:`finish` or :meth:`fail`."""

    def __init__(
        self, store: Store, name: str, source: str, arguments: dict[str, Any], models: list[Any]
    ) -> None:
        self.digest = hashlib.sha256(source.encode()).hexdigest() if source else ""
        if source:
            store.save_source(source, self.digest)
        self.run_id = _run_id()
        self.folder = store.new_run_folder(name, self.run_id)
        self.store, self.name = store, name
        self.record: dict[str, Any] = {
            "name": name,
            "run_id": self.run_id,
            "source_hash": self.digest,
            "arguments": {k: describe_argument(v) for k, v in arguments.items()},
            "provenance": provenance(models),
            "started": _now(),
            "status": "running",
            "results": [],
            "wall_time_s": None,
        }
        self._write()
        self.t0 = time.perf_counter()

    def _write(self) -> None:
        write_json_atomic(self.folder / "record.json", self.record)

    def finish(self, out: Any, wall: float | None = None) -> Run:
        self.record["wall_time_s"] = time.perf_counter() - self.t0 if wall is None else wall
        entries = []
        for key, value in _items(out).items():
            entries.append(save_value(self.folder, key, value))
        self.record.update(results=entries, status="complete", finished=_now())
        self._write()
        return Run(self.name, self.run_id, self.folder, self.record, status="complete")

    def fail(self, err: BaseException) -> None:
        self.record.update(
            status="failed",
            finished=_now(),
            wall_time_s=time.perf_counter() - self.t0,
            error="".join(traceback.format_exception_only(type(err), err)).strip(),
        )
        self._write()


def experiment(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    project: str | os.PathLike[str] | None = None,
) -> Any:
    """Log every call of a function: source + hash (its version), arguments, results,
    provenance, wall time and a timestamp, under a project folder.

    The function runs and returns as before. A changed source is a new version; runs of every
    version stay. A run that raises is logged as ``failed`` (and the error re-raised); one that
    is killed reads as ``incomplete``. ``fn.last_run`` is the :class:`Run` of the latest call.

    Parameters
    ----------
    fn
        The function (``@experiment``), or None for ``@experiment(name=..., project=...)``.
    name
        The experiment's name (default: the function's name).
    project
        The project folder (default: ``$CIRCUITBOARD_EXPERIMENTS``, else ``./experiments``).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> @experiment(project=folder)
    ... def square(x):
    ...     return {"y": x * x}
    >>> square(3)
    {'y': 9}
    >>> run = load_experiment("square", project=folder)
    >>> run.version, run.status, run.results, run.arguments
    (1, 'complete', {'y': 9}, {'x': 3})
    """
    if fn is None:
        return functools.partial(experiment, name=name, project=project)
    if not callable(fn):
        raise TypeError(
            f"@cb.experiment decorates a function; got {type(fn).__name__}. Write "
            "@cb.experiment above a def, or @cb.experiment(name=..., project=...)."
        )
    exp_name = _check_name(name or fn.__name__)
    source = source_of(fn)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        rec = _Recorder(Store(project), exp_name, source, dict(bound.arguments), values)
        try:
            out = fn(*args, **kwargs)
        except BaseException as err:
            rec.fail(err)
            raise
        try:
            run.last_run = rec.finish(out)
        except BaseException as err:
            rec.fail(err)
            raise
        return out

    run.experiment_name = exp_name  # type: ignore[attr-defined]
    run.source_hash = hashlib.sha256(source.encode()).hexdigest()  # type: ignore[attr-defined]
    run.last_run = None  # type: ignore[attr-defined]
    return run


def log(
    name: str,
    results: Any,
    *,
    params: dict[str, Any] | None = None,
    source: str = "",
    project: str | os.PathLike[str] | None = None,
) -> Run:
    """Log results computed outside a decorated function, as one run of experiment ``name``.

    Parameters
    ----------
    name
        The experiment's name.
    results
        What to store: a dict of named values, or one value (stored as ``"result"``).
    params
        The parameters to record next to them (models among them get a weights hash).
    source
        Optional code that produced them; its hash is the version (``""``: one version).
    project
        The project folder (default: ``$CIRCUITBOARD_EXPERIMENTS``, else ``./experiments``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> run = log("scan", {"scores": np.arange(3.0), "best": 2}, params={"layer": 4},
    ...           project=folder)
    >>> again = load_experiment("scan", project=folder)
    >>> again.results["scores"].tolist(), again.results["best"], again.arguments
    ([0.0, 1.0, 2.0], 2, {'layer': 4})
    """
    params = dict(params or {})
    rec = _Recorder(Store(project), _check_name(name), source, params, list(params.values()))
    try:
        return rec.finish(results, wall=0.0)
    except BaseException as err:
        rec.fail(err)
        raise


def load_experiment(
    name: str,
    version: int | str | None = None,
    *,
    run: int = -1,
    project: str | os.PathLike[str] | None = None,
    complete: bool = True,
) -> Run:
    """A logged run of experiment ``name``.

    ``version``: a number (1 = the first source seen) or a source-hash prefix; default: the
    latest version with a complete run. ``run``: which run of that version (default: the
    latest), among complete runs unless ``complete=False``. Its ``results`` read back without
    pickle.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = log("pi", 3.14, project=folder)
    >>> load_experiment("pi", 1, project=folder).result
    3.14
    """
    store = Store(project)
    runs = store.runs(name)
    if not runs:
        known = ", ".join(store.names()) or "none yet"
        raise ValueError(
            f"no experiment {name!r} in {store.root}; experiments there: {known}. Check the "
            "name, or pass project= the folder it was logged to."
        )
    if version is None:  # the latest version that has a run to give
        usable = [r for r in runs if r.status == "complete"] if complete else runs
        version = max(r.version for r in usable) if usable else max(r.version for r in runs)
    if isinstance(version, str):
        chosen = [r for r in runs if r.source_hash.startswith(version)]
    else:
        chosen = [r for r in runs if r.version == version]
    if complete:
        chosen = [r for r in chosen if r.status == "complete"]
    if not chosen:
        listing = ", ".join(
            f"v{v['version']} [{v['source_hash'][:10]}] ({v['runs']} runs)"
            for v in store.versions(name)
        )
        what = "complete runs" if complete else "runs"
        raise ValueError(
            f"experiment {name!r} has no {what} of version {version!r}; versions: {listing}. "
            "Pass one of those numbers (or a hash prefix), or complete=False for failed and "
            "incomplete runs."
        )
    try:
        return chosen[run]
    except IndexError:
        raise ValueError(
            f"experiment {name!r} version {version!r} has {len(chosen)} runs; run={run} is out "
            f"of range (use 0..{len(chosen) - 1} or -1 for the latest)."
        ) from None


__all__ = ["experiment", "load_experiment", "log", "provenance", "source_of"]
