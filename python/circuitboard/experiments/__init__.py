"""The versioned experiment log: ``@experiment`` / ``log`` record runs, ``load_experiment`` reads
them back (never unpickling), ``experiments()`` opens the browser widget.

Sits above capture and intervene (it reads models' provenance and reloads their results) and
below widgets (``experiments()`` imports the widget when called).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from ._log import experiment, load_experiment, log, provenance, source_of
from ._store import Run, Store


def experiments(project: str | os.PathLike[str] | None = None) -> Any:
    """Browse the experiment log: runs by experiment and version, the source diff between
    versions, and the views of the results of the run you click.

    Parameters
    ----------
    project : path, optional
        The project folder (default: ``$CIRCUITBOARD_EXPERIMENTS``, else ``./experiments``).

    Returns
    -------
    ExperimentsBrowser
        The list (:class:`~circuitboard.widgets.ExperimentsView`) above the selected run's
        result views.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import circuitboard as cb
    >>> from circuitboard.intervene import Patching
    >>> folder = tempfile.mkdtemp()
    >>> res = Patching(np.eye(2), np.eye(2), "heads", "exact", "denoise", "m",
    ...                ("layer", "head"), [0, 1], None, [0, 1], {"clean": [], "corrupted": []},
    ...                1.0, 0.0, 0)
    >>> run = cb.log("heads", res, project=folder)
    >>> browser = cb.experiments(folder)
    >>> browser.view.selected_run = run.run_id
    >>> [type(v).__name__ for v in browser.results.children]
    ['PatchingView']
    """
    from ..widgets._experiments import experiments as browse

    return browse(project)


class _CallableModule(types.ModuleType):
    # Importing this package sets ``circuitboard.experiments`` to the module, which would hide
    # the ``cb.experiments()`` function of the same name: the module calls it instead.
    def __call__(self, project: str | os.PathLike[str] | None = None) -> Any:
        return experiments(project)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "Run",
    "Store",
    "experiment",
    "experiments",
    "load_experiment",
    "log",
    "provenance",
    "source_of",
]
