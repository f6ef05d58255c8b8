"""`circuit` over a list of prompt pairs as a plan: one job per run of consecutive pairs.

A job's part is the float64 sum of its pairs' edge scores and each pair's endpoints; parts
merge in plan order (a left fold: the same sums on every engine) and the circuit is finished
by the same code a single run uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..capture._prompts import split_prompts
from ..scale import ModelSpec, Sharding, cut, model_source
from ._eap import _as_list, _per_pair, _prepare, attach, edge_model, finish_circuit, score_pairs
from ._pair_jobs import open_metric, read_npz, run_pairs, ship_metric, write_npz
from ._patch_inputs import answers_per_pair
from ._runner import eval_mode


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
        write_npz(path, arrays, meta)

    @staticmethod
    def load(path: Path) -> EdgeSums:
        a, meta = read_npz(path)
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
            self.live = attach(self.circuit, self.model, self.tokenizer, metric=self.metric)._live
        return self.live.evaluate(masks)


def circuit_sharded(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    options: dict[str, Any],
    run: Sharding,
    *,
    progress: bool | None,
) -> Any:
    """:func:`circuitboard.circuit` over a list of pairs, cut into shards of consecutive pairs."""
    source = model_source(model, tokenizer, "circuit")
    cl, co = _as_list(clean, "clean"), _as_list(corrupted, "corrupted")
    if len(cl) != len(co):
        raise ValueError(
            f"{len(cl)} clean prompts but {len(co)} corrupted ones; pass one corrupted prompt "
            "per clean prompt."
        )
    n = len(cl)
    single = split_prompts(clean, "clean")[1]
    answers = answers_per_pair(options["answer"], n, single, "answer")
    wrongs = answers_per_pair(options["wrong"], n, single, "wrong")
    metric = options["metric"]
    metrics = _per_pair(metric, n, "metric")
    for m in metrics:
        if m is not None and not callable(m):
            raise TypeError(f"metric must be a callable (logits -> [batch]); got {m!r}.")
    if isinstance(metric, (list, tuple)):
        shipped: Any = [ship_metric(m, run.engine, "circuit") for m in metrics]
    else:
        one = ship_metric(metric, run.engine, "circuit")
        shipped = [one] * n
    run_opts = {k: options[k] for k in ("method", "steps", "nodes")}
    with run.open(source, __name__, "circuit") as eng:
        groups = cut([1] * n, eng.shards(run.shards))
        sums = run_pairs(
            "circuit",
            circuit_shard,
            EdgeSums,
            eng,
            groups,
            (cl, co, answers, wrongs),
            (shipped, metrics),
            run_opts,
            run=run,
            progress=progress if progress is not None else n >= 4,
        )
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
