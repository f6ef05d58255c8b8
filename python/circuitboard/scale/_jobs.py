"""The sharded forms of `compare` and `top_activations`: their plans and shard functions.

Shard functions are module-level (workers import them by name) and call the same analysis
code a single run uses, so a shard computes exactly what one process computes for its part.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._engines import Loaded, get_engine
from ._run import Plan, cut, execute
from ._spec import ModelSpec


def as_source(model: Any, tokenizer: Any, what: str) -> Any:
    """A :class:`ModelSpec` (workers load their own) or a loaded model to ship to them."""
    if isinstance(model, ModelSpec):
        if tokenizer is not None:
            raise ValueError(
                f"{what}: with a ModelSpec, pass tokenizer=None; each worker loads the spec's "
                "own tokenizer (set ModelSpec(..., tokenizer=...) for a different one)."
            )
        return model
    if isinstance(model, str):
        raise TypeError(
            f"{what}: model is the string {model!r}; wrap it: cb.ModelSpec({model!r}) so that "
            "workers load it, or pass a loaded model and its tokenizer."
        )
    if tokenizer is None:
        raise ValueError(
            f"{what}: tokenizer is None; pass the model's tokenizer, or pass "
            "cb.ModelSpec(name_or_path) as the model so that each worker loads both."
        )
    return Loaded(model, tokenizer)


def _describe(source: Any) -> str:
    if isinstance(source, ModelSpec):
        return repr(source)
    m = source.model
    params = list(m.parameters())
    n = sum(p.numel() for p in params)
    # a cheap fingerprint, so a checkpoint of other weights is not resumed by mistake
    tip = [float(p.detach().double().sum()) for p in (params[0], params[-1])] if params else []
    name = getattr(getattr(m, "config", None), "_name_or_path", "")
    return f"{type(m).__name__}({name!r}, {n} parameters, {tip})"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def _shards(shards: int | None, engine: str, eng: Any) -> int:
    if shards is None:
        return 1 if engine == "serial" else 4 * eng.workers
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"shards must be a positive int or None; got {shards!r}.")
    return shards


def _engine(engine: str, source: Any, workers: Any, gpus: Any, address: Any) -> tuple[Any, bool]:
    return get_engine(engine, source, workers=workers, gpus_per_worker=gpus, ray_address=address)


# -- compare -------------------------------------------------------------------------------
def compare_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> Any:
    """One shard of a sharded :func:`circuitboard.compare`: its blocks, folded in order."""
    from ..analysis._compare import compare_blocks

    return compare_blocks(model, tokenizer, payload["blocks"], **payload["options"])


def _merge(a: Any, b: Any) -> Any:
    return a.merge(b)


def _save(state: Any, path: Path) -> None:
    state.save(path)


def _load_comparison(path: Path) -> Any:
    from ..analysis._compare import Comparison

    return Comparison.load(path)


def compare_sharded(
    model: Any,
    tokenizer: Any,
    categories: Mapping[str, Sequence[str]],
    options: dict[str, Any],
    *,
    engine: str,
    workers: int | None,
    gpus_per_worker: float | None,
    shards: int | None,
    checkpoint: Any,
    ray_address: str | None,
    progress: bool | None,
) -> Any:
    """:func:`circuitboard.compare` cut into shards at block boundaries, run on ``engine``."""
    from ..analysis._compare import plan_blocks

    source = as_source(model, tokenizer, "compare")
    blocks = plan_blocks(categories, options["batch_size"])
    eng, owned = _engine(engine, source, workers, gpus_per_worker, ray_address)
    try:
        groups = cut([b - a for _, a, b in blocks], _shards(shards, engine, eng))
        payloads = [
            {
                "blocks": [
                    (blocks[j][0], list(categories[blocks[j][0]][slice(*blocks[j][1:])])) for j in g
                ],
                "options": options,
            }
            for g in groups
        ]
        total = sum(len(p) for p in categories.values())
        plan = Plan(
            job="compare",
            fn=compare_shard,
            payloads=payloads,
            sizes=[sum(blocks[j][2] - blocks[j][1] for j in g) for g in groups],
            merge=_merge,
            save=_save,
            load=_load_comparison,
            key={
                "model": _describe(source),
                "inputs": _hash({k: list(v) for k, v in categories.items()}),
                "options": repr(sorted(options.items())),
            },
        )
        show = progress if progress is not None else total >= 64
        result = execute(
            plan,
            source,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            checkpoint=checkpoint,
            progress=show,
            engine_obj=eng,
        )
    finally:
        if owned:
            eng.close()
    return result


# -- top activations -------------------------------------------------------------------------
def top_activations_prelude(model: Any, tokenizer: Any, payload: dict[str, Any]) -> Any:
    """What every shard shares: neurons, histogram edges, logit effects and the model name."""
    from ..analysis._neurons import neuron_setup

    return neuron_setup(model, payload["options"])


def top_activations_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> Any:
    """One shard of a sharded :func:`circuitboard.top_activations`: a partial result."""
    from ..analysis._neurons import scan_texts

    return scan_texts(model, payload["sel"], payload["batches"], **payload["kwargs"])


def _load_top(path: Path) -> Any:
    from ..analysis._neurons import TopActivations

    return TopActivations.load(path)


def top_activations_sharded(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    options: dict[str, Any],
    *,
    engine: str,
    workers: int | None,
    gpus_per_worker: float | None,
    shards: int | None,
    checkpoint: Any,
    ray_address: str | None,
    progress: bool,
) -> Any:
    """:func:`circuitboard.top_activations` cut into shards at batch boundaries."""
    from ..analysis._neurons import finish_top_activations, plan_texts

    source = as_source(model, tokenizer, "top_activations")
    tok = source.load_tokenizer() if isinstance(source, ModelSpec) else tokenizer
    plan = plan_texts(
        tok,
        texts,
        max_length=options["max_length"],
        batch_size=options["batch_size"],
        skip_special=options["skip_special"],
    )
    eng, owned = _engine(engine, source, workers, gpus_per_worker, ray_address)
    try:
        key = {
            "model": _describe(source),
            "inputs": _hash(texts),
            "options": repr(sorted(options.items())),
        }
        prelude = Plan(
            job="top_activations",
            fn=top_activations_prelude,
            payloads=[{"options": options}],
            sizes=[0],
            merge=_merge,
            save=_save,
            load=_load_top,
            key=key,
        )
        # Shared by every shard; tiny, so it is not checkpointed (recomputed on resume).
        sel, edges, effects, name = execute(
            prelude, source, engine=engine, progress=False, engine_obj=eng
        )
        groups = cut([len(b) for b in plan.batches], _shards(shards, engine, eng))
        kwargs = {
            "edges": edges,
            "bins": options["bins"],
            "k": options["k"],
            "context": options["context"],
            "special": plan.special,
            "pad_id": plan.pad_id,
        }
        payloads = [
            {"sel": sel, "batches": [plan.batch_inputs(b) for b in g], "kwargs": kwargs}
            for g in groups
        ]
        main = Plan(
            job="top_activations",
            fn=top_activations_shard,
            payloads=payloads,
            sizes=[sum(len(plan.batches[b]) for b in g) for g in groups],
            merge=_merge,
            save=_save,
            load=_load_top,
            key=key,
            unit="text",
        )
        part = execute(
            main,
            source,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            checkpoint=checkpoint,
            progress=progress,
            engine_obj=eng,
        )
    finally:
        if owned:
            eng.close()
    return finish_top_activations(part, texts, tok, effects, name)
