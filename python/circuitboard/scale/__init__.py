"""Dataset-scale runs: a plan of jobs, run serially, on a process pool or on Ray, merged in order.

The plan protocol (:class:`Plan`, :class:`Job`, :func:`run_plan`) knows nothing of what the
jobs compute: each computation builds its own plan next to its math. A :class:`ModelSpec` says
where each worker loads its model from; the engines (``"serial"``, ``"processes"``, ``"ray"``)
run the jobs; parts are merged in plan order, so every engine gives the same numbers. Users
reach this through ``engine=`` on :func:`circuitboard.compare`,
:func:`circuitboard.top_activations`, and :func:`circuitboard.patch` /
:func:`circuitboard.circuit` over lists of prompt pairs, or through :func:`run_plan` directly.
"""

from ._engines import ENGINES, shutdown
from ._plan import (
    Engine,
    Job,
    Plan,
    RunInfo,
    Sharding,
    cut,
    describe_source,
    digest,
    last_run,
    model_source,
    open_engine,
    plan_key,
    run_plan,
)
from ._spec import ModelSpec

__all__ = [
    "ENGINES",
    "Engine",
    "Job",
    "ModelSpec",
    "Plan",
    "RunInfo",
    "Sharding",
    "cut",
    "describe_source",
    "digest",
    "last_run",
    "model_source",
    "open_engine",
    "plan_key",
    "run_plan",
    "shutdown",
]
