"""ExperimentsView and `experiments()`: browse the experiment log — runs by experiment and
version, the source diff between versions, and the selected run's results as their views."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import ipywidgets
import traitlets

from ._view import View, json_safe

_MAX_SOURCE = 200_000  # characters of one version's source sent to the browser


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _state(project: Any) -> list[dict[str, Any]]:
    from ..experiments import Store

    store = Store(project)
    out = []
    for name in store.names():
        runs = store.runs(name)
        by_version: dict[int, Any] = {}
        for r in runs:
            by_version.setdefault(r.version, r)
        versions = []
        for v, first in sorted(by_version.items()):
            prev = by_version.get(v - 1)
            versions.append(
                {
                    "version": v,
                    "source_hash": first.source_hash,
                    "runs": sum(1 for r in runs if r.version == v),
                    "source": first.source[:_MAX_SOURCE],
                    "diff": store.diff(name, v - 1, v) if prev is not None else "",
                }
            )
        out.append(
            {
                "name": name,
                "versions": versions,
                "runs": [
                    json_safe(
                        {
                            "run_id": r.run_id,
                            "version": r.version,
                            "status": r.status,
                            "started": r.started,
                            "wall_time_s": r.wall_time_s,
                            "arguments": json.dumps(r.arguments, indent=1, default=str),
                            "provenance": json.dumps(r.provenance, indent=1, default=str),
                            "error": r.error or "",
                            "results": [
                                {
                                    "key": e["key"],
                                    "kind": e["kind"],
                                    "type": e.get("type", ""),
                                    "summary": e.get("repr")
                                    or (json.dumps(e["value"]) if "value" in e else "")
                                    or (f"array {e['shape']}" if "shape" in e else e.get("file")),
                                }
                                for e in r.entries
                            ],
                        }
                    )
                    for r in reversed(runs)  # newest first
                ],
            }
        )
    return out


class ExperimentsView(View):
    """The experiment log of a project folder: experiments, their versions (source hash, runs,
    the diff from the previous version) and their runs (status, time, arguments, results).
    Clicking a run sets :attr:`selected_run`; :func:`experiments` shows its results' views.

    Parameters
    ----------
    project : path, optional
        The project folder (default: ``$CIRCUITBOARD_EXPERIMENTS``, else ``./experiments``).

    Examples
    --------
    >>> import tempfile
    >>> import circuitboard as cb
    >>> folder = tempfile.mkdtemp()
    >>> _ = cb.log("scan", {"best": 3}, project=folder)
    >>> view = ExperimentsView(folder)
    >>> [e["name"] for e in view.experiments], view.experiments[0]["runs"][0]["status"]
    (['scan'], 'complete')
    """

    _view = traitlets.Unicode("experiments").tag(sync=True)
    project = traitlets.Unicode().tag(sync=True)
    """The project folder shown."""
    experiments = traitlets.List().tag(sync=True)
    """Per experiment: ``{name, versions: [{version, source_hash, runs, source, diff}], runs}``."""
    selected_run = traitlets.Unicode("").tag(sync=True)
    """The run id clicked in the browser (or set from Python)."""

    def __init__(self, project: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        from ..experiments._store import project_folder

        folder = project_folder(project)
        super().__init__(project=str(folder), experiments=_state(folder), **kwargs)

    def refresh(self) -> None:
        """Read the project folder again (runs logged since the view was made)."""
        self.experiments = _state(self.project)

    def run(self, run_id: str | None = None) -> Any:
        """The :class:`~circuitboard.experiments.Run` with this id (default: the selected one)."""
        from ..experiments import Store

        run_id = run_id or self.selected_run
        for r in Store(self.project).runs():
            if r.run_id == run_id:
                return r
        raise ValueError(
            f"no run {run_id!r} in {self.project}; click a run in the view or pass one of the "
            "run ids in view.experiments[i]['runs']."
        )


def result_views(run: Any) -> list[Any]:
    """The views of a run's results: ``cb.<snake_case(type)>_view`` for each stored
    circuitboard result that has one (``Patching`` → ``cb.patching_view``)."""
    import circuitboard as cb

    views = []
    for entry in run.entries:
        if entry["kind"] != "result":
            continue
        make = getattr(cb, f"{_snake(entry['type'])}_view", None)
        if make is not None:
            views.append(make(run.results[entry["key"]]))
    return views


class ExperimentsBrowser(ipywidgets.VBox):
    """:class:`ExperimentsView` above the views of the selected run's results."""

    def __init__(self, view: ExperimentsView) -> None:
        self.view = view
        self.results = ipywidgets.VBox()
        super().__init__([view, self.results])
        view.observe(self._show, names="selected_run")

    def _show(self, change: Any) -> None:
        self.results.children = tuple(result_views(self.view.run(change["new"])))


def experiments(project: str | os.PathLike[str] | None = None) -> ExperimentsBrowser:
    """:class:`ExperimentsView` of ``project`` above the selected run's result views (what
    ``cb.experiments()`` returns).

    Examples
    --------
    >>> import tempfile
    >>> browser = experiments(tempfile.mkdtemp())
    >>> browser.view.experiments, browser.results.children
    ([], ())
    """
    return ExperimentsBrowser(ExperimentsView(project))


__all__ = ["ExperimentsBrowser", "ExperimentsView", "experiments", "result_views"]
