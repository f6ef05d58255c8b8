"""`compare` as a plan: one job per run of consecutive blocks, parts merged in plan order.

The job function is module-level (workers import it by name) and calls the same code a
single run uses, so a job computes exactly what one process computes for its part; a part
is a :class:`Comparison`, whose ``merge`` pools the running moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..scale import Job, Plan, Sharding, cut, model_source, plan_key
from ._compare import Comparison, compare_blocks, plan_blocks


def compare_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> Comparison:
    """One job of a sharded :func:`circuitboard.compare`: its blocks, folded in order."""
    return compare_blocks(model, tokenizer, payload["blocks"], **payload["options"])


def compare_sharded(
    model: Any,
    tokenizer: Any,
    categories: Mapping[str, Sequence[str]],
    options: dict[str, Any],
    run: Sharding,
    *,
    progress: bool | None,
) -> Comparison:
    """:func:`circuitboard.compare` cut into jobs at block boundaries, run as ``run`` says."""
    source = model_source(model, tokenizer, "compare")
    blocks = plan_blocks(categories, options["batch_size"])
    with run.open(source, __name__, "compare") as eng:
        groups = cut([b - a for _, a, b in blocks], eng.shards(run.shards))
        jobs = []
        for g in groups:
            part = [
                (blocks[j][0], list(categories[blocks[j][0]][slice(*blocks[j][1:])])) for j in g
            ]
            size = sum(blocks[j][2] - blocks[j][1] for j in g)
            jobs.append(Job(compare_shard, {"blocks": part, "options": options}, size=size))
        plan = Plan(
            "compare",
            jobs,
            merge=Comparison.merge,
            save=Comparison.save,
            load=Comparison.load,
            key=plan_key(eng.source, {k: list(v) for k, v in categories.items()}, _keyed(options)),
            unit="prompt",
        )
        total = sum(len(p) for p in categories.values())
        show = progress if progress is not None else total >= 64
        return run.run(plan, eng, progress=show)


def _keyed(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as a checkpoint key names them: dictionaries by their parameters' sha256
    (a module's repr does not say which weights it holds)."""
    saes = options.get("saes")
    if saes is None:
        return options
    from ..capture._provenance import dictionary_provenance

    items = saes if isinstance(saes, list | tuple) else [saes]
    return {**options, "saes": [dictionary_provenance(s) for s in items]}
