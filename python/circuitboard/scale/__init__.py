"""Dataset-scale runs: one plan cut into shards, run serially, on a process pool or on Ray.

A :class:`ModelSpec` says where each worker loads its model from; the engines (``"serial"``,
``"processes"``, ``"ray"``) run the shards of a :class:`Plan`; results are merged in plan order,
so every engine gives the same numbers. Users reach this through ``engine=`` on
:func:`circuitboard.compare`, :func:`circuitboard.top_activations`, and
:func:`circuitboard.patch` / :func:`circuitboard.circuit` over lists of prompt pairs.
"""

from ._engines import ENGINES, shutdown
from ._run import Plan, RunInfo, cut, execute, last_run
from ._spec import ModelSpec

__all__ = ["ENGINES", "ModelSpec", "Plan", "RunInfo", "cut", "execute", "last_run", "shutdown"]
