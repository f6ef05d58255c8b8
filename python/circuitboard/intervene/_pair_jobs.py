"""What the plans of `patch` and `circuit` over lists of prompt pairs share.

One process patches (or scores edges of) a list of pairs pair by pair: every pair is its own
set of forwards, so pair boundaries are the batch boundaries every engine shares. A shard is a
run of consecutive pairs; its state is what one process keeps per pair (patching: each pair's
metric under every site patch and its endpoints; circuits: the float64 sum of the pairs' edge
scores and each pair's endpoints). States merge in plan order, and the result is assembled by
the same code a single run uses, so every engine gives the same numbers and saved bytes.

Workers build each pair's metric themselves: from ``answer`` / ``wrong`` tokens (the built-in
logit difference), or from a user's callable pickled by value (cloudpickle, which comes with
Ray), so lambdas and notebook functions travel too.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._npz import save_npz
from ..capture._prompts import split_prompts
from ..scale import Engine, Job, ModelSpec, Plan, Sharding, plan_key, run_plan


# -- metrics that travel ------------------------------------------------------------------
@dataclass(frozen=True)
class ShippedMetric:
    """A metric pickled for other processes; :meth:`open` gives the callable back."""

    blob: bytes

    def open(self) -> Any:
        return pickle.loads(self.blob)


def ship_metric(metric: Any, engine: str, what: str) -> Any:
    """``metric`` as it travels in a shard's payload: itself on the serial engine (nothing
    leaves this process), else pickled by value, refused with the fix when it cannot be."""
    if metric is None or engine == "serial" or not callable(metric):
        return metric
    try:
        import cloudpickle
    except ImportError:  # plain pickle: functions travel by reference, so must be importable
        cloudpickle = None
    fix = (
        "Use answer=/wrong= (the built-in logit difference, built on every worker), a metric "
        "that refers only to picklable values (numbers, token ids, tensors), or "
        'engine="serial".'
    )
    try:
        blob = (cloudpickle or pickle).dumps(metric)
    except Exception as err:
        raise ValueError(
            f"{what}: metric={_metric_name(metric)} cannot be sent to the {engine} workers "
            f"({type(err).__name__}: {err}). {fix}"
        ) from None
    main = sys.modules.get("__main__")
    here = getattr(metric, "__module__", None) == "__main__"
    if cloudpickle is None and here and not hasattr(main, "__file__"):
        raise ValueError(
            f"{what}: metric={_metric_name(metric)} is defined in this interactive session, "
            f"which worker processes cannot import. Install cloudpickle (it comes with "
            f'`pip install "circuitboard[ray]"`) or define the metric in a module. {fix}'
        )
    return ShippedMetric(blob)


def open_metric(shipped: Any) -> Any:
    if isinstance(shipped, list):
        return [open_metric(m) for m in shipped]
    return shipped.open() if isinstance(shipped, ShippedMetric) else shipped


def _metric_name(metric: Any) -> str:
    return getattr(metric, "__qualname__", None) or type(metric).__name__


def describe_metric(metric: Any) -> str:
    """What a checkpoint remembers of a metric: its name, description and code, stable across
    processes (so a resumed run recognizes it, and another metric's shards are refused)."""
    if metric is None:
        return "default"
    if isinstance(metric, list):
        return json.dumps([describe_metric(m) for m in metric])
    code = getattr(metric, "__code__", None)
    body = b"" if code is None else code.co_code + repr(code.co_consts).encode()
    cells = getattr(metric, "__closure__", None) or ()  # a closure's values: its token ids...
    body += repr([_cell(c) for c in cells] + [getattr(metric, "__defaults__", None)]).encode()
    tag = hashlib.sha256(body).hexdigest()[:16]
    desc = getattr(metric, "description", "")
    return f"{getattr(metric, '__module__', '')}.{_metric_name(metric)} {desc!r} {tag}"


def _cell(cell: Any) -> str:
    try:
        return repr(cell.cell_contents)
    except ValueError:  # an empty cell
        return "<empty>"


def has_arrays(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and any(hasattr(i, "shape") for i in x)


def prompts_of(x: Any) -> list[Any]:
    """The prompts of a call as a list (each a string or a list of token ids)."""
    return split_prompts(x)[0]


def _pick(values: list[Any], group: list[int]) -> list[Any]:
    return [values[i] for i in group]


def run_pairs(
    name: str,
    fn: Any,
    part: Any,
    eng: Engine,
    groups: list[list[int]],
    pairs: tuple[list[Any], list[Any], list[Any], list[Any]],
    metric: tuple[Any, Any],
    options: dict[str, Any],
    *,
    run: Sharding,
    progress: bool,
) -> Any:
    """Run one job per group of consecutive pairs and merge the ``part`` results in order.

    ``pairs``: (clean, corrupted, answer, wrong) lists; ``metric``: (what travels, its
    :func:`describe_metric` source), a list is one metric per pair.
    """
    cl, co, answers, wrongs = pairs
    shipped, described = metric
    payloads = [
        {
            "clean": _pick(cl, g),
            "corrupted": _pick(co, g),
            "answer": _pick(answers, g),
            "wrong": _pick(wrongs, g),
            "metric": _pick(shipped, g) if isinstance(shipped, list) else shipped,
            "options": options,
            "first": g[0],  # the pair index of the shard's first pair, for messages
        }
        for g in groups
    ]
    plan = Plan(
        name,
        [Job(fn, p, size=len(g)) for p, g in zip(payloads, groups, strict=True)],
        merge=part.merge,
        save=part.save,
        load=part.load,
        key=plan_key(
            eng.source, [cl, co, answers, wrongs], options, metric=describe_metric(described)
        ),
        unit="pair",
    )
    return run.run(plan, eng, progress=progress)


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    save_npz(path, {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays})


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(bytes(z["__meta__"]).decode())
    return arrays, meta


def model_facts(model: Any, tokenizer: Any, payload: Any) -> dict[str, Any]:
    """What the driver needs of the model to plan and assemble: shapes, names, causality."""
    from ..intervene._runner import Runner

    r = Runner(model)
    return {"info": r.info, "causal": bool(r.adapter.causal), "n_layers": r.n_layers}


def facts_of(eng: Engine, name: str) -> dict[str, Any]:
    """:func:`model_facts` of the engine's model: here if it is loaded here, else on a worker."""
    if not isinstance(eng.source, ModelSpec):  # the model is here: no round trip
        return model_facts(eng.source.model, None, None)
    prelude = Plan(name, [Job(model_facts, None, size=0)], merge=lambda a, b: a)
    return run_plan(prelude, engine=eng, progress=False)
