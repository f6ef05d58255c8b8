"""`top_activations` as a plan: a one-job prelude, then one job per run of consecutive batches.

The prelude computes what every job shares (the neurons, histogram edges, logit effects); each
job scans its batches into a partial :class:`TopActivations`, whose ``merge`` keeps the running
top-k, moments and histograms exactly as one pass over all texts would.
"""

from __future__ import annotations

from typing import Any

from ..scale import Job, ModelSpec, Plan, Sharding, cut, model_source, plan_key, run_plan
from ._neuron_scan import finish_top_activations, plan_texts, scan_texts
from ._neurons import neuron_setup
from ._top_activations import TopActivations


def top_activations_prelude(model: Any, tokenizer: Any, payload: dict[str, Any]) -> Any:
    """What every job shares: neurons, histogram edges, logit effects and the model name."""
    return neuron_setup(model, payload["options"])


def top_activations_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> TopActivations:
    """One job of a sharded :func:`circuitboard.top_activations`: a partial result."""
    return scan_texts(model, payload["sel"], payload["batches"], **payload["kwargs"])


def top_activations_sharded(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    options: dict[str, Any],
    run: Sharding,
    *,
    progress: bool,
) -> TopActivations:
    """:func:`circuitboard.top_activations` cut into jobs at batch boundaries."""
    src = model_source(model, tokenizer, "top_activations")
    tok = src.load_tokenizer() if isinstance(src, ModelSpec) else tokenizer
    texts_plan = plan_texts(
        tok,
        texts,
        max_length=options["max_length"],
        batch_size=options["batch_size"],
        skip_special=options["skip_special"],
    )
    key = plan_key(src, texts, options)
    with run.open(src, __name__, "top_activations") as eng:
        # Shared by every job; tiny, so it is not checkpointed (recomputed on resume).
        prelude = Plan(
            "top_activations",
            [Job(top_activations_prelude, {"options": options}, size=0)],
            merge=TopActivations.merge,
            key=key,
        )
        sel, edges, effects, name = run_plan(prelude, engine=eng, progress=False)
        batches = texts_plan.batches
        groups = cut([len(b) for b in batches], eng.shards(run.shards))
        kwargs = {
            "edges": edges,
            "bins": options["bins"],
            "k": options["k"],
            "context": options["context"],
            "special": texts_plan.special,
            "pad_id": texts_plan.pad_id,
            "features": options["features"][0] if options.get("features") else None,
            "cofiring": options.get("cofiring", False),
        }
        jobs = [
            Job(
                top_activations_shard,
                {"sel": sel, "batches": [texts_plan.batch_inputs(b) for b in g], "kwargs": kwargs},
                size=sum(len(batches[b]) for b in g),
            )
            for g in groups
        ]
        main = Plan(
            "top_activations",
            jobs,
            merge=TopActivations.merge,
            save=TopActivations.save,
            load=TopActivations.load,
            key=key,
            unit="text",
        )
        part = run.run(main, eng, progress=progress)
    return finish_top_activations(part, texts, tok, effects, name)
