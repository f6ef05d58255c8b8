"""The sharded forms of `patch` and `circuit` over lists of prompt pairs.

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
from types import SimpleNamespace
from typing import Any

import numpy as np

from .._npz import save_npz
from ._jobs import _describe, _engine, _hash, _shards, as_source
from ._run import Plan, cut, execute
from ._spec import ModelSpec


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


def _has_arrays(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and any(hasattr(i, "shape") for i in x)


def _prompts(x: Any) -> list[Any]:
    return [x] if isinstance(x, str) else list(x)


def _pick(values: list[Any], group: list[int]) -> list[Any]:
    return [values[i] for i in group]


def _run_pairs(
    job: str,
    fn: Any,
    result: Any,
    source: Any,
    eng: Any,
    groups: list[list[int]],
    pairs: tuple[list[Any], list[Any], list[Any], list[Any]],
    metric: tuple[Any, Any],
    options: dict[str, Any],
    **run: Any,
) -> Any:
    """Run one shard per group of consecutive pairs and merge the ``result`` parts in order.

    ``pairs``: (clean, corrupted, answer, wrong) lists; ``metric``: (what travels, its
    :func:`describe_metric` source), a list is one metric per pair; ``run``: execute's engine,
    workers, gpus_per_worker, ray_address, checkpoint and progress.
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
        job=job,
        fn=fn,
        payloads=payloads,
        sizes=[len(g) for g in groups],
        merge=result.merge,
        save=result.save,
        load=result.load,
        key={
            "model": _describe(source),
            "inputs": _hash([cl, co, answers, wrongs]),
            "metric": describe_metric(described),
            "options": repr(sorted(options.items())),
        },
        unit="pair",
    )
    return execute(plan, source, engine_obj=eng, **run)


def _npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    save_npz(path, {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays})


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(bytes(z["__meta__"]).decode())
    return arrays, meta


# -- patch ---------------------------------------------------------------------------------
@dataclass
class PairResults:
    """Per-pair patching results of consecutive pairs (a shard, or several merged)."""

    results: list[Any]  # intervene._patch._PairResult, in pair order
    forwards: int

    def merge(self, other: PairResults) -> PairResults:
        return PairResults(self.results + other.results, self.forwards + other.forwards)

    def save(self, path: Path) -> None:
        rs = self.results
        arrays = {
            "raw": np.stack([r.raw for r in rs]),
            "clean": np.array([r.clean for r in rs], np.float64),
            "corrupted": np.array([r.corrupted for r in rs], np.float64),
            "skipped": np.stack([r.skipped for r in rs]),
        }
        for name in ("reference_raw", "completeness"):
            if getattr(rs[0], name) is not None:
                arrays[name] = np.stack([getattr(r, name) for r in rs])
        _npz(path, arrays, {"forwards": self.forwards})

    @staticmethod
    def load(path: Path) -> PairResults:
        from ..intervene._patch import _PairResult

        a, meta = _read_npz(path)
        results = [
            _PairResult(
                a["raw"][i],
                float(a["clean"][i]),
                float(a["corrupted"][i]),
                a["skipped"][i],
                a["reference_raw"][i] if "reference_raw" in a else None,
                a["completeness"][i] if "completeness" in a else None,
            )
            for i in range(len(a["clean"]))
        ]
        return PairResults(results, int(meta["forwards"]))


def model_facts(model: Any, tokenizer: Any, payload: Any) -> dict[str, Any]:
    """What the driver needs of the model to plan and assemble: shapes, names, causality."""
    from ..intervene._runner import Runner

    r = Runner(model)
    return {"info": r.info, "causal": bool(r.adapter.causal), "n_layers": r.n_layers}


def patch_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> PairResults:
    """One shard of a sharded :func:`circuitboard.patch`: its pairs, each run as one run does."""
    from ..intervene._patch import _prepare_pairs, _run_pair
    from ..intervene._runner import Runner

    o = payload["options"]
    runner = Runner(model)
    metric = open_metric(payload["metric"])
    p = payload
    pairs = _prepare_pairs(
        tokenizer, p["clean"], p["corrupted"], p["answer"], p["wrong"], metric, runner=runner
    )
    results = [
        _run_pair(
            runner,
            pair,
            o["site"],
            o["layers"],
            o["positions"],
            o["method"],
            o["direction"],
            o["steps"],
            o["batch_size"],
            o["compare_exact"],
            None,
        )
        for pair in pairs
    ]
    return PairResults(results, runner.forwards)


