"""The versioned experiment log: ``@experiment`` / ``log`` record runs, ``load_experiment`` reads
them back (never unpickling); the browser widget is ``cb.experiments()`` in ``widgets``.

Sits above capture and intervene (it reads models' provenance and reloads their results) and
below widgets.
"""

from ._log import experiment, load_experiment, log, provenance, source_of
from ._store import Run, Store

__all__ = ["Run", "Store", "experiment", "load_experiment", "log", "provenance", "source_of"]