def _facts(source: Any, eng: Any, engine: str, job: str) -> dict[str, Any]:
    if not isinstance(source, ModelSpec):  # the model is here: no round trip
        return model_facts(source.model, None, None)
    prelude = Plan(
        job=job,
        fn=model_facts,
        payloads=[None],
        sizes=[0],
        merge=lambda a, b: a,
        save=lambda s, p: None,
        load=lambda p: None,
    )
    return execute(prelude, source, engine=engine, progress=False, engine_obj=eng)


def patch_sharded(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
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
    """:func:`circuitboard.patch` over a list of pairs, cut into shards of consecutive pairs."""
    from ..intervene._patch import (
        PROGRESS_FROM,
        _as_list,
        _assemble,
        _Grid,
        _prepare_pairs,
        patch_layout,
    )
    from ..intervene._runner import Runner

    if any(hasattr(x, "shape") or _has_arrays(x) for x in (clean, corrupted)):
        raise ValueError(
            "engine=, shards= and checkpoint= cut lists of text prompt pairs; image pairs run "
            "in this process: leave them out (engine='serial')."
        )
    source = as_source(model, tokenizer, "patch")
    here = not isinstance(source, ModelSpec)
    tok = tokenizer if here else source.load_tokenizer()
    answer, wrong, metric = options["answer"], options["wrong"], options["metric"]
    # Every input is checked here, before a worker starts (the workers repeat it per shard).
    runner = Runner(source.model) if here else None
    pairs = _prepare_pairs(tok, clean, corrupted, answer, wrong, metric, runner=runner)
    n = len(pairs)
    cl, co = _prompts(clean), _prompts(corrupted)
    answers, wrongs = _as_list(answer, n, "answer"), _as_list(wrong, n, "wrong")
    shipped = ship_metric(metric, engine, "patch")
    site, method = options["site"], options["method"]
    eng, owned = _engine(engine, source, workers, gpus_per_worker, ray_address)
    try:
        facts = _facts(source, eng, engine, "patch")
        layer_list, pos_list = patch_layout(
            pairs, site, options["layers"], options["positions"], facts["n_layers"]
        )
        run_opts = {
            "site": site,
            "layers": layer_list,
            "positions": pos_list,
            "method": method,
            "direction": options["direction"],
            "steps": options["steps"],
            "batch_size": options["batch_size"],
            "compare_exact": options["compare_exact"],
        }
        groups = cut([1] * n, _shards(shards, engine, eng))
        T0 = pairs[0].n_tokens
        if progress is None:  # the serial rule: large exact runs
            cells = int(np.prod(_Grid(site, layer_list, pos_list, facts["info"], T0).shape))
            progress = method == "exact" and cells * T0 * n >= PROGRESS_FROM
        merged = _run_pairs(
            "patch",
            patch_shard,
            PairResults,
            source,
            eng,
            groups,
            (cl, co, answers, wrongs),
            (shipped, metric),
            run_opts,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            checkpoint=checkpoint,
            progress=progress,
        )
    finally:
        if owned:
            eng.close()
    # What _assemble reads of a Runner: the model's facts and whether it is causal.
    facts_runner = SimpleNamespace(
        info=facts["info"], adapter=SimpleNamespace(causal=facts["causal"])
    )
    # cost: forwards only (they do not depend on the engine); run time is in
    # scale.last_run().seconds, so that saved results are byte-identical across engines.
    return _assemble(
        merged.results,
        pairs,
        facts_runner,
        site,
        method,
        options["direction"],
        layer_list,
        pos_list,
        options["steps"],
        {"forwards": merged.forwards},
    )


# -- circuit --------------------------------------------------------------------------------
@dataclass
class EdgeSums:
    """Edge scores of consecutive pairs, summed in float64 in pair order, and their endpoints."""

    raw: np.ndarray  # [writers, readers] float64: Σ_pairs (W_clean − W_corr) · G
    m_clean: list[float]
    m_corr: list[float]
    name: str  # the metric's description, without the ", mean over n pairs" suffix
    saved: dict[str, Any]  # the prompts a Circuit keeps to re-attach
    meta: dict[str, Any]  # graph shape, model name, first pair's tokens

    def merge(self, other: EdgeSums) -> EdgeSums:
        a, b = self.saved, other.saved
        saved = {k: a[k] + b[k] for k in ("pairs", "answer", "wrong")}
        saved["custom_metric"] = a["custom_metric"] or b["custom_metric"]
        return EdgeSums(
            self.raw + other.raw,  # a left fold in plan order: the same sums on every engine
            self.m_clean + other.m_clean,
            self.m_corr + other.m_corr,
            # one run names a custom metric after its last pair, the built-in after its first
            other.name if b["custom_metric"] else self.name,
            saved,
            self.meta,
        )

    def save(self, path: Path) -> None:
        meta = {"name": self.name, "saved": self.saved, "meta": self.meta}
        arrays = {
            "raw": self.raw,
            "m_clean": np.array(self.m_clean, np.float64),
            "m_corr": np.array(self.m_corr, np.float64),
        }
        _npz(path, arrays, meta)

    @staticmethod
    def load(path: Path) -> EdgeSums:
        a, meta = _read_npz(path)
        return EdgeSums(
            a["raw"],
            [float(x) for x in a["m_clean"]],
            [float(x) for x in a["m_corr"]],
            meta["name"],
            meta["saved"],
            meta["meta"],
        )


def circuit_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> EdgeSums:
    """One shard of a sharded :func:`circuitboard.circuit`: its pairs' summed edge scores."""
    from ..intervene._eap import _prepare, edge_model, score_pairs
    from ..intervene._runner import eval_mode

    o = payload["options"]
    em, info, graph = edge_model(model, o["nodes"])
    with eval_mode(model):
        pairs, name, saved, toks, ctoks = _prepare(
            model,
            tokenizer,
            payload["clean"],
            payload["corrupted"],
            payload["answer"],
            payload["wrong"],
            open_metric(payload["metric"]),
            em,
            info,
            first=payload["first"],
        )
        raw = score_pairs(em, graph, pairs, o["method"], o["steps"], None)
    g = [info.n_layers, info.n_heads, info.n_kv_heads, o["nodes"], bool(info.parallel_attn_mlp)]
    return EdgeSums(
        raw.cpu().numpy(),
        [p.m_clean for p in pairs],
        [p.m_corr for p in pairs],
        name.removesuffix(f", mean over {len(pairs)} pairs"),
        saved,
        {"graph": g, "model_name": info.model_name, "tokens": toks, "corrupted_tokens": ctoks},
    )


class Deferred:
    """A circuit scored on workers evaluates on the model given here: on first use, each pair's
    corrupted run is recorded on this machine (as a one-process run records it)."""

    def __init__(self, circuit: Any, model: Any, tokenizer: Any, metric: Any) -> None:
        self.circuit, self.model, self.tokenizer, self.metric = circuit, model, tokenizer, metric
        self.live: Any = None

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        if self.live is None:  # once: pruned copies of the circuit share this object
            from ..intervene._eap import attach

            self.live = attach(self.circuit, self.model, self.tokenizer, metric=self.metric)._live
        return self.live.evaluate(masks)


def circuit_sharded(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
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
    """:func:`circuitboard.circuit` over a list of pairs, cut into shards of consecutive pairs."""
    from ..intervene._eap import _as_list, _per_pair, finish_circuit

    source = as_source(model, tokenizer, "circuit")
    cl, co = _as_list(clean, "clean"), _as_list(corrupted, "corrupted")
    if len(cl) != len(co):
        raise ValueError(
            f"{len(cl)} clean prompts but {len(co)} corrupted ones; pass one corrupted prompt "
            "per clean prompt."
        )
    n = len(cl)
    answers = _per_pair(options["answer"], n, "answer")
    wrongs = _per_pair(options["wrong"], n, "wrong")
    metric = options["metric"]
    metrics = _per_pair(metric, n, "metric")
    for m in metrics:
        if m is not None and not callable(m):
            raise TypeError(f"metric must be a callable (logits -> [batch]); got {m!r}.")
    if isinstance(metric, (list, tuple)):
        shipped: Any = [ship_metric(m, engine, "circuit") for m in metrics]
    else:
        one = ship_metric(metric, engine, "circuit")
        shipped = [one] * n
    run_opts = {k: options[k] for k in ("method", "steps", "nodes")}
    eng, owned = _engine(engine, source, workers, gpus_per_worker, ray_address)
    try:
        groups = cut([1] * n, _shards(shards, engine, eng))
        sums = _run_pairs(
            "circuit",
            circuit_shard,
            EdgeSums,
            source,
            eng,
            groups,
            (cl, co, answers, wrongs),
            (shipped, metrics),
            run_opts,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            checkpoint=checkpoint,
            progress=progress if progress is not None else n >= 4,
        )
    finally:
        if owned:
            eng.close()
    meta = sums.meta
    name = sums.name + (f", mean over {n} pairs" if n > 1 else "")
    c = finish_circuit(
        sums.raw,
        sums.m_clean,
        sums.m_corr,
        graph_shape=meta["graph"],
        method=run_opts["method"],
        steps=run_opts["steps"],
        name=name,
        tokens=meta["tokens"],
        corrupted_tokens=meta["corrupted_tokens"],
        model_name=meta["model_name"],
        saved=sums.saved,
    )
    if not isinstance(source, ModelSpec):
        c._live = Deferred(c, source.model, source.tokenizer, metric)
    return c
